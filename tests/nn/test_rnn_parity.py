"""nn.GRU / nn.LSTM parity of the sequence layers (SPEC.md §6): num_layers, dropout between
layers, bidirectional, batch_first, PackedSequence, the h_n state layout, from_torch/to_torch,
explicit signatures and the errors of nn.GRU-shaped mistakes.

Truths: nn.GRU / nn.LSTM themselves (the delta layers at Θ = 0, float64), the functional
reference scans composed by hand (layer k takes layer k−1's output, a reverse direction runs
the time-reversed sequence), and each sequence of a packed batch run alone.
"""

from __future__ import annotations

import inspect
import pickle
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from torch.utils._pytree import tree_flatten, tree_unflatten

import evsnn
from evsnn.functional import ALIFState, EGRUState, alif_scan, egru_scan

F64 = torch.float64
IN, H = 3, 4

pytestmark = pytest.mark.usefixtures("single_thread", "reference_backend")

FAMILIES = {
    "EGRU": lambda **k: evsnn.EGRU(IN, H, threshold=0.1, reset="threshold", dtype=F64, **k),
    "DeltaGRU": lambda **k: evsnn.DeltaGRU(IN, H, theta_x=0.2, theta_h=0.05, dtype=F64, **k),
    "DeltaLSTM": lambda **k: evsnn.DeltaLSTM(IN, H, theta_x=0.2, theta_h=0.05, dtype=F64, **k),
    "ALIF": lambda **k: evsnn.ALIF(IN, H, tau_mem=3.0, tau_adapt=5.0, b0=0.05, dtype=F64, **k),
}


def _close(a, b, atol: float = 1e-10) -> None:
    torch.testing.assert_close(a, b, rtol=0, atol=atol)


def _fields_close(a, b, atol: float = 1e-10) -> None:
    for name in a._fields:
        u, v = getattr(a, name), getattr(b, name)
        if isinstance(u, tuple):
            for s, t in zip(u, v, strict=True):
                _close(s, t, atol)
        else:
            _close(u, v, atol)


# --------------------------------------------------------------------------------------------
# Θ = 0 delta layers are nn.GRU / nn.LSTM, stacked and bidirectional, h_n and c_n included
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
@pytest.mark.parametrize("num_layers,bidirectional", [(1, True), (3, False), (2, True)])
def test_theta_zero_equals_torch_rnn_with_h_n(kind, num_layers, bidirectional):
    torch_cls, ours = (nn.GRU, evsnn.DeltaGRU) if kind == "GRU" else (nn.LSTM, evsnn.DeltaLSTM)
    rnn = torch_cls(IN, H, num_layers=num_layers, bidirectional=bidirectional, batch_first=True, dtype=F64)
    layer = ours.from_torch(rnn)
    assert (layer.num_layers, layer.bidirectional, layer.batch_first) == (num_layers, bidirectional, True)
    d = 2 if bidirectional else 1
    x = torch.randn(2, 7, IN, dtype=F64)
    h0 = torch.randn(num_layers * d, 2, H, dtype=F64)
    c0 = torch.randn(num_layers * d, 2, H, dtype=F64)
    if kind == "GRU":
        ref, h_n = rnn(x, h0)
        out, state = layer(x, layer.initial_state(2, h0=h0))
    else:
        ref, (h_n, c_n) = rnn(x, (h0, c0))
        out, state = layer(x, layer.initial_state(2, h0=h0, c0=c0))
        _close(state.c, c_n)
    assert out.shape == ref.shape == (2, 7, d * H)
    _close(out, ref)
    _close(state.h, h_n)
    # the gradients of every parameter too (Θ = 0: the delta masks are all ones)
    (out.square().sum() + state.h.sum()).backward()
    (ref.square().sum() + h_n.sum()).backward()
    theirs = dict(rnn.named_parameters())
    for k in range(num_layers):
        for r in range(d):
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                ours_name = name + ("" if (k, r) == (0, 0) else f"_l{k}" + ("_reverse" if r else ""))
                their_name = name + f"_l{k}" + ("_reverse" if r else "")
                _close(getattr(layer, ours_name).grad, theirs[their_name].grad, atol=1e-9)


