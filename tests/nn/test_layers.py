"""The nn layers and cells: reference equality, chunking, cells vs layers, serialisation,
batch_first, conversion from/to nn.GRU/nn.LSTM, LayerStats, EVSNN_BACKEND, parameter constraints."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch import nn

import evsnn
from evsnn.functional import alif_scan, delta_gru_scan, delta_lstm_scan, egru_scan, leaky_readout_scan
from evsnn.nn._stack import ALIFLayerState, DeltaLSTMHidden, StateTensor
from evsnn.ops.dispatch import BackendUnavailable

F64 = torch.float64
IN, H = 3, 5

pytestmark = pytest.mark.usefixtures("single_thread", "reference_backend")

# Inputs are scaled so that every family is active (spikes/events/deltas) at these sizes.
# backend="torch": these tests are about the layers' own logic on the reference math; each
# accelerated backend is compared with the reference in its own test module.
LAYERS = {
    "ALIF": lambda: evsnn.ALIF(IN, H, dtype=F64, backend="torch"),
    "ALIF-ff": lambda: evsnn.ALIF(IN, H, recurrent=False, dtype=F64, backend="torch"),
    "EGRU-output": lambda: evsnn.EGRU(IN, H, threshold=0.1, reset="output", dtype=F64, backend="torch"),
    "EGRU-threshold": lambda: evsnn.EGRU(IN, H, threshold=0.1, reset="threshold", dtype=F64, backend="torch"),
    "DeltaGRU": lambda: evsnn.DeltaGRU(IN, H, theta_x=0.2, theta_h=0.05, dtype=F64, backend="torch"),
    "DeltaLSTM": lambda: evsnn.DeltaLSTM(IN, H, theta_x=0.2, theta_h=0.05, dtype=F64, backend="torch"),
    "LeakyReadout": lambda: evsnn.LeakyReadout(IN, H, dtype=F64),
}
CELLS = {
    "ALIF": evsnn.ALIFCell,
    "ALIF-ff": lambda *a, **k: evsnn.ALIFCell(*a, recurrent=False, **k),
    "EGRU-output": lambda *a, **k: evsnn.EGRUCell(*a, threshold=0.1, reset="output", **k),
    "EGRU-threshold": lambda *a, **k: evsnn.EGRUCell(*a, threshold=0.1, reset="threshold", **k),
    "DeltaGRU": lambda *a, **k: evsnn.DeltaGRUCell(*a, theta_x=0.2, theta_h=0.05, **k),
    "DeltaLSTM": lambda *a, **k: evsnn.DeltaLSTMCell(*a, theta_x=0.2, theta_h=0.05, **k),
}


def _x(steps: int = 12, batch: int = 2) -> torch.Tensor:
    return torch.randn(steps, batch, IN, dtype=F64) * 2.0


def _one_direction(state) -> dict:
    """A state's fields by name, ``[B, ...]``: a one-layer, one-direction layer's state (nn.GRU's
    ``h_n`` layout ``[1, B, ...]``: ALIF's NamedTuple, the h_n tensor carrying the other fields,
    DeltaLSTM's (h_n, c_n)) or the functional state of the reference scans and cells."""
    if isinstance(state, DeltaLSTMHidden):
        return {**_one_direction(state.h), "c": state.c[0]}
    if isinstance(state, StateTensor):
        return {name: getattr(state, name)[0] for name in state._fields}
    if isinstance(state, ALIFLayerState):
        assert all(f.shape[0] == 1 for f in state), [tuple(f.shape) for f in state]
        return {name: getattr(state, name)[0] for name in state._fields}
    return dict(zip(state._fields, state))


def _assert_states_equal(a, b, atol: float = 0.0) -> None:
    """Equal fields; the delta layers' returned states leave the accumulators ``m`` out (they are
    recomputed from the memories), so the fields both sides have are compared."""
    if isinstance(a, torch.Tensor) and not isinstance(a, StateTensor):
        torch.testing.assert_close(a, b, rtol=0, atol=atol)
        return
    a, b = _one_direction(a), _one_direction(b)
    common = a.keys() & b.keys()
    assert common >= (a.keys() - {"m"}) and common >= (b.keys() - {"m"}), (sorted(a), sorted(b))
    for name in sorted(common):
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=atol, msg=name)


