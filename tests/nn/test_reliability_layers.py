"""Layers, cells and Stream: state fields, conversions, statistics and tracing that must not go
silently wrong (aliased state fields, mode flags lost in a conversion, per-step statistics
misaligned in time, shapes refused under ``torch.compile``)."""

from __future__ import annotations

import warnings
from pathlib import Path

import onnxruntime as ort
import pytest
import torch
from torch import nn

import evsnn
from evsnn.functional import alif_initial_state, delta_gru_initial_state, delta_lstm_initial_state, egru_initial_state
from evsnn.nn import StateTensor
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


def _named_fields(state) -> list[tuple[str, object]]:
    """(name, value) of a state's fields: a NamedTuple's, or an ``h_n`` tensor's own values and the
    fields it carries (``StateTensor``), nested ones (DeltaLSTM's ``h``) flattened."""
    if isinstance(state, StateTensor):
        items = [(state._value_name, state.as_tensor())] + [(n, getattr(state, n)) for n in state.carried]
    else:
        items = list(zip(state._fields, state))
    out = []
    for name, value in items:
        if isinstance(value, StateTensor):  # DeltaLSTM's h: its values under its own name
            out.append((name, value.as_tensor()))
            out.extend((inner, getattr(value, inner)) for inner in value.carried)
        else:
            out.append((name, value))
    return out