@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
def test_theta_zero_packed_equals_torch_rnn_packed(kind):
    torch_cls, ours = (nn.GRU, evsnn.DeltaGRU) if kind == "GRU" else (nn.LSTM, evsnn.DeltaLSTM)
    rnn = torch_cls(IN, H, num_layers=2, bidirectional=True, dtype=F64)
    layer = ours.from_torch(rnn)
    x = torch.randn(6, 4, IN, dtype=F64)
    lengths = torch.tensor([3, 6, 1, 3])
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    ref, ref_state = rnn(packed)
    out, state = layer(packed)
    assert isinstance(out, nn.utils.rnn.PackedSequence)
    assert torch.equal(out.batch_sizes, ref.batch_sizes) and torch.equal(out.sorted_indices, ref.sorted_indices)
    _close(out.data, ref.data)
    h_n = ref_state if kind == "GRU" else ref_state[0]
    _close(state.h, h_n)
    if kind == "LSTM":
        _close(state.c, ref_state[1])


class _Classifier(nn.Module):
    """nn.GRU user code as tutorials write it: packed variable-length batch, last valid step."""

    def __init__(self, rnn_cls):
        super().__init__()
        self.rnn = rnn_cls(IN, H, num_layers=2, batch_first=True, dropout=0.1, bidirectional=True, dtype=F64)
        self.fc = nn.Linear(2 * H, 3, dtype=F64)

    def forward(self, x, lengths):
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True)
        return self.fc(out[torch.arange(len(lengths)), lengths - 1])


@pytest.mark.parametrize("torch_cls,ours", [(nn.GRU, evsnn.DeltaGRU), (nn.LSTM, evsnn.DeltaLSTM)])
def test_nn_gru_code_runs_with_only_the_class_swapped(torch_cls, ours):
    ref_net = _Classifier(torch_cls).eval()
    net = _Classifier(ours).eval()
    net.load_state_dict(ref_net.state_dict())  # nn.GRU's weight_ih_l0 ... load into layer 0 forward
    x = torch.randn(4, 6, IN, dtype=F64)
    lengths = torch.tensor([6, 2, 5, 3])
    _close(net(x, lengths), ref_net(x, lengths))
    _, h_n = ref_net.rnn(x)
    _, state = net.rnn(x)
    _close(state.h, h_n if torch_cls is nn.GRU else h_n[0])  # state.h is h_n in both


def test_to_torch_round_trip_keeps_every_layer_and_direction():
    for ours, kind in ((evsnn.DeltaLSTM, nn.LSTM), (evsnn.EGRU, nn.GRU)):
        layer = ours(IN, H, 2, bias=True, batch_first=True, dropout=0.25, bidirectional=True, dtype=F64)
        rnn = layer.to_torch()
        assert type(rnn) is kind
        assert (rnn.num_layers, rnn.bidirectional, rnn.batch_first, rnn.dropout) == (2, True, True, 0.25)
        back = ours.from_torch(rnn)
        assert back.dropout == 0.25
        theirs = dict(rnn.named_parameters())
        for name, p in layer.named_parameters():
            if name.startswith("log_threshold"):
                continue
            torch_name = name if "_l" in name else name + "_l0"
            assert torch.equal(theirs[torch_name], p), name
            assert torch.equal(getattr(back, name), p), name


def test_egru_from_torch_copies_all_layers_and_refuses_proj_size():
    gru = nn.GRU(IN, H, num_layers=2, bidirectional=True, dtype=F64)
    egru = evsnn.EGRU.from_torch(gru, threshold=0.2)
    assert torch.equal(egru.weight_hh_l1_reverse, gru.weight_hh_l1_reverse)
    assert torch.equal(egru.weight_ih, gru.weight_ih_l0)
    assert egru.weight_ih_l1.shape == (3 * H, 2 * H)
    with pytest.raises(ValueError, match="proj_size=2"):
        evsnn.DeltaLSTM.from_torch(nn.LSTM(IN, H, num_layers=2, bidirectional=True, proj_size=2))


