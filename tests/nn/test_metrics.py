"""evsnn.metrics: profile counts against hand computations; reference_traces against the layers."""

from __future__ import annotations

import json

import pytest
import torch

import evsnn
from evsnn import metrics
from evsnn.functional import ALIFTrace, DeltaTrace, EGRUTrace


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny ops on a shared 2-core machine run far faster on one thread than fighting for two.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# Known spikes: T = 4 steps, B = 1, 3 units; unit j copies input j (see _copy_alif).
KNOWN = torch.tensor([[[1.0, 0.0, 0.0]], [[1.0, 1.0, 0.0]], [[0.0, 0.0, 0.0]], [[1.0, 1.0, 1.0]]])


def _copy_alif() -> evsnn.ALIF:
    """A recurrent ALIF whose unit j spikes exactly when input j is 1.

    Current ±500 (weight 1000, bias −500) with τ_m = 1 (α = e⁻¹ ≈ 0.37 < 1 − α ≈ 0.63): since
    |v| ≤ 500, v_t = α v_{t−1} + (1 − α) I_t takes the sign of I_t whatever the history, far
    from any threshold (≤ 2 here). The recurrent weights are zero but still counted."""
    layer = evsnn.ALIF(3, 3, recurrent=True, tau_mem=1.0, tau_adapt=10.0, tau_init="constant")
    with torch.no_grad():
        layer.weight_ih.copy_(1000.0 * torch.eye(3))
        layer.bias_ih.fill_(-500.0)
        layer.weight_hh.zero_()
        layer.bias_hh.zero_()
    return layer


def test_profile_matches_hand_computation_on_known_spikes():
    layer = _copy_alif()
    with torch.no_grad():
        spikes, _ = layer(KNOWN)
    assert torch.equal(spikes, KNOWN), "premise: the layer copies its input spikes"
    prof = metrics.profile(layer, KNOWN)
    (p,) = prof.layers
    assert p.kind == "ALIF" and p.name == "ALIF"
    # Events per step: 1, 2, 0, 3 of 3 units.
    assert p.event_fraction_per_step == pytest.approx([1 / 3, 2 / 3, 0.0, 1.0])
    assert p.event_fraction == pytest.approx(0.5)
    # Dense: T·B·H·(I + H) = 4·1·3·(3 + 3).
    assert p.dense_macs == 72
    # Input: 6 input spikes × 3 rows = 18; recurrent: previous spikes (0 + 1 + 2 + 0) × 3 rows = 9.
    assert p.input_event_ops == 18
    assert p.event_ops == 27
    assert p.ops_saved_fraction == pytest.approx(1 - 27 / 72)
    assert p.input_binary and p.events_binary
    # 45 nm energies: 72 MACs × 4.6 pJ; 27 ACs × 0.9 pJ (binary input and binary spikes).
    assert p.dense_energy_pj == pytest.approx(331.2)
    assert p.event_energy_pj == pytest.approx(24.3)
    assert p.energy_ratio == pytest.approx(331.2 / 24.3)
    assert p.backward_sparsity is None  # no backward requested
    assert p.input_event_fraction == pytest.approx(0.5)
    assert prof.dense_macs == 72 and prof.event_ops == 27
    assert prof.input_shape == (4, 1, 3)


def test_profile_graded_input_costs_macs_and_custom_energies():
    layer = _copy_alif()
    graded = KNOWN * 2.0  # nonzero pattern unchanged, values no longer binary
    prof = metrics.profile(layer, graded, energy={"mac": 2.0, "ac": 0.5}, energy_source="made up")
    (p,) = prof.layers
    assert not p.input_binary
    with torch.no_grad():
        spikes, _ = layer(graded)
    # 18 input ops are MACs (2.0); the recurrent ops (previous spikes × 3 rows) ACs (0.5).
    rec_ops = int(spikes[:-1].sum()) * 3
    assert p.input_event_ops == 18 and p.event_ops == 18 + rec_ops
    assert p.event_energy_pj == pytest.approx(18 * 2.0 + rec_ops * 0.5)
    assert p.dense_energy_pj == pytest.approx(144.0)
    assert prof.energy_source == "made up"


