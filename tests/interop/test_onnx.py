"""ONNX export of single steps (streaming deployment), run in onnxruntime against the torch cells.

The torch cells compute one step with the reference functions of ``evsnn.functional`` (they
call no backend), so they are the oracle here. Each cell is exported once with the default
``torch.onnx.export`` exporter (``dynamo=True``) and a dynamic batch size, then driven for
several steps in onnxruntime with its own state fed back, at a batch size other than the one
it was traced with. Events must match exactly; continuous values to float32 rounding.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnxruntime as ort
import pytest
import torch

import evsnn

STEPS = 6
BATCH = 3  # the model is traced at batch 2: the exported graph must not be specialised to it


def _export(module: torch.nn.Module, args: tuple, dynamic_shapes: tuple, names: list[str], path: Path) -> None:
    with warnings.catch_warnings():
        # The exporter's own progress/deprecation chatter is not under test.
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module, args, dynamo=True, dynamic_shapes=dynamic_shapes, input_names=names, optimize=False, verbose=False
        )
    program.save(str(path))


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _inputs(size: int, scale: float, drift: bool) -> torch.Tensor:
    """``[STEPS, BATCH, size]`` inputs; ``drift`` makes a slowly changing signal so that delta masks are mixed."""
    if not drift:
        return scale * torch.randn(STEPS, BATCH, size)
    steps = 0.15 * torch.randn(STEPS, BATCH, size)
    return scale * torch.randn(1, BATCH, size) + steps.cumsum(0)


CELLS = {
    "ALIFCell": (lambda: evsnn.ALIFCell(5, 7), evsnn.ALIFState, 3.0, False),
    "EGRUCell": (lambda: evsnn.EGRUCell(5, 7), evsnn.EGRUState, 3.0, False),
    "DeltaGRUCell": (lambda: evsnn.DeltaGRUCell(5, 7, theta_x=0.1, theta_h=0.05), evsnn.DeltaGRUState, 1.0, True),
    "DeltaLSTMCell": (lambda: evsnn.DeltaLSTMCell(5, 7, theta_x=0.1, theta_h=0.05), evsnn.DeltaLSTMState, 1.0, True),
}


@pytest.mark.parametrize("name", list(CELLS))
def test_cell_step_exports_and_runs_in_onnxruntime(name: str, tmp_path: Path, single_thread) -> None:
    make, state_type, scale, drift = CELLS[name]
    cell = make().eval()
    with torch.no_grad():
        _, trace_state = cell.step(scale * torch.randn(2, 5))
    batch = torch.export.Dim("batch")
    # The state goes in as a plain tuple: with a NamedTuple, torch 2.14's export writes a broken
    # shape guard when one field name prefixes another (DeltaGRUState's h and h_hat).
    dynamic = ({0: batch}, tuple({0: batch} for _ in state_type._fields))
    names = ["x"] + [f"state_{f}" for f in state_type._fields]
    _export(
        evsnn.nn.CellStep(cell), (scale * torch.randn(2, 5), tuple(trace_state)), dynamic, names, tmp_path / "cell.onnx"
    )
    session = _session(tmp_path / "cell.onnx")
    assert [i.name for i in session.get_inputs()] == names

    xs = _inputs(5, scale, drift)
    state = None  # the torch cell starts from its default initial state
    ort_state = [s.detach().numpy() for s in cell.initial_state(BATCH)]  # the same, written out for onnxruntime
    events, ort_events = [], []
    for t in range(STEPS):
        prev, ort_prev = (state or cell.initial_state(BATCH)), state_type(*(torch.from_numpy(a) for a in ort_state))
        with torch.no_grad():
            out, state = cell.step(xs[t], state)
        got = session.run(None, {"x": xs[t].numpy(), **dict(zip(names[1:], ort_state))})
        ort_out, ort_state = torch.from_numpy(got[0]), got[1:]
        assert ort_out.shape == (BATCH, 7)
        torch.testing.assert_close(ort_out, out, rtol=1e-5, atol=1e-5)
        for field, got_field in zip(state_type._fields, ort_state):
            torch.testing.assert_close(torch.from_numpy(got_field), getattr(state, field), rtol=1e-5, atol=1e-5)
        events.append(_event_mask(name, out, state, prev))
        ort_events.append(_event_mask(name, ort_out, state_type(*(torch.from_numpy(a) for a in ort_state)), ort_prev))

    # Events (spikes, EGRU events, passed deltas) are decisions: they must agree exactly, and the
    # comparison means something only if the steps had both events and silences.
    assert torch.equal(torch.stack(ort_events), torch.stack(events))
    fraction = torch.stack(events).float().mean().item()
    assert 0.0 < fraction < 1.0, f"{name}: event fraction {fraction} leaves the export untested on one side"


def _event_mask(name: str, out: torch.Tensor, state, prev) -> torch.Tensor:
    if name == "ALIFCell":
        return out != 0
    if name == "EGRUCell":
        return state.y != 0
    # Delta cells: an input or hidden unit passed a delta this step where its memory x̂ / ĥ moved.
    return torch.cat([state.x_hat != prev.x_hat, state.h_hat != prev.h_hat], dim=-1)


def test_leaky_readout_one_step_export_chains_like_the_sequence(tmp_path: Path, single_thread) -> None:
    readout = evsnn.LeakyReadout(5, 3).eval()
    batch = torch.export.Dim("batch")
    _export(
        readout,
        (torch.randn(1, 2, 5), torch.zeros(2, 3)),
        ({1: batch}, {0: batch}),
        ["x", "m"],
        tmp_path / "readout.onnx",
    )
    session = _session(tmp_path / "readout.onnx")
    xs = torch.randn(STEPS, BATCH, 5)
    with torch.no_grad():
        whole, _ = readout(xs)  # the torch reference over the whole sequence
    m = torch.zeros(BATCH, 3).numpy()
    for t in range(STEPS):
        got = session.run(None, {"x": xs[t : t + 1].numpy(), "m": m})
        m = got[1]
        torch.testing.assert_close(torch.from_numpy(got[0])[0], whole[t], rtol=1e-5, atol=1e-6)


def test_whole_sequence_export_is_fixed_length(tmp_path: Path, single_thread) -> None:
    """A layer over a whole sequence (reference backend) exports with its time loop unrolled:
    right at the traced length, rejected by onnxruntime at any other (docs/onnx.md)."""
    layer = evsnn.ALIF(5, 7, backend="torch").eval()
    xs = 3.0 * torch.randn(4, 2, 5)
    _export(layer, (xs,), None, ["x"], tmp_path / "alif.onnx")
    session = _session(tmp_path / "alif.onnx")
    with torch.no_grad():
        spikes, _ = layer(xs)
    got = session.run(None, {"x": xs.numpy()})
    assert torch.equal(torch.from_numpy(got[0]), spikes)
    assert 0 < spikes.sum() < spikes.numel()
    with pytest.raises(Exception, match="dimensions"):
        session.run(None, {"x": torch.randn(5, 2, 5).numpy()})