# --------------------------------------------------------------------------------------------
# stacking = the reference scans composed by hand (SPEC §6)
# --------------------------------------------------------------------------------------------


def _egru_direction(layer, suffix, x, state=None):
    y, final, _ = egru_scan(
        x,
        state,
        getattr(layer, "weight_ih" + suffix),
        getattr(layer, "weight_hh" + suffix),
        getattr(layer, "bias_ih" + suffix),
        getattr(layer, "bias_hh" + suffix),
        getattr(layer, "log_threshold" + suffix).exp(),
        reset=layer.reset,
        surrogate=layer.surrogate,
    )
    return y, final


def _alif_direction(layer, suffix, x, state=None):
    cur = nn.functional.linear(x, getattr(layer, "weight_ih" + suffix), getattr(layer, "bias_ih" + suffix))
    s, final, _ = alif_scan(
        cur,
        state,
        tau_mem=getattr(layer, "tau_mem" + suffix),
        tau_adapt=getattr(layer, "tau_adapt" + suffix),
        b0=getattr(layer, "b0" + suffix),
        beta=getattr(layer, "beta" + suffix),
        surrogate=layer.surrogate,
        weight_hh=getattr(layer, "weight_hh" + suffix),
        bias_hh=getattr(layer, "bias_hh" + suffix),
    )
    return s, final


def _composed(layer, run, x, initial=None):
    """Two bidirectional layers by hand: layer 1 reads both directions of layer 0, concatenated;
    the reverse direction runs the time-reversed sequence and is reversed back."""
    layer_in, finals = x, []
    for k in range(2):
        fwd, f_fwd = run(layer, "" if k == 0 else f"_l{k}", layer_in, None if initial is None else initial[2 * k])
        rev, f_rev = run(layer, f"_l{k}_reverse", layer_in.flip(0), None if initial is None else initial[2 * k + 1])
        finals += [f_fwd, f_rev]
        layer_in = torch.cat([fwd, rev.flip(0)], -1)
    return layer_in, finals


@pytest.mark.parametrize("family", ["EGRU", "ALIF"])
def test_two_layer_bidirectional_is_the_reference_composed(family):
    layer = FAMILIES[family](num_layers=2, bidirectional=True)
    run = _egru_direction if family == "EGRU" else _alif_direction
    x = torch.randn(9, 2, IN, dtype=F64) * 2
    out, state = layer(x)
    ref, finals = _composed(layer, run, x)
    _close(out, ref, atol=1e-12)
    assert (out != 0).any() and (out == 0).any()  # active, so the comparison is not vacuous
    for name in state._fields:
        _close(getattr(state, name), torch.stack([getattr(f, name) for f in finals]), atol=1e-12)
    # continuing from the returned state: each layer·direction continues from its own final state
    x2 = torch.randn(3, 2, IN, dtype=F64) * 2
    out2, _ = layer(x2, state)
    _close(out2, _composed(layer, run, x2, finals)[0], atol=1e-12)


def test_dropout_between_layers_in_training_only():
    layer = evsnn.EGRU(IN, H, 2, dropout=0.5, threshold=0.05, dtype=F64, record_stats=False)
    x = torch.randn(8, 3, IN, dtype=F64) * 2
    torch.manual_seed(7)
    out, _ = layer(x)
    torch.manual_seed(7)
    y0, _ = _egru_direction(layer, "", x)
    y1, _ = _egru_direction(layer, "_l1", nn.functional.dropout(y0, 0.5, training=True))
    _close(out, y1, atol=0)
    layer.eval()
    out_eval, _ = layer(x)
    _close(out_eval, _egru_direction(layer, "_l1", _egru_direction(layer, "", x)[0])[0], atol=0)