def test_profile_two_layers_alif_into_egru():
    torch.manual_seed(0)
    hidden = 5

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.alif = evsnn.ALIF(3, 6)
            self.egru = evsnn.EGRU(6, hidden, threshold_init="constant", threshold=0.05)

        def forward(self, x):
            s, _ = self.alif(x)
            y, _ = self.egru(s)
            return y, s

    net = Net()
    x = (torch.rand(12, 2, 3) < 0.6).float() * 4.0
    prof = metrics.profile(net, x)
    with torch.no_grad():
        y, s = net(x)
    assert [p.name for p in prof.layers] == ["alif", "egru"]
    pe = prof["egru"]
    rows = 3 * hidden
    input_ops = int((s != 0).sum()) * rows
    rec_ops = int((y[:-1] != 0).sum()) * rows
    assert pe.dense_macs == 12 * 2 * rows * (6 + hidden)
    assert pe.input_event_ops == input_ops
    assert pe.event_ops == input_ops + rec_ops
    # The EGRU reads binary spikes (ACs) and its own graded events (MACs).
    assert pe.input_binary and not pe.events_binary
    assert pe.event_energy_pj == pytest.approx(input_ops * 0.9 + rec_ops * 4.6)
    assert pe.event_fraction == pytest.approx(float((y != 0).float().mean()))
    assert prof.event_ops == prof["alif"].event_ops + pe.event_ops
    with pytest.raises(KeyError, match="no layer 'readout'"):
        prof["readout"]


def test_profile_delta_layer_counts_every_op_as_mac():
    torch.manual_seed(0)
    layer = evsnn.DeltaLSTM(3, 4, theta_x=0.1, theta_h=0.05)
    x = torch.randn(10, 2, 3)
    prof = metrics.profile(layer, x)
    rec = metrics.reference_traces(layer, x)
    (p,) = prof.layers
    rows = 4 * 4
    expected_ops = (int((rec.trace.delta_x != 0).sum()) + int((rec.trace.delta_h != 0).sum())) * rows
    assert p.event_ops == expected_ops
    assert p.dense_macs == 10 * 2 * rows * (3 + 4)
    assert p.input_event_ops is None
    assert p.event_energy_pj == pytest.approx(expected_ops * 4.6)


def test_profile_backward_reports_sparsity_and_fills_grads():
    torch.manual_seed(0)
    layer = evsnn.EGRU(3, 6, threshold_init="constant", threshold=0.1)
    x = torch.randn(10, 2, 3)
    prof = metrics.profile(layer, x, backward=True, loss_fn=lambda out: out[0].pow(2).sum())
    (p,) = prof.layers
    assert prof.backward_ms is not None and prof.backward_ms >= 0
    assert layer.weight_hh.grad is not None and layer.weight_hh.grad.abs().sum() > 0
    # Independent truth: no event and outside the triangle's support ε = 0.3 around θ.
    rec = metrics.reference_traces(layer, x)
    c, theta = rec.trace.c_pre.detach(), layer.threshold.detach()
    expected = ((c <= theta) & ((c - theta).abs() >= 0.3)).float().mean()
    assert p.backward_sparsity == pytest.approx(float(expected))