def _field_tensors(state) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) of every tensor of a state, per-layer tuples (DeltaGRU's ``x_hat``) included."""
    out = []
    for name, value in _named_fields(state):
        values = value if isinstance(value, tuple) else (value,)
        for i, t in enumerate(values):
            if isinstance(t, torch.Tensor):
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
            evsnn.nn.CellStep(cell),
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
            out, torch_state = cell.step(frame, torch_state)
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
    # by name: the stream holds the functional state, the layer returns h_n carrying the fields
    # an exact continuation needs (every one of which the stream must agree on)
    got = dict(_field_tensors(stream.state))
    want = dict(_field_tensors(expected_state))
    assert set(want) <= set(got), (sorted(want), sorted(got))
    for field, value in want.items():
        torch.testing.assert_close(got[field], value[0], rtol=1e-5, atol=1e-6, msg=field)


CONVERTIBLE = {
    "EGRU": (evsnn.EGRU, nn.GRU),
    "DeltaGRU": (evsnn.DeltaGRU, nn.GRU),
    "DeltaLSTM": (evsnn.DeltaLSTM, nn.LSTM),
}


@pytest.mark.parametrize("name", list(CONVERTIBLE))
@pytest.mark.parametrize("training", [False, True])
def test_from_torch_and_to_torch_keep_train_eval_mode(name, training, reference_backend):
    cls, torch_cls = CONVERTIBLE[name]
    rnn = torch_cls(3, 4, num_layers=2, dropout=0.5).train(training)
    layer = cls.from_torch(rnn)
    assert layer.training is training
    assert layer.to_torch().training is training
    assert cls.from_torch(rnn).train(not training).to_torch().training is (not training)


@pytest.mark.parametrize("name", ["DeltaGRU", "DeltaLSTM"])
def test_from_torch_of_an_eval_rnn_with_dropout_equals_it(name, reference_backend):
    """At Θ = 0 the delta layer is the nn.GRU/nn.LSTM; in eval both skip the dropout."""
    cls, torch_cls = CONVERTIBLE[name]
    rnn = torch_cls(3, 4, num_layers=3, dropout=0.5).double().eval()
    layer = cls.from_torch(rnn, backend="torch")
    x = torch.randn(7, 2, 3, dtype=torch.float64)
    with torch.no_grad():
        # float64 on both sides, the same gate equations: agreement to float64 rounding
        torch.testing.assert_close(layer(x)[0], rnn(x)[0], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", list(CONVERTIBLE))
def test_conversions_keep_frozen_weights_frozen(name):
    cls, torch_cls = CONVERTIBLE[name]
    rnn = torch_cls(3, 4, num_layers=2, bidirectional=True, bias=False)
    rnn.weight_hh_l1_reverse.requires_grad_(False)
    rnn.weight_ih_l0.requires_grad_(False)
    layer = cls.from_torch(rnn)
    assert not layer.weight_hh_l1_reverse.requires_grad and not layer.weight_ih.requires_grad
    assert layer.weight_hh.requires_grad and layer.bias_ih is None
    back = layer.to_torch()
    assert {n: p.requires_grad for n, p in back.named_parameters()} == {
        n: p.requires_grad for n, p in rnn.named_parameters()
    }


@pytest.mark.parametrize("bidirectional", [False, True])
def test_egru_loads_an_nn_gru_state_dict_and_keeps_its_thresholds(bidirectional, reference_backend):
    gru = nn.GRU(3, 4, num_layers=2, bidirectional=bidirectional)
    layer = evsnn.EGRU(3, 4, num_layers=2, bidirectional=bidirectional)
    thresholds = {n: p.detach().clone() for n, p in layer.named_parameters() if n.startswith("log_threshold")}
    assert len(thresholds) == 2 * layer.num_directions
    layer.load_state_dict(gru.state_dict())  # strict
    for n, p in layer.named_parameters():
        if n.startswith("log_threshold"):
            assert torch.equal(p, thresholds[n])
    # the weights loaded are the GRU's: the same as from_torch gives
    expected = evsnn.EGRU.from_torch(gru)
    for n, p in expected.named_parameters():
        if not n.startswith("log_threshold"):
            assert torch.equal(getattr(layer, n), p), n


def test_egru_strict_load_still_refuses_a_gru_checkpoint_with_a_missing_weight():
    state = nn.GRU(3, 4, num_layers=2).state_dict()
    del state["weight_hh_l1"]
    with pytest.raises(RuntimeError, match="weight_hh_l1"):
        evsnn.EGRU(3, 4, num_layers=2).load_state_dict(state)
    # an evsnn checkpoint without its thresholds is incomplete: strict refuses it
    own = evsnn.EGRU(3, 4).state_dict()
    del own["log_threshold"]
    with pytest.raises(RuntimeError, match="log_threshold"):
        evsnn.EGRU(3, 4).load_state_dict(own)


def _direction_copy(layer: nn.Module, suffix: str) -> nn.Module:
    """A one-layer unidirectional copy of ``layer`` carrying the parameters (and buffers) of
    direction ``suffix`` of layer 0 under the forward names."""
    kwargs = {"backend": "torch"}
    if isinstance(layer, (evsnn.DeltaGRU, evsnn.DeltaLSTM)):
        kwargs.update(theta_x=layer.theta_x, theta_h=layer.theta_h)
    single = type(layer)(layer.input_size, layer.hidden_size, **kwargs)
    own = {**dict(layer.named_parameters()), **dict(layer.named_buffers())}
    state = {}
    for name in single.state_dict():
        state[name] = own[name + suffix].detach().clone()
    single.load_state_dict(state)
    return single.eval()


def _per_step(stats) -> tuple[torch.Tensor, torch.Tensor]:
    return stats.event_fraction.float(), stats.input_event_fraction.float()


BIDIRECTIONAL = {
    "ALIF": lambda: evsnn.ALIF(3, 6, bidirectional=True, backend="torch"),
    "EGRU": lambda: evsnn.EGRU(3, 6, bidirectional=True, backend="torch"),
    "DeltaGRU": lambda: evsnn.DeltaGRU(3, 6, bidirectional=True, theta_x=0.3, theta_h=0.1, backend="torch"),
    "DeltaLSTM": lambda: evsnn.DeltaLSTM(3, 6, bidirectional=True, theta_x=0.3, theta_h=0.1, backend="torch"),
}


def _drifting(steps: int, batch: int) -> torch.Tensor:
    """An input whose activity changes over time (silent first half, active second half), so a
    curve read backwards differs from the curve."""
    x = torch.randn(steps, batch, 3).cumsum(0)
    x[: steps // 2] *= 0.0
    return 2.0 * x


@pytest.mark.parametrize("name", list(BIDIRECTIONAL))
def test_bidirectional_per_step_stats_are_in_input_time(name, reference_backend):
    """Step t of ``last_stats`` averages both directions at input step t. Truth: each direction
    run alone as a unidirectional layer (the reverse one on the flipped input, its curve
    flipped back)."""
    layer = BIDIRECTIONAL[name]().eval()
    x = _drifting(10, 2)
    with torch.no_grad():
        layer(x)
        forward, backward = _direction_copy(layer, ""), _direction_copy(layer, "_l0_reverse")
        forward(x)
        backward(x.flip(0))
    events_f, inputs_f = _per_step(forward.last_stats)
    events_b, inputs_b = _per_step(backward.last_stats)
    events, inputs = _per_step(layer.last_stats)
    # the same batch in both directions: the merged curve is the mean of the two (exact in float32
    # up to one rounding of the average)
    torch.testing.assert_close(events, (events_f + events_b.flip(0)) / 2)
    torch.testing.assert_close(inputs, (inputs_f + inputs_b.flip(0)) / 2)
    assert not torch.equal(events_b, events_b.flip(0)), "the test input leaves the time order untested"
    runs = layer.last_stats.extra["runs"]
    torch.testing.assert_close(runs[1].event_fraction.float(), events_b.flip(0))


@pytest.mark.parametrize("name", ["EGRU", "ALIF"])
def test_bidirectional_event_fraction_is_the_fraction_of_nonzero_outputs_per_step(name, reference_backend):
    """For EGRU and ALIF the output is the events of both directions, concatenated per step."""
    layer = BIDIRECTIONAL[name]().eval()
    with torch.no_grad():
        out, _ = layer(_drifting(10, 3))
    torch.testing.assert_close(layer.last_stats.event_fraction.float(), (out != 0).float().mean(dim=(1, 2)))


@pytest.mark.parametrize("bidirectional", [False, True])
def test_packed_per_step_stats_count_only_running_sequences(bidirectional, reference_backend):
    """Packed lengths 8, 5, 3: ``event_fraction[t]`` is the fraction of nonzero outputs over the
    sequences that reach step t; padded steps are neither computed nor counted."""
    layer = evsnn.EGRU(3, 6, bidirectional=bidirectional, backend="torch").eval()
    lengths = torch.tensor([8, 5, 3])
    x = _drifting(8, 3)
    for b, n in enumerate(lengths.tolist()):
        x[n:, b] = 0.0
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
    with torch.no_grad():
        out, _ = layer(packed)
    out, _ = nn.utils.rnn.pad_packed_sequence(out)
    expected = torch.stack([(out[t, lengths > t] != 0).float().mean() for t in range(8)])
    torch.testing.assert_close(layer.last_stats.event_fraction.float(), expected)


DYNAMIC = {
    "ALIF": lambda backend: evsnn.ALIF(3, 8, backend=backend),
    "EGRU": lambda backend: evsnn.EGRU(3, 8, backend=backend),
    "DeltaGRU": lambda backend: evsnn.DeltaGRU(3, 8, theta_x=0.1, theta_h=0.05, backend=backend),
    "DeltaLSTM": lambda backend: evsnn.DeltaLSTM(3, 8, theta_x=0.1, theta_h=0.05, backend=backend),
}


def _compiled_matches_eager(layer: nn.Module, shapes: list[tuple[int, int]], dynamic_dim: int) -> None:
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    for steps, batch in shapes:
        x = 2.0 * torch.randn(steps, batch, 3)
        torch._dynamo.mark_dynamic(x, dynamic_dim)
        with torch.no_grad():
            got, expected = compiled(x)[0], layer(x)[0]
        assert got.shape == expected.shape
        # the same ops traced, not fused (aot_eager): equal up to float32 reordering
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(DYNAMIC))
@pytest.mark.parametrize("backend", ["torch", "cpu_event", "auto"])
def test_compiled_layer_accepts_a_dynamic_batch(name, backend, reference_backend, single_thread):
    torch._dynamo.reset()
    _compiled_matches_eager(DYNAMIC[name](backend).eval(), [(5, 4), (5, 6), (5, 3)], dynamic_dim=1)


def test_compiled_leaky_readout_accepts_a_dynamic_batch(single_thread):
    torch._dynamo.reset()
    _compiled_matches_eager(evsnn.LeakyReadout(3, 8).eval(), [(5, 4), (5, 6)], dynamic_dim=1)


@pytest.mark.parametrize("name", list(DYNAMIC))
def test_compiled_cpu_event_layer_accepts_a_dynamic_length(name, reference_backend, single_thread):
    torch._dynamo.reset()
    _compiled_matches_eager(DYNAMIC[name]("cpu_event").eval(), [(5, 4), (9, 4), (3, 4)], dynamic_dim=0)


def test_compiled_reference_refuses_a_dynamic_length_naming_it(reference_backend, single_thread):
    """The reference's loop over time is unrolled: one compiled graph has one length."""
    torch._dynamo.reset()
    compiled = torch.compile(evsnn.EGRU(3, 8, backend="torch"), backend="aot_eager", fullgraph=True)
    x = torch.randn(5, 4, 3)
    torch._dynamo.mark_dynamic(x, 0)
    with pytest.raises(Exception, match="sequence length cannot be dynamic"):
        compiled(x)
    # uncompiled, a marked input is an ordinary one
    evsnn.EGRU(3, 8, backend="torch")(x)


def test_a_compilation_after_other_backend_decisions_builds_its_guards(reference_backend, single_thread):
    """The backend decisions of earlier calls (another backend, another layer) must not leak
    into the guards of a later compilation."""
    x = 2.0 * torch.randn(5, 4, 3)
    for backend in ("torch", "cpu_event"):
        torch._dynamo.reset()
        layer = evsnn.ALIF(3, 8, backend=backend).eval()
        with torch.no_grad():
            got = torch.compile(layer, backend="aot_eager", fullgraph=True)(x)[0]
            # float32, the same ops traced unfused: equal up to reordering
            torch.testing.assert_close(got, layer(x)[0], rtol=1e-5, atol=1e-6)


META = {
    **{name: (lambda make=make: make()) for name, make in CELLS.items()},
    "ALIF": lambda: evsnn.ALIF(3, 4, num_layers=2),
    "EGRU": lambda: evsnn.EGRU(3, 4, bidirectional=True),
    "DeltaGRU": lambda: evsnn.DeltaGRU(3, 4, num_layers=2, bidirectional=True),
    "DeltaLSTM": lambda: evsnn.DeltaLSTM(3, 4, batch_first=True),
    "LeakyReadout": lambda: evsnn.LeakyReadout(3, 4),
}


def _shapes(value) -> list:
    if isinstance(value, torch.Tensor):
        return [(tuple(value.shape), value.dtype)]
    return [s for v in value for s in _shapes(v)]


@pytest.mark.parametrize("name", list(META))
def test_a_layer_built_on_the_meta_device_runs_forward_on_meta(name, reference_backend):
    """``with torch.device("meta")`` (deferred initialisation, FSDP): the forward gives meta
    outputs and states of the shapes and dtypes the same layer gives on the CPU."""
    cpu = META[name]()
    with torch.device("meta"):
        meta = META[name]()
    assert all(p.is_meta for p in meta.parameters())
    x = torch.randn(2, 3) if name.endswith("Cell") else torch.randn(5, 2, 3)
    with torch.no_grad():
        expected = cpu(x)
        got = meta(x.to("meta"))
    assert all(t.is_meta for t in _flat_tensors(got))
    assert _shapes(got) == _shapes(expected)


def _flat_tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    return [t for v in value for t in _flat_tensors(v)]


@pytest.mark.parametrize("name", ["EGRU", "ALIFCell"])
def test_a_layer_moved_to_meta_runs_forward_on_meta(name, reference_backend):
    layer = META[name]().to("meta")
    x = torch.randn(2, 3) if name.endswith("Cell") else torch.randn(5, 2, 3)
    out, _ = layer(x.to("meta"))
    assert out.is_meta and out.shape == META[name]()(x)[0].shape


def test_training_on_the_meta_device_is_refused_naming_it():
    from evsnn.train import resolve_device

    with pytest.raises(ValueError, match="--device meta: meta tensors carry shapes but no values"):
        resolve_device("meta")


@pytest.mark.parametrize("bidirectional", [False, True])
def test_packed_mean_event_fraction_is_over_the_computed_steps(bidirectional, reference_backend):
    """Lengths 8, 5, 3: the mean is the fraction of nonzero outputs over every (step, sample,
    unit) that was computed, not the plain mean of the per-step curve (which would weigh step 7,
    one sequence, like step 0, three)."""
    layer = evsnn.EGRU(3, 6, bidirectional=bidirectional, backend="torch").eval()
    lengths = torch.tensor([8, 5, 3])
    x = _drifting(8, 3)
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
    with torch.no_grad():
        out, _ = layer(packed)
    valid = out.data  # the packed data holds exactly the computed (step, sample) rows
    expected = (valid != 0).float().mean().item()
    stats = layer.last_stats
    assert stats.mean_event_fraction == pytest.approx(expected, rel=1e-6)  # float32 sums of counts
    assert stats.as_dict()["mean_event_fraction"] == pytest.approx(expected, rel=1e-6)
    assert stats.event_fraction.float().mean().item() != pytest.approx(expected, rel=1e-3)


DEFERRED = {
    "ALIF": lambda: evsnn.ALIF(3, 6, num_layers=2, bidirectional=True),
    "ALIF-fixed-threshold": lambda: evsnn.ALIF(3, 6, learn_threshold=False, tau_init="multi_normal"),
    "ALIFCell": lambda: evsnn.ALIFCell(3, 6),
    "ALIFReadout": lambda: evsnn.ALIFReadout(3, 6),
    "LeakyReadout": lambda: evsnn.LeakyReadout(3, 6),
    "EGRU": lambda: evsnn.EGRU(3, 6, num_layers=2, bidirectional=True),
    "EGRU-beta": lambda: evsnn.EGRU(3, 6, threshold=0.3, threshold_init="beta"),
    "EGRUCell": lambda: evsnn.EGRUCell(3, 6),
    "DeltaGRU": lambda: evsnn.DeltaGRU(3, 6, num_layers=2),
    "DeltaLSTM": lambda: evsnn.DeltaLSTM(3, 6, bidirectional=True),
}


@pytest.mark.parametrize("name", list(DEFERRED))
def test_meta_to_empty_then_reset_parameters_equals_building_directly(name):
    """The deferred-initialisation recipe (FSDP's): build on the meta device, ``to_empty``, then
    ``reset_parameters()``. Every parameter and buffer must be drawn again as construction draws
    it (thresholds, time constants and adaptation included), never left as uninitialised memory."""
    make = DEFERRED[name]
    torch.manual_seed(7)
    direct = make()
    with torch.device("meta"):
        deferred = make()
    deferred.to_empty(device="cpu")
    torch.manual_seed(7)
    deferred.reset_parameters()
    want, got = direct.state_dict(), deferred.state_dict()
    assert list(got) == list(want)
    for key, value in want.items():
        assert torch.equal(got[key], value), key