# --------------------------------------------------------------------------------------------
# PackedSequence: each sequence's output and final state equal running it alone
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("enforce_sorted", [True, False])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_packed_equals_each_sequence_alone(family, enforce_sorted):
    layer = FAMILIES[family](num_layers=2, bidirectional=True)
    lengths = [7, 4, 4, 2] if enforce_sorted else [4, 7, 2, 4]
    x = torch.randn(7, 4, IN, dtype=F64) * 2
    init = layer.initial_state(4)
    init = init._replace(
        **{
            f: getattr(init, f) + 0.01 * torch.randn_like(getattr(init, f))
            for f in init._fields
            if not isinstance(getattr(init, f), tuple)
        }
    )
    packed = pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=enforce_sorted)
    out, state = layer(packed, init)
    padded, out_lengths = pad_packed_sequence(out)
    assert out_lengths.tolist() == lengths and padded.shape == (7, 4, 2 * H)
    for b, n in enumerate(lengths):
        one = init._replace(
            **{
                f: (tuple(t[b : b + 1] for t in v) if isinstance(v, tuple) else v[:, b : b + 1])
                for f, v in ((f, getattr(init, f)) for f in init._fields)
            }
        )
        alone, alone_state = layer(x[:n, b : b + 1], one)
        # rounding only: a batch of one and a batch of several take different BLAS paths
        _close(padded[:n, b : b + 1], alone, atol=1e-12)
        assert (padded[n:, b] == 0).all()
        mine = state._replace(
            **{
                f: (tuple(t[b : b + 1] for t in v) if isinstance(v, tuple) else v[:, b : b + 1])
                for f, v in ((f, getattr(state, f)) for f in state._fields)
            }
        )
        _fields_close(mine, alone_state, atol=1e-12)
    assert (padded != 0).any()


def test_packed_gradients_reach_every_sequence():
    layer = evsnn.DeltaGRU(IN, H, bidirectional=True, dtype=F64)  # Θ = 0: every input reaches the output
    x = torch.randn(5, 3, IN, dtype=F64, requires_grad=True)
    out, _ = layer(pack_padded_sequence(x, torch.tensor([5, 2, 3]), enforce_sorted=False))
    out.data.sum().backward()
    assert (x.grad[:2] != 0).all() and (x.grad[2:, 1] == 0).all() and (x.grad[3:, 2] == 0).all()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_cpu_event_backend_serves_stacked_bidirectional_packed(family):
    layer = FAMILIES[family](num_layers=2, bidirectional=True, backend="torch").float()
    x = torch.randn(6, 3, IN) * 2
    packed = pack_padded_sequence(x, torch.tensor([6, 3, 5]), enforce_sorted=False)
    ref, ref_state = layer(packed)
    layer.backend = "cpu_event"
    out, state = layer(packed)
    torch.testing.assert_close(out.data, ref.data, rtol=1e-5, atol=1e-5)
    for name in state._fields:
        a, b = getattr(state, name), getattr(ref_state, name)
        for u, v in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
            torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("family", list(FAMILIES))