def _reference(name: str, layer: nn.Module, x: torch.Tensor):
    """The functional reference scan with the layer's parameters."""
    if name.startswith("ALIF"):
        cur = nn.functional.linear(x, layer.weight_ih, layer.bias_ih)
        out, final, _ = alif_scan(
            cur,
            None,
            tau_mem=layer.tau_mem,
            tau_adapt=layer.tau_adapt,
            b0=layer.b0,
            beta=layer.beta,
            surrogate=layer.surrogate,
            weight_hh=layer.weight_hh,
            bias_hh=layer.bias_hh,
        )
        return out, final
    if name.startswith("EGRU"):
        out, final, _ = egru_scan(
            x,
            None,
            layer.weight_ih,
            layer.weight_hh,
            layer.bias_ih,
            layer.bias_hh,
            layer.threshold,
            reset=layer.reset,
            surrogate=layer.surrogate,
        )
        return out, final
    if name == "LeakyReadout":
        m = leaky_readout_scan(layer.linear(x), None, tau=layer.tau)
        return m, m[-1]
    scan = delta_gru_scan if name == "DeltaGRU" else delta_lstm_scan
    out, final, _ = scan(
        x,
        None,
        layer.weight_ih,
        layer.weight_hh,
        layer.bias_ih,
        layer.bias_hh,
        theta_x=layer.theta_x,
        theta_h=layer.theta_h,
    )
    return out, final


@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_equals_reference_and_is_active(name):
    layer = LAYERS[name]()
    x = _x()
    out, final = layer(x)
    ref, ref_final = _reference(name, layer, x)
    assert out.shape == (12, 2, H)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    _assert_states_equal(final, ref_final)
    if name != "LeakyReadout":
        frac = layer.last_stats.mean_event_fraction
        assert 0 < frac < 1, frac  # the comparisons below are not vacuous


@pytest.mark.parametrize("name", list(LAYERS))
def test_two_chunks_equal_whole_sequence(name):
    layer = LAYERS[name]()
    x = _x(14)
    whole, final = layer(x)
    first, state = layer(x[:5])
    second, final2 = layer(x[5:], state)
    torch.testing.assert_close(torch.cat([first, second]), whole, rtol=0, atol=1e-12)
    _assert_states_equal(final2, final, atol=1e-12)


@pytest.mark.parametrize("name", list(CELLS))
def test_cell_looped_equals_layer(name):
    layer = LAYERS[name]()
    cell = CELLS[name](IN, H, dtype=F64)
    cell.load_state_dict(layer.state_dict())
    x = _x()
    out, final = layer(x)
    state, outs = None, []
    for t in range(x.shape[0]):
        o, state = cell.step(x[t], state)
        outs.append(o)
    torch.testing.assert_close(torch.stack(outs), out, rtol=0, atol=1e-12)
    _assert_states_equal(state, final, atol=1e-12)


@pytest.mark.parametrize("name", list(LAYERS))
def test_batch_first(name):
    layer = LAYERS[name]()
    x = _x()
    out, final = layer(x)
    layer.batch_first = True
    out_bf, final_bf = layer(x.transpose(0, 1).contiguous())
    torch.testing.assert_close(out_bf, out.transpose(0, 1), rtol=0, atol=0)
    _assert_states_equal(final_bf, final)  # states are [B, ·] either way


