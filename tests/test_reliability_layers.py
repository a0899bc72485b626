"""Layers, cells and Stream: state fields, conversions, statistics and tracing that must not go
silently wrong (aliased state fields, mode flags lost in a conversion, per-step statistics
misaligned in time, shapes refused under ``torch.compile``)."""

from __future__ import annotations

import warnings
from pathlib import Path

import onnxruntime as ort
import pytest
import torch

import evsnn
from evsnn.functional import alif_initial_state, delta_gru_initial_state, delta_lstm_initial_state, egru_initial_state
from evsnn.streaming import Stream

CELLS = {
    "ALIFCell": lambda: evsnn.ALIFCell(3, 4),
    "EGRUCell": lambda: evsnn.EGRUCell(3, 4),
    "DeltaGRUCell": lambda: evsnn.DeltaGRUCell(3, 4),
    "DeltaLSTMCell": lambda: evsnn.DeltaLSTMCell(3, 4),
}
LAYERS = {
    "ALIF": lambda **kw: evsnn.ALIF(3, 4, **kw),
    "EGRU": lambda **kw: evsnn.EGRU(3, 4, **kw),
    "DeltaGRU": lambda **kw: evsnn.DeltaGRU(3, 4, **kw),
    "DeltaLSTM": lambda **kw: evsnn.DeltaLSTM(3, 4, **kw),
}
FUNCTIONAL_STATES = {
    "alif_initial_state": lambda: alif_initial_state(torch.zeros(2, 4), 0.01),
    "egru_initial_state": lambda: egru_initial_state(2, 4, torch.zeros(())),
    "delta_gru_initial_state": lambda: delta_gru_initial_state(
        2, 3, 4, torch.randn(12), torch.randn(12), torch.zeros(())
    ),
    "delta_lstm_initial_state": lambda: delta_lstm_initial_state(
        2, 3, 4, torch.randn(16), torch.randn(16), torch.zeros(())
    ),
}


def _field_tensors(state) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) of every tensor of a state, per-layer tuples (DeltaGRU's ``x_hat``) included."""
    out = []
    for name, value in zip(state._fields, state):
        for i, t in enumerate(value if isinstance(value, tuple) else (value,)):
            out.append((f"{name}[{i}]" if isinstance(value, tuple) else name, t))
    return out


def _assert_fields_independent(state) -> None:
    fields = _field_tensors(state)
    pointers = {}
    for name, t in fields:
        # an expanded view (stride 0) would make one sample's row every sample's row
        assert all(s != 0 for s in t.stride()) or t.numel() <= 1, f"{name} is an expanded view: {t.stride()}"
        ptr = t.untyped_storage().data_ptr()
        assert ptr not in pointers, f"fields {pointers[ptr]} and {name} share storage"
        pointers[ptr] = name
    for name, t in fields:
        before = {other: u.clone() for other, u in fields if other != name}
        with torch.no_grad():
            t.add_(1.0)
        for other, u in fields:
            if other != name:
                assert torch.equal(u, before[other]), f"writing to {name} in place changed {other}"


@pytest.mark.parametrize("name", list(CELLS))
def test_cell_initial_state_fields_are_separate_tensors(name):
    _assert_fields_independent(CELLS[name]().initial_state(2))


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("num_layers", [1, 2])
def test_layer_initial_state_fields_are_separate_tensors(name, num_layers):
    _assert_fields_independent(LAYERS[name](num_layers=num_layers, bidirectional=True).initial_state(2))


@pytest.mark.parametrize("name", list(FUNCTIONAL_STATES))
def test_functional_initial_state_fields_are_separate_tensors(name):
    _assert_fields_independent(FUNCTIONAL_STATES[name]())


@pytest.mark.parametrize("name", ["EGRUCell", "ALIFCell"])
def test_onnx_recipe_from_the_initial_state_matches_torch_over_100_steps(name, tmp_path: Path, single_thread):
    """docs/onnx.md's recipe: export with ``tuple(cell.initial_state(2))`` as the example state,
    then run 100 steps in onnxruntime from the initial state, fed back. With aliased fields the
    exporter merges the two inputs and the graph ignores one of them."""
    cell = (evsnn.EGRUCell(8, 16) if name == "EGRUCell" else evsnn.ALIFCell(8, 16)).eval()
    fields = type(cell.initial_state(1))._fields
    x = torch.randn(2, 8)
    state = tuple(cell.initial_state(2))
    batch = torch.export.Dim("batch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's own chatter is not under test
        program = torch.onnx.export(
            cell,
            (x, state),
            input_names=["x", *fields],
            dynamic_shapes=({0: batch}, tuple({0: batch} for _ in fields)),
            verbose=False,
        )
    program.save(str(tmp_path / "step.onnx"))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(tmp_path / "step.onnx"), options, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["x", *fields]

    frames = 2.0 * torch.randn(100, 1, 8)
    ort_state = [t.numpy() for t in cell.initial_state(1)]
    torch_state = cell.initial_state(1)
    outs, ort_outs = [], []
    with torch.no_grad():
        for frame in frames:
            out, torch_state = cell(frame, torch_state)
            got = session.run(None, {"x": frame.numpy(), **dict(zip(fields, ort_state))})
            ort_state = got[1:]
            outs.append(out)
            ort_outs.append(torch.from_numpy(got[0]))
    outs, ort_outs = torch.stack(outs), torch.stack(ort_outs)
    # events are decisions and must agree exactly; the comparison needs both events and silences
    assert torch.equal(outs != 0, ort_outs != 0)
    assert 0.0 < (outs != 0).float().mean() < 1.0
    # float32 on both sides, same operations in another order: a few ulps of the state's scale
    torch.testing.assert_close(ort_outs, outs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("backend", ["torch", "cpu_event"])
def test_stream_continues_from_the_state_the_layer_returned(name, backend, reference_backend, single_thread):
    """``y, state = layer(x)``; ``Stream(layer).reset(state)`` then continues exactly as
    ``layer(x_next, state)`` does."""
    layer = LAYERS[name](backend=backend).eval()
    x, x_next = 2.0 * torch.randn(6, 2, 3), 2.0 * torch.randn(5, 2, 3)
    with torch.no_grad():
        _, state = layer(x)
        expected, expected_state = layer(x_next, state)
    stream = Stream(layer, batch_size=2)
    stream.reset(state)
    # the same float32 math on both paths (the stream's runner may fuse steps): float32 rounding
    torch.testing.assert_close(stream.chunk(x_next), expected, rtol=1e-5, atol=1e-6)
    for (field, got), want in zip(_field_tensors(stream.state), _field_tensors(expected_state)):
        torch.testing.assert_close(got, want[1][0], rtol=1e-5, atol=1e-6, msg=field)