def test_cupy_backend_serves_stacked_bidirectional_packed(family):
    layer = FAMILIES[family](num_layers=2, bidirectional=True, backend="torch", device="cuda").float()
    x = torch.randn(6, 3, IN, device="cuda") * 2
    packed = pack_padded_sequence(x, torch.tensor([6, 3, 5]), enforce_sorted=False)
    ref, ref_state = layer(packed)
    layer.backend = "cupy"
    out, state = layer(packed)
    torch.testing.assert_close(out.data, ref.data, rtol=1e-5, atol=1e-5)
    for name in state._fields:
        a, b = getattr(state, name), getattr(ref_state, name)
        for u, v in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
            torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# the returned state: h_n layout, no silent h[-1], still a NamedTuple for everything else
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family,field", [("ALIF", "s")])
def test_int_indexing_a_layer_state_raises_naming_the_field(family, field):
    layer = FAMILIES[family](num_layers=2)
    out, state = layer(torch.randn(4, 2, IN, dtype=F64))
    with pytest.raises(TypeError, match=rf"state\.{field}\[-1\]"):
        state[-1]
    with pytest.raises(TypeError, match="h_n"):
        state[0]
    assert getattr(state, field).shape == (2, 2, H)
    _close(getattr(state, field)[-1], out[-1])  # the last layer's final output, nn.GRU's h_n[-1]
    first, *rest = state  # unpacking, _replace, pytrees and pickling do not index
    assert first is getattr(state, state._fields[0]) and len(rest) == len(state._fields) - 1
    replaced = state._replace(**{field: getattr(state, field) * 0})
    assert type(replaced) is type(state) and (getattr(replaced, field) == 0).all()
    leaves, spec = tree_flatten(state)
    assert type(tree_unflatten(leaves, spec)) is type(state)
    restored = pickle.loads(
        pickle.dumps(type(state)(*(t.detach() if isinstance(t, torch.Tensor) else t for t in state)))
    )
    assert type(restored) is type(state)
    assert repr(state).startswith(layer._state_base.__name__ + "(")
    assert isinstance(state, layer._state_base)


def test_initial_state_layouts_and_their_errors():
    egru = FAMILIES["EGRU"]()
    x = torch.randn(5, 2, IN, dtype=F64)
    c, y = torch.randn(2, H, dtype=F64), torch.zeros(2, H, dtype=F64)
    out_old, st_old = egru(x, EGRUState(c, y))  # the [B, H] form, one layer and direction
    out_new, st_new = egru(x, EGRUState(c[None], y[None]))
    _close(out_old, out_new, atol=0)
    assert st_old.c.shape == (1, 2, H)
    stacked = FAMILIES["EGRU"](num_layers=2)
    with pytest.raises(ValueError, match=r"must have shape \(2, 2, 4\).*h_n"):
        stacked(x, EGRUState(c, y))
    alif = FAMILIES["ALIF"](bidirectional=True)
    with pytest.raises(TypeError, match=r"ALIF expects state as ALIFState\(v, b, s\)"):
        alif(x, torch.zeros(2, 2, H, dtype=F64))
    dgru = FAMILIES["DeltaGRU"](num_layers=2, bidirectional=True)
    h0 = torch.randn(4, 2, H, dtype=F64)
    _close(dgru(x, h0)[0], dgru(x, dgru.initial_state(2, h0=h0))[0], atol=0)  # nn.GRU's h_0 tensor
    st = dgru.initial_state(2)
    assert isinstance(st.x_hat, tuple) and [t.shape[-1] for t in st.x_hat] == [IN, IN, 2 * H, 2 * H]
    with pytest.raises(TypeError, match="x_hat.*tuple of num_layers\\*num_directions=4"):
        dgru(x, st._replace(x_hat=torch.zeros(4, 2, IN, dtype=F64)))
    with pytest.raises(ValueError, match=r"h0 must have shape \(4, 2, 4\)"):
        dgru.initial_state(2, h0=torch.zeros(2, 2, H, dtype=F64))
    alif_state = FAMILIES["ALIF"](num_layers=3).initial_state(2)
    assert isinstance(alif_state, ALIFState) and alif_state.b.shape == (3, 2, H)


def test_last_stats_sum_layers_and_directions():
    layer = evsnn.EGRU(IN, H, 2, bidirectional=True, threshold=0.1, dtype=F64)
    steps, batch = 6, 2
    layer(torch.randn(steps, batch, IN, dtype=F64))
    rows = 3 * H
    # two directions of layer 0 read IN inputs, two of layer 1 read both directions' 2H events
    expected = 2 * steps * batch * rows * (IN + H) + 2 * steps * batch * rows * (2 * H + H)
    assert layer.last_stats.dense_macs == expected
    assert layer.last_stats.event_fraction.shape == (steps,)
    runs = layer.last_stats.extra["runs"]  # h_n order: l0, l0_reverse, l1, l1_reverse
    assert [r.dense_macs for r in runs] == [steps * batch * rows * (IN + H)] * 2 + [steps * batch * rows * 3 * H] * 2
    _close(layer.last_stats.event_fraction, sum(r.event_fraction for r in runs) / 4, atol=1e-7)