@pytest.mark.parametrize("name", list(LAYERS))
def test_gradients_reach_every_parameter(name):
    layer = LAYERS[name]()
    out, _ = layer(_x())
    (out * torch.linspace(-1, 1, H, dtype=F64)).sum().backward()
    for pname, p in layer.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.alif = evsnn.ALIF(IN, H)
        self.egru = evsnn.EGRU(H, H, threshold=0.05)
        self.delta = evsnn.DeltaLSTM(H, H, theta_x=0.1, theta_h=0.1)
        self.readout = evsnn.LeakyReadout(H, 2)

    def forward(self, x):
        s, _ = self.alif(x)
        y, _ = self.egru(s)
        h, _ = self.delta(y)
        m, _ = self.readout(h)
        return m


def test_state_dict_round_trip_into_a_fresh_model():
    x = torch.randn(10, 2, IN) * 2
    net = _Net()
    ref = net(x)
    torch.manual_seed(123)
    other = _Net()
    assert not torch.equal(other(x), ref)
    other.load_state_dict(net.state_dict())
    torch.testing.assert_close(other(x), ref, rtol=0, atol=0)
    keys = net.state_dict().keys()
    for k in (
        "alif.tau_mem",
        "alif.tau_adapt",
        "alif.b0",
        "alif.beta",
        "egru.log_threshold",
        "delta.weight_ih",
        "readout.tau",
        "readout.linear.weight",
    ):
        assert k in keys, k