def test_profile_egru_cell_splits_input_and_recurrent_events_as_the_layer_does():
    # EGRUCell carries its family record like EGRU: binary input events select weight columns
    # (accumulates), the graded recurrent events are multiply-accumulates.
    cell = evsnn.EGRUCell(8, 16)

    class Steps(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.cell = cell

        def forward(self, x):
            h = None
            for t in range(x.shape[0]):
                h = self.cell(x[t], h)
            return h

    x = (torch.rand(5, 2, 8) > 0.7).float()
    prof = metrics.profile(Steps(), x)
    (row,) = prof.layers
    assert row.input_event_ops == int((x != 0).sum()) * 3 * 16
    energy = prof.energy_pj_per_op
    expected = row.input_event_ops * energy["ac"] + (row.event_ops - row.input_event_ops) * energy["mac"]
    assert row.event_energy_pj == pytest.approx(expected)


def test_profile_layer_called_twice_gets_two_rows():
    layer = _copy_alif()

    class Twice(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.alif = layer

        def forward(self, x):
            return self.alif(self.alif(x)[0])[0]

    prof = metrics.profile(Twice(), KNOWN)
    assert [p.name for p in prof.layers] == ["alif#1", "alif#2"]
    # The second call sees the same spikes (the layer copies them): identical counts.
    assert prof.layers[0].event_ops == prof.layers[1].event_ops == 27


def test_profile_table_and_json():
    prof = metrics.profile(_copy_alif(), KNOWN)
    text = prof.table()
    assert str(prof) == text
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["layer", "kind", "events/step"]
    assert any(line.startswith("ALIF") and "72" in line and "27" in line for line in lines)
    assert any(line.startswith("total") for line in lines)
    assert "MAC 4.6 pJ" in text and "AC 0.9 pJ" in text
    data = json.loads(prof.to_json())
    assert data["layers"][0]["dense_macs"] == 72 and data["layers"][0]["event_ops"] == 27
    assert data["totals"]["event_energy_pj"] == pytest.approx(24.3)
    assert data["energy_pj_per_op"] == {"mac": 4.6, "ac": 0.9}
    assert "Horowitz" in data["energy_source"] and "45 nm" in data["energy_source"]


def test_profile_rejects_bad_input():
    with pytest.raises(ValueError, match="no layer that records last_stats.*and no nn.Linear or nn.Conv"):
        metrics.profile(torch.nn.ReLU(), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="record_stats=True"):
        metrics.profile(evsnn.ALIF(3, 3, record_stats=False), KNOWN)
    with pytest.raises(ValueError, match="exactly the keys 'mac' and 'ac'"):
        metrics.profile(_copy_alif(), KNOWN, energy={"mac": 1.0})
    with pytest.raises(ValueError, match=r"energy\['ac'\] must be a number >= 0"):
        metrics.profile(_copy_alif(), KNOWN, energy={"mac": 1.0, "ac": -1.0})
    with pytest.raises(TypeError, match="torch.Tensor input"):
        metrics.profile(_copy_alif(), KNOWN.tolist())
    with pytest.raises(TypeError, match="expects an nn.Module"):
        metrics.profile(lambda x: x, KNOWN)


@pytest.mark.parametrize("batch_first", [False, True])
def test_reference_traces_reproduce_each_layer(batch_first):
    torch.manual_seed(0)
    x_tf = torch.randn(9, 2, 3)
    x = x_tf.transpose(0, 1) if batch_first else x_tf
    layers = [
        (evsnn.ALIF(3, 4, batch_first=batch_first), ALIFTrace),
        (evsnn.EGRU(3, 4, batch_first=batch_first, threshold_init="constant", threshold=0.05), EGRUTrace),
        (evsnn.DeltaGRU(3, 4, batch_first=batch_first, theta_x=0.1, theta_h=0.05), DeltaTrace),
        (evsnn.DeltaLSTM(3, 4, batch_first=batch_first, theta_x=0.1, theta_h=0.05), DeltaTrace),
    ]
    for layer, trace_type in layers:
        with torch.no_grad():
            out, final = layer(x)
            rec = metrics.reference_traces(layer, x)
        out_tf = out.transpose(0, 1) if batch_first else out
        assert isinstance(rec.trace, trace_type)
        torch.testing.assert_close(rec.output, out_tf)
        # the replay keeps the scan's [B, ...] state; the layer returns nn.GRU's [1, B, ...] layout
        # (the delta layers' without the accumulators m, recomputed from the memories when passed back)
        compared = [f for f in rec.final_state._fields if getattr(final, f, None) is not None]
        assert set(rec.final_state._fields) - set(compared) <= {"m"}
        for f in compared:
            torch.testing.assert_close(getattr(rec.final_state, f), getattr(final, f)[0])
        rec2 = metrics.reference_traces(layer, x[:3] if not batch_first else x[:, :3], final)
        rec3 = metrics.reference_traces(layer, x[:3] if not batch_first else x[:, :3], rec.final_state)
        torch.testing.assert_close(rec2.output, rec3.output)
        if trace_type is DeltaTrace:
            assert rec.events is rec.trace.delta_h and rec.threshold == layer.theta_h
        else:
            torch.testing.assert_close(rec.events, out_tf)


def test_reference_traces_alif_trace_is_the_threshold_dynamics():
    layer = _copy_alif()
    rec = metrics.reference_traces(layer, KNOWN)
    # B_t = b0 + β·b_t with b_t = ρ b_{t−1} + (1 − ρ) s_{t−1}, b_{-1} = b0 (SPEC §2), by hand.
    rho = torch.exp(torch.tensor(-1.0 / 10.0))
    b = torch.full((3,), 0.01)
    s_prev = torch.zeros(3)
    for t in range(4):
        b = rho * b + (1 - rho) * s_prev
        torch.testing.assert_close(rec.trace.threshold[t, 0], 0.01 + 1.8 * b)
        s_prev = KNOWN[t, 0]


def test_reference_traces_validation():
    with pytest.raises(TypeError, match="ALIF, EGRU, DeltaGRU or DeltaLSTM"):
        metrics.reference_traces(torch.nn.GRU(3, 3), torch.zeros(2, 1, 3))
    with pytest.raises(ValueError, match=r"expects input \[T, B, 3\]"):
        metrics.reference_traces(evsnn.EGRU(3, 3), torch.zeros(2, 3))
    layer = evsnn.EGRU(3, 3, zoneout=0.1)
    layer.train()
    with pytest.raises(ValueError, match="call layer.eval"):
        metrics.reference_traces(layer, torch.zeros(2, 1, 3))
    layer.eval()
    assert metrics.reference_traces(layer, torch.zeros(2, 1, 3)).output.shape == (2, 1, 3)


def test_profile_counts_snntorch_adapters_and_dense_layers_by_hand():
    """A tutorial-style step loop: Linear(3→4) → ALIF adapter → Linear(4→2) → EGRU adapter, two
    steps, batch 2, beside a snn.Leaky and a ReLU that profile does not count (named in skipped).
    Every count below is computed by hand from the known spikes and events."""
    import snntorch as snn  # a [dev] dependency: its absence is a failure, not a skip

    from evsnn.interop import snntorch as esnn

    torch.manual_seed(0)

    class StepNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = torch.nn.Linear(3, 4)
            self.lif = esnn.ALIF(beta=0.5, threshold=1.0, adapt_strength=0.0, linear_features=4)
            self.fc2 = torch.nn.Linear(4, 2)
            self.egru = esnn.EGRU(2, 5, threshold=0.05, threshold_init="constant")
            self.leaky = snn.Leaky(beta=0.9)
            self.act = torch.nn.ReLU()

        def forward(self, x):
            mem = self.lif.init_leaky()
            state = self.egru.init_leaky()
            outs = []
            for t in range(x.shape[0]):
                spk, mem = self.lif(self.fc1(x[t]), mem)
                y, state = self.egru(self.act(self.fc2(spk)), state)
                outs.append(y)
            return torch.stack(outs)

    net = StepNet()
    with torch.no_grad():
        net.fc1.weight.copy_(torch.tensor([[2.0, 0, 0], [0, 2.0, 0], [0, 0, 2.0], [0, 0, 0]]))
        net.fc1.bias.zero_()
        net.lif.recurrent.weight.zero_()
        net.lif.recurrent.bias.zero_()
        net.fc2.weight.fill_(1.0)
        net.fc2.bias.zero_()
    x = torch.tensor([[[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]], [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]])  # [T=2, B=2, 3]
    prof = metrics.profile(net, x, warmup=False)
    assert [p.name for p in prof.layers] == ["fc1", "lif", "fc2", "egru"]
    assert prof.skipped == {"leaky": "Leaky", "act": "ReLU"}
    # fc1: 2 steps · 2 rows · 3 · 4 dense; nonzero inputs 2+1, then 0+3 → 6 · 4 fan-out.
    assert prof["fc1"].dense_macs == 2 * 2 * 3 * 4 and prof["fc1"].event_ops == 6 * 4
    assert prof["fc1"].input_binary and prof["fc1"].neurons == 0
    # lif: currents 2·x: spikes where x = 1 (mem = 2 > 1): step 1 → 3 spikes, step 2 → 3 spikes of 8.
    assert prof["lif"].event_fraction_per_step == [3 / 8, 3 / 8] and prof["lif"].neurons == 4
    # Its 4×4 recurrence: dense 2 steps · 2 · 16; driven by the previous spikes: none, then 3 · 4 rows.
    assert prof["lif"].dense_macs == 2 * 2 * 16 and prof["lif"].event_ops == 3 * 4
    assert prof["lif"].events_binary and prof["lif"].event_energy_pj == pytest.approx(12 * 0.9)
    # fc2 sees the spikes: 6 nonzero, 2 outputs each; binary input → accumulates.
    assert prof["fc2"].dense_macs == 2 * 2 * 4 * 2 and prof["fc2"].event_ops == 6 * 2
    assert prof["fc2"].event_energy_pj == pytest.approx(12 * 0.9)
    # egru (I=2, H=5, 3 gates): dense 2 · 2 · 15 · (2 + 5); input events: nonzero ReLU outputs.
    with torch.no_grad():
        spikes = []
        mem = net.lif.init_leaky()
        for t in range(2):
            spk, mem = net.lif(net.fc1(x[t]), mem)
            spikes.append(spk)
        relu = [torch.relu(net.fc2(s)) for s in spikes]
        ys = net(x)
    input_events = sum(int((r != 0).sum()) for r in relu)
    recurrent_events = int((ys[0] != 0).sum())  # step 1's events drive step 2's W_hh
    assert prof["egru"].dense_macs == 2 * 2 * 15 * 7
    assert prof["egru"].event_ops == (input_events + recurrent_events) * 15
    assert prof["egru"].input_event_ops == input_events * 15 and prof["egru"].neurons == 5
    assert prof["egru"].event_fraction_per_step == pytest.approx([int((y != 0).sum()) / 10 for y in ys])
    assert net.lif.record_stats is False  # profile asked only for its own pass