# --------------------------------------------------------------------------------------------
# constructor: nn.GRU's positional order, explicit signatures, clear errors
# --------------------------------------------------------------------------------------------

PUBLIC = [
    evsnn.EGRU,
    evsnn.EGRUCell,
    evsnn.DeltaGRU,
    evsnn.DeltaGRUCell,
    evsnn.DeltaLSTM,
    evsnn.DeltaLSTMCell,
    evsnn.ALIF,
    evsnn.ALIFCell,
    evsnn.LeakyReadout,
]


@pytest.mark.parametrize("cls", PUBLIC, ids=lambda c: c.__name__)
def test_signatures_are_explicit_and_documented(cls):
    params = inspect.signature(cls).parameters
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    doc = inspect.getdoc(cls)
    assert "Args:" in doc
    for name in params:
        assert f"{name}:" in doc, f"{cls.__name__} docstring lacks {name}"
    with pytest.raises(TypeError, match=rf"{cls.__name__}\.__init__\(\) got an unexpected keyword"):
        cls(IN, H, no_such_argument=1)


@pytest.mark.parametrize("cls", [evsnn.EGRU, evsnn.DeltaGRU, evsnn.DeltaLSTM, evsnn.ALIF], ids=lambda c: c.__name__)
def test_nn_gru_positional_order_and_bad_stacking_values(cls):
    layer = cls(IN, H, 2, True, True, 0.0, True)  # nn.GRU(input, hidden, num_layers, bias, batch_first, dropout, bidir)
    assert (layer.num_layers, layer.bias, layer.batch_first, layer.bidirectional) == (2, True, True, True)
    with pytest.raises(ValueError, match=f"{cls.__name__} num_layers must be >= 1, got 0"):
        cls(IN, H, 0)
    with pytest.raises(TypeError, match="num_layers.*pass bias= by keyword"):
        cls(IN, H, False)
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
            cls(IN, H, 2, dropout=bad)
    with pytest.warns(UserWarning, match="num_layers > 1"):
        cls(IN, H, 1, dropout=0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cls(IN, H, 2, dropout=0.3)


def test_one_layer_helpers_take_the_layer_state_and_refuse_stacks():
    from evsnn import metrics
    from evsnn.regularizers import DeltaL1Regularizer

    layer = FAMILIES["DeltaGRU"]()
    x = torch.randn(5, 2, IN, dtype=F64) * 2
    _, state = layer(x)  # [1, B, ...] h_n and memories
    out, _ = layer(x, state)
    reg = DeltaL1Regularizer(1.0)
    by_layout = reg(out, layer, state)
    by_fields = reg(out, layer, state._replace(h=state.h[0], x_hat=state.x_hat[0], h_hat=state.h_hat[0]))
    _close(by_layout, by_fields, atol=0)
    assert by_layout > 0
    stacked = FAMILIES["DeltaGRU"](num_layers=2)
    with pytest.raises(ValueError, match="replays a one-layer, unidirectional DeltaGRU; got num_layers=2"):
        metrics.reference_traces(stacked, x)


def test_stream_and_nir_refuse_stacked_layers_instead_of_using_layer_0():
    from evsnn.interop.nir import export_to_nir
    from evsnn.streaming import Stream

    with pytest.raises(ValueError, match="Stream runs one layer.*num_layers=2"):
        Stream(evsnn.EGRU(IN, H, 2))
    with pytest.raises(ValueError, match="bidirectional=True"):
        Stream(evsnn.DeltaGRU(IN, H, bidirectional=True))
    with pytest.raises(ValueError, match="to NIR: export one-layer"):
        export_to_nir(nn.Sequential(evsnn.ALIF(IN, H, 2, adaptive=False)))