def test_torch_save_whole_model_and_deepcopy():
    x = torch.randn(10, 2, IN) * 2
    net = _Net()
    ref = net(x)
    buf = io.BytesIO()
    torch.save(net, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    torch.testing.assert_close(loaded(x), ref, rtol=0, atol=0)
    assert loaded.egru.surrogate == net.egru.surrogate and loaded.alif.surrogate == net.alif.surrogate
    clone = copy.deepcopy(net)
    torch.testing.assert_close(clone(x), ref, rtol=0, atol=0)
    with torch.no_grad():
        clone.alif.weight_ih.add_(1.0)
    assert not torch.equal(clone.alif.weight_ih, net.alif.weight_ih)  # a real copy


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_delta_from_torch_equals_torch_and_round_trips(kind):
    rnn = (nn.GRU if kind == "gru" else nn.LSTM)(IN, H, batch_first=True).double()
    cls = evsnn.DeltaGRU if kind == "gru" else evsnn.DeltaLSTM
    layer = cls.from_torch(rnn)
    assert layer.batch_first and layer.theta_x == 0 and layer.weight_ih.dtype == F64
    x = torch.randn(2, 15, IN, dtype=F64)
    with torch.no_grad():
        ref, _ = rnn(x)
        out, _ = layer(x)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)
    back = layer.to_torch()
    assert type(back) is type(rnn) and back.batch_first
    for (k, a), (k2, b) in zip(rnn.state_dict().items(), back.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    again = cls.from_torch(back)
    for k, v in layer.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k


def test_egru_from_torch_copies_weights_and_to_torch_is_its_dense_gru():
    gru = nn.GRU(IN, H, bias=False)
    egru = evsnn.EGRU.from_torch(gru, reset="threshold")
    assert egru.reset == "threshold" and egru.bias_ih is None
    assert torch.equal(egru.weight_ih, gru.weight_ih_l0) and torch.equal(egru.weight_hh, gru.weight_hh_l0)
    back = egru.to_torch()
    assert torch.equal(back.weight_hh_l0, gru.weight_hh_l0) and not back.bias
    # From a zero state, the first EGRU step computes c̃ = (1 − z)·n, which is the GRU's h_1
    # (h_0 = 0); with θ tiny, every unit with c̃ > θ emits y = c̃ = h_1.
    x = torch.randn(1, 1, IN)
    with torch.no_grad():
        egru.log_threshold.fill_(math.log(1e-6))
        y, _ = egru(x)
        g, _ = gru(x)
    active = y != 0
    torch.testing.assert_close(y[active], g[active], rtol=1e-6, atol=1e-6)


def test_from_torch_rejects_what_it_cannot_convert():
    # stacked and bidirectional modules convert (tests/nn/test_rnn_parity.py); a projection does not
    with pytest.raises(ValueError, match="proj_size"):
        evsnn.DeltaLSTM.from_torch(nn.LSTM(IN, H, proj_size=2))
    with pytest.raises(TypeError, match="expected a torch.nn.GRU, got LSTM"):
        evsnn.DeltaGRU.from_torch(nn.LSTM(IN, H))


def test_alif_stats_by_hand():
    # Three neurons, two inputs, two steps, τ_m = τ_adp = 2, no recurrent weights:
    #   x_0 = [1, 0] → I_0 = [10, 0, −10]; v_0 = (1 − e^−½)·I_0 = [3.93, 0, −3.93] → spikes [1, 0, 0]
    #   x_1 = [0, 0] → neuron 0: b_1 = ρ·ρ·b0 + (1 − ρ) = 0.397, B_1 = 0.725, v_1 = α·3.93 − B_1 = 1.66 > B_1
    #   → spikes [1, 0, 0] again.  Input events: 1 (x_0[0]); recurrent events: s_{−1} = 0, s_0 has 1.
    layer = evsnn.ALIF(2, 3, bias=True, tau_mem=2.0, tau_adapt=2.0, dtype=F64)
    with torch.no_grad():
        layer.weight_ih.copy_(torch.tensor([[10.0, 0.0], [0.0, 0.0], [-10.0, 0.0]]))
        layer.weight_hh.zero_()
        layer.bias_ih.zero_()
        layer.bias_hh.zero_()
    x = torch.tensor([[[1.0, 0.0]], [[0.0, 0.0]]], dtype=F64)
    with torch.no_grad():
        out, _ = layer(x)
    assert out[:, 0].tolist() == [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]
    st = layer.last_stats
    assert isinstance(st, evsnn.LayerStats) and st.layer == "ALIF"
    assert st.event_fraction.tolist() == pytest.approx([1 / 3, 1 / 3])
    assert st.input_event_fraction.tolist() == pytest.approx([0.5, 0.0])
    assert st.dense_macs == 2 * 1 * 3 * 2 + 2 * 1 * 3 * 3  # T·B·H·IN + T·B·H·H = 30
    assert int(st.event_ops) == 1 * 3 + 1 * 3  # (input events + recurrent events) · H = 6
    assert st.ops_saved_fraction == pytest.approx(1 - 6 / 30)
    assert st.backward_sparsity is None  # no graph was recorded
    d = st.as_dict()
    assert d["dense_macs"] == 30 and d["event_ops"] == 6 and d["mean_event_fraction"] == pytest.approx(1 / 3)


def test_delta_and_egru_stats_by_hand():
    # DeltaGRU, IN = 2, H = 2, T = 3, x_t = [1, 0] constant, Θ_x = 0.5, Θ_h = 100:
    # Δx_0 = [1, 0], then no input delta; no hidden delta ever. Rows = 3H = 6.
    layer = evsnn.DeltaGRU(2, 2, theta_x=0.5, theta_h=100.0, dtype=F64)
    x = torch.tensor([[1.0, 0.0]], dtype=F64).expand(3, 1, 2)
    layer(x)
    st = layer.last_stats
    assert st.event_fraction.tolist() == [0.0, 0.0, 0.0]
    assert st.input_event_fraction.tolist() == [0.5, 0.0, 0.0]
    assert st.dense_macs == 3 * 1 * 6 * (2 + 2) and int(st.event_ops) == 1 * 6
    assert float(st.backward_sparsity) == 1.0  # graph recorded (weights require grad), no hidden delta

    # EGRU with θ huge: no events; every input is nonzero: ops = T·B·IN·3H, fraction 0
    egru = evsnn.EGRU(2, 2, threshold=1e3, threshold_init="constant", dtype=F64)
    x = torch.ones(4, 1, 2, dtype=F64)
    with torch.no_grad():
        egru(x)
    st = egru.last_stats
    assert st.event_fraction.tolist() == [0.0] * 4
    assert st.dense_macs == 4 * 1 * 6 * (2 + 2) and int(st.event_ops) == 4 * 2 * 6


def test_record_stats_off():
    layer = evsnn.EGRU(IN, H, record_stats=False)
    layer(torch.randn(3, 1, IN))
    assert layer.last_stats is None


def test_evsnn_backend_environment_variable(monkeypatch):
    layer = evsnn.DeltaGRU(IN, H)
    x = torch.randn(3, 1, IN)
    monkeypatch.setenv("EVSNN_BACKEND", "torch")
    ref, _ = layer(x)
    monkeypatch.setenv("EVSNN_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="EVSNN_BACKEND='nonsense' is not one of"):
        layer(x)
    if not torch.cuda.is_available():
        monkeypatch.setenv("EVSNN_BACKEND", "cupy")  # overrides "auto": an explicit request that cannot run
        with pytest.raises(BackendUnavailable, match="cupy"):
            layer(x)
    # an explicit layer backend is not overridden by the environment
    explicit = evsnn.DeltaGRU(IN, H, backend="torch")
    explicit.load_state_dict(layer.state_dict())
    out, _ = explicit(x)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_egru_threshold_stays_positive_and_finite_under_huge_steps():
    layer = evsnn.EGRU(IN, H, reset="threshold")
    x = torch.randn(6, 2, IN)
    for sign in (1.0, -1.0):
        opt = torch.optim.SGD(layer.parameters(), lr=1e6)
        for _ in range(3):
            opt.zero_grad()
            out, _ = layer(x)
            (sign * (layer.threshold.sum() + out.sum())).backward()
            opt.step()
        theta = layer.threshold
        assert (theta > 0).all() and torch.isfinite(theta).all(), theta
        out, state = layer(x)
        assert torch.isfinite(out).all() and torch.isfinite(state.c).all()
    opt = torch.optim.Adam(layer.parameters(), lr=100.0)
    for _ in range(5):
        opt.zero_grad()
        layer.threshold.sum().backward()
        opt.step()
    assert (layer.threshold > 0).all()


def test_alif_time_constants_stay_at_least_one_step_under_huge_steps():
    layer = evsnn.ALIF(IN, H)
    readout = evsnn.LeakyReadout(H, 2)
    x = torch.randn(6, 2, IN) * 3
    params = list(layer.parameters()) + list(readout.parameters())
    for sign in (1.0, -1.0):
        opt = torch.optim.SGD(params, lr=1e6)
        for _ in range(2):
            opt.zero_grad()
            s, _ = layer(x)
            m, _ = readout(s)
            (sign * (m.sum() + layer.tau_mem.sum() + layer.tau_adapt.sum() + readout.tau.sum())).backward()
            opt.step()
        for tau in (layer.tau_mem, layer.tau_adapt, readout.tau):
            a = evsnn.functional.decay(tau)
            # effective τ ≥ 1: α = exp(−1/τ) in [e^−1, 1]
            assert (a >= math.exp(-1) - 1e-7).all() and (a <= 1).all()
        s, st = layer(x)
        assert torch.isfinite(st.v).all() and torch.isfinite(readout(s)[0]).all()


def test_alif_tau_initialisers():
    n = 400
    layer = evsnn.ALIF(2, n, tau_mem=(20.0, 5.0), tau_adapt=(150.0, 10.0))
    assert abs(layer.tau_mem.mean().item() - 20) < 1.5 and abs(layer.tau_mem.std().item() - 5) < 1.0
    assert abs(layer.tau_adapt.mean().item() - 150) < 3
    bi = evsnn.ALIF(2, n, tau_mem=[(5.0, 0.5), (50.0, 0.5)], tau_init="multi_normal")
    tau = bi.tau_mem.detach()
    # the bimodal ("multi-normal") initialiser: half the neurons near 5, half near 50
    assert ((tau - 5).abs() < 3).sum() == n // 2 and ((tau - 50).abs() < 3).sum() == n // 2
    const = evsnn.ALIF(2, 4, tau_mem=7.0, tau_adapt=torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert const.tau_mem.tolist() == [7.0] * 4 and const.tau_adapt.tolist() == [1.0, 2.0, 3.0, 4.0]
    lif = evsnn.ALIF(2, 3, adaptive=False, learn_threshold=True)
    assert isinstance(lif.b0, nn.Parameter) and not isinstance(lif.beta, nn.Parameter)


def test_egru_dropconnect_and_zoneout_only_in_training():
    layer = evsnn.EGRU(IN, H, threshold=0.1, zoneout=0.3, dropconnect=0.5, dtype=F64)
    x = _x()
    layer.eval()
    a, _ = layer(x)
    b, _ = layer(x)
    assert torch.equal(a, b)  # deterministic at evaluation
    ref, _, _ = egru_scan(
        x,
        None,
        layer.weight_ih,
        layer.weight_hh,
        layer.bias_ih,
        layer.bias_hh,
        layer.threshold,
        reset=layer.reset,
        zoneout=0.3,
        training=False,
    )
    torch.testing.assert_close(a, ref, rtol=0, atol=0)
    layer.train()
    c, _ = layer(x)
    assert not torch.equal(c, a)  # random masks in training


def test_dtype_conversion_and_initial_state_helpers():
    layer = evsnn.ALIF(IN, H).double()
    assert layer.tau_mem.dtype == F64 and layer.b0.dtype == F64
    out, _ = layer(_x())
    assert out.dtype == F64
    st = layer.initial_state(3)  # nn.GRU's h_n layout [num_layers*directions, B, H]
    assert st.v.shape == (1, 3, H) and torch.equal(st.b, layer.b0.expand(1, 3, H))
    dgru = evsnn.DeltaGRU(IN, H)
    init = dgru.initial_state(2, h0=torch.ones(2, H))
    out_a, _ = dgru(torch.randn(4, 2, IN), init)
    assert out_a.shape == (4, 2, H)
    with pytest.raises(ValueError, match="no c0"):
        dgru.initial_state(2, c0=torch.ones(2, H))


def test_backward_sparsity_counts_exact_zero_pseudo_derivatives():
    # ALIF with a truncated surrogate: the fraction of (t, b, j) with |v − B| ≥ ε, from the trace
    support = 0.3
    layer = evsnn.ALIF(IN, H, surrogate=evsnn.surrogate.multi_gaussian().truncate(support), dtype=F64, backend="torch")
    x = _x()
    layer(x)
    cur = nn.functional.linear(x, layer.weight_ih, layer.bias_ih)
    _, _, trace = alif_scan(
        cur,
        None,
        tau_mem=layer.tau_mem,
        tau_adapt=layer.tau_adapt,
        b0=layer.b0,
        beta=layer.beta,
        weight_hh=layer.weight_hh,
        bias_hh=layer.bias_hh,
    )
    expected = ((trace.v - trace.threshold).abs() >= support).double().mean().item()
    assert 0 < expected < 1
    assert float(layer.last_stats.backward_sparsity) == pytest.approx(expected)
    # EGRU (triangle, ε = 0.3): no event and |c − θ| ≥ ε
    egru = LAYERS["EGRU-output"]()
    egru(x)
    _, _, tr = egru_scan(x, None, egru.weight_ih, egru.weight_hh, egru.bias_ih, egru.bias_hh, egru.threshold)
    theta = egru.threshold
    expected = ((tr.c_pre <= theta) & ((tr.c_pre - theta).abs() >= 0.3)).double().mean().item()
    assert 0 < expected < 1
    assert float(egru.last_stats.backward_sparsity) == pytest.approx(expected)
