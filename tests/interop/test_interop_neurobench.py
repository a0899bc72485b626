"""A NeuroBench Benchmark over an evsnn network (ALIF -> EGRU -> DeltaGRU -> Linear) reports the
events inside the evsnn layers: checked against counts taken directly from the layers' outputs,
hand formulas for dense MACs and membrane updates, and evsnn.metrics.profile on the whole data."""

from __future__ import annotations

import pytest
import torch
from neurobench.benchmarks import Benchmark
from neurobench.metrics.workload import ClassificationAccuracy
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import evsnn
from evsnn.interop.neurobench import ActivationSparsity, EvsnnModel, MembraneUpdates, SynapticOperations
from evsnn.metrics import profile

N, T, F = 10, 12, 5
H_ALIF, H_EGRU, H_DELTA = 16, 12, 8


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.alif = evsnn.ALIF(F, H_ALIF, batch_first=True, backend="torch")
        self.egru = evsnn.EGRU(H_ALIF, H_EGRU, batch_first=True, backend="torch")
        self.delta = evsnn.DeltaGRU(H_EGRU, H_DELTA, theta_x=0.05, theta_h=0.05, batch_first=True, backend="torch")
        self.out = nn.Linear(H_DELTA, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, _ = self.alif(x)
        y, _ = self.egru(s)
        h, _ = self.delta(y)
        return self.out(h[:, -1])


def test_benchmark_reports_evsnn_events(single_thread) -> None:
    net = Net().eval()
    x = 3.0 * torch.randn(N, T, F)
    labels = torch.randint(0, 3, (N,))
    loader = DataLoader(TensorDataset(x, labels), batch_size=4)  # batches of 4, 4, 2
    metrics = [ClassificationAccuracy, ActivationSparsity, SynapticOperations, MembraneUpdates]
    results = Benchmark(EvsnnModel(net), loader, [], [lambda p: p.argmax(-1)], [[], metrics]).run(quiet=True)

    with torch.no_grad():
        logits = net(x)
        s, _ = net.alif(x)
        y, _ = net.egru(s)
        net.delta(y)
        delta_events = float(net.delta.last_stats.event_fraction.float().mean()) * T * N * H_DELTA
    assert results["ClassificationAccuracy"] == pytest.approx((logits.argmax(-1) == labels).float().mean().item())

    # Events: spikes and EGRU events counted on the outputs themselves, nonzero hidden deltas.
    events = int(torch.count_nonzero(s)) + int(torch.count_nonzero(y)) + delta_events
    slots = T * N * (H_ALIF + H_EGRU + H_DELTA)
    assert 0 < events < slots
    assert results["ActivationSparsity"] == pytest.approx(1.0 - events / slots, rel=1e-6)

    assert results["MembraneUpdates"] == T * (H_ALIF + H_EGRU + H_DELTA)

    ops = results["SynapticOperations"]
    dense = T * (H_ALIF * (F + H_ALIF) + 3 * H_EGRU * (H_ALIF + H_EGRU) + 3 * H_DELTA * (H_EGRU + H_DELTA))
    dense += H_DELTA * 3  # the nn.Linear readout, once per sample
    assert ops["Dense"] == pytest.approx(dense)
    # Binary drivers (ACs): the spikes into the EGRU (3·H rows each) and ALIF's recurrent spikes
    # (H rows each, one step late: the last step's spikes drive nothing inside the layer).
    spikes_in = int(torch.count_nonzero(s))
    alif_recurrent = int(torch.count_nonzero(s[:, :-1])) * H_ALIF
    assert ops["Effective_ACs"] == pytest.approx((spikes_in * 3 * H_EGRU + alif_recurrent) / N)
    # Everything together is what evsnn.metrics.profile counts on the whole data in one call.
    whole = profile(net, x, warmup=False)
    assert [row.name for row in whole.layers] == ["alif", "egru", "delta", "out"] and not whole.skipped
    total = sum(row.event_ops for row in whole.layers) / N
    assert ops["Effective_ACs"] + ops["Effective_MACs"] == pytest.approx(total)
    # The readout's graded inputs: every nonzero h of the last step times its 3 weights (MACs).
    assert whole["out"].event_ops == int(torch.count_nonzero(net.delta(y)[0][:, -1])) * 3
    assert ops["Effective_MACs"] > 0


def test_metrics_refuse_a_plain_neurobench_model() -> None:
    from neurobench.models import TorchModel

    model = TorchModel(Net())
    with pytest.raises(TypeError, match="EvsnnModel"):
        SynapticOperations()(model, torch.zeros(1), (torch.zeros(1, T, F), torch.zeros(1)))


def _load_example():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "neurobench_mackey_glass.py"
    spec = importlib.util.spec_from_file_location("neurobench_mackey_glass", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Persistence(nn.Module):
    """Autonomous persistence forecast: every step repeats the first (last known) value."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1, dtype=torch.float64))  # a parameter for Footprint to count

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x[:, :1].expand_as(x)


def test_mackey_glass_example_protocol_on_a_tiny_series(single_thread, tmp_path) -> None:
    """The example's data preparation and Benchmark call on a 301-point series (2 + 2 Lyapunov
    times of 75 points, plus one): splits against the series itself, sMAPE of a persistence
    forecast and of the example's DeltaGRU forecaster against sMAPE computed by hand."""
    import copy

    import numpy as np

    ex = _load_example()
    t = np.arange(400, dtype=np.float64)
    series = 0.9 + 0.3 * np.sin(0.21 * t) + 0.1 * np.cos(0.37 * t)  # positive, like Mackey-Glass
    np.save(tmp_path / "tiny.npy", series)
    mg = ex.mackey_glass(str(tmp_path / "tiny.npy"), traintime=2.0, testtime=2.0)
    x, y, test = ex.splits(mg)
    s = torch.from_numpy(series)
    assert x.shape == (1, 150, 1) and y.shape == (1, 150, 1)
    assert torch.equal(x[0, :, 0], s[:150]) and torch.equal(y[0, :, 0], s[1:151])
    truth = s[151:301]  # the 150 forecast targets; the first test input is s[150]

    def smape(pred: torch.Tensor) -> float:
        return float(200 * ((pred - truth).abs() / (pred.abs() + truth.abs())).mean())

    r = ex.benchmark(_Persistence(), test, evsnn_metrics=False)
    assert r["SMAPE"] == pytest.approx(smape(s[150].expand(150)), rel=1e-9)
    assert r["Footprint"] == 8  # one float64 parameter, no buffers

    window, hidden = 8, 6
    net = ex.Forecaster(window, hidden, theta=0.05, mean=0.9, std=0.3).eval()
    with torch.no_grad():
        # The autonomous path continues the teacher-forced one: its first step (a true value)
        # gives the prediction that the whole teacher-forced sequence gives at that step.
        net.mode = "teacher"
        whole = net(x)[0, -1, 0]
        net(x[:, :-1])
        net.mode = "autonomous"
        assert torch.allclose(net(x[:, -1:])[0, 0, 0], whole, rtol=0, atol=1e-12)
        net.mode = "teacher"
        net(x)
    net.mode = "autonomous"
    with torch.no_grad():
        preds = copy.deepcopy(net)(s[150:300].reshape(1, 150, 1))[0, :, 0]
    r = ex.benchmark(net, test)
    assert r["SMAPE"] == pytest.approx(smape(preds), rel=1e-9)
    assert r["MembraneUpdates"] == 150 * hidden  # one forecast run of 150 one-step calls
    # The DeltaGRU's three gates and the Linear readout (hidden → 1) at each of the 150 steps.
    assert r["SynapticOperations"]["Dense"] == pytest.approx(150 * (3 * hidden * (window + hidden) + hidden))
    assert 0 < r["SynapticOperations"]["Effective_MACs"] < r["SynapticOperations"]["Dense"]


@pytest.mark.parametrize(("cell", "residual"), [("gru", False), ("gru", True), ("lstm", True)])
def test_mackey_glass_rollout_training_equals_a_hand_unrolled_loop(single_thread, cell, residual) -> None:
    """The example's batched free-running rollout (the loss of its rollout training) against one
    start at a time, unrolled by hand with single-step calls of the same layer: the forecasts of
    every row and the gradient of their squared error agree. Θ > 0, so the delta memories are
    carried through the warm-up and the fed-back forecasts."""
    ex = _load_example()
    window, hidden, warmup, horizon = 6, 5, 7, 9
    t = torch.arange(60, dtype=torch.float64)
    x = (0.9 + 0.3 * torch.sin(0.21 * t) + 0.1 * torch.cos(0.37 * t)).reshape(1, 60, 1)
    starts = torch.tensor([0, 3, 17, 60 - warmup - horizon - 1])
    torch.manual_seed(0)
    net = ex.Forecaster(window, hidden, theta=0.05, mean=0.9, std=0.3, cell=cell, residual=residual).train()
    teacher, free = net.rollout(x, starts, warmup, horizon)
    assert teacher.shape == (4, warmup) and free.shape == (4, horizon)
    grads = torch.autograd.grad((free**2).sum() + (teacher**2).sum(), list(net.parameters()))

    z = (x[0, :, 0] - 0.9) / 0.3
    padded = torch.cat([z.new_zeros(window - 1), z])
    hand_teacher, hand_free = [], []
    for s in starts.tolist():
        state, row_t, row_f = None, [], []
        for k in range(warmup):  # true delay lines ending at z[s + k]
            h, state = net.rnn(padded[s + k : s + k + window].reshape(1, 1, window), state)
            row_t.append(net.readout(h[0, 0])[0] + (padded[s + k + window - 1] if residual else 0))
        line, value = padded[s + warmup - 1 : s + warmup - 1 + window], row_t[-1]
        for _ in range(horizon):
            line = torch.cat([line[1:], value.reshape(1)])
            h, state = net.rnn(line.reshape(1, 1, window), state)
            value = net.readout(h[0, 0])[0] + (line[-1] if residual else 0)
            row_f.append(value)
        hand_teacher.append(torch.stack(row_t))
        hand_free.append(torch.stack(row_f))
    hand_t = torch.stack(hand_teacher) * 0.3 + 0.9
    hand_f = torch.stack(hand_free) * 0.3 + 0.9
    torch.testing.assert_close(teacher, hand_t, rtol=0, atol=1e-12)
    torch.testing.assert_close(free, hand_f, rtol=0, atol=1e-12)
    hand_grads = torch.autograd.grad((hand_f**2).sum() + (hand_t**2).sum(), list(net.parameters()))
    for g, hg in zip(grads, hand_grads, strict=True):
        torch.testing.assert_close(g, hg, rtol=1e-10, atol=1e-12)
    # The training loss: both parts against the series' next values, x[s+1] ... x[s+warmup+horizon].
    y = torch.cat([x[:, 1:], x[:, -1:] + 1.0], dim=1)  # y[t] = x[t+1]; the last target is never used
    nxt = torch.stack([x[0, s + 1 : s + 1 + warmup + horizon, 0] for s in starts.tolist()])
    want = ((hand_f - nxt[:, warmup:]) ** 2).mean() + ((hand_t - nxt[:, :warmup]) ** 2).mean()
    torch.testing.assert_close(ex.rollout_loss(net, x, y, starts, warmup, horizon), want, rtol=1e-12, atol=0)
    # The forecasts are fed back: the free-running rows differ from the teacher-forced forecasts
    # of the same points (delay lines of true values).
    forced = net.rollout(x, starts[:-1], warmup + horizon, 1)[0][:, warmup:]
    assert (free[:-1] - forced).abs().max() > 1e-3
    with pytest.raises(ValueError, match=r"starts must lie in \[0, 43\]"):
        net.rollout(x, torch.tensor([44]), warmup, horizon)


def test_benchmark_counts_snntorch_adapter_neurons_and_linear_layers(single_thread) -> None:
    """NeuroBench's Benchmark over a snntorch-style step loop (Linear → evsnn ALIF adapter →
    Linear → snn.Leaky): the adapter's neurons and both Linears are counted, by hand from the
    spikes; the snn.Leaky is named as not counted."""
    import snntorch as snn  # a [dev] dependency: its absence is a failure, not a skip

    from evsnn.interop import snntorch as esnn

    class StepNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(F, H_ALIF)
            self.lif1 = esnn.ALIF(beta=0.9)
            self.fc2 = nn.Linear(H_ALIF, 3)
            self.lif2 = snn.Leaky(beta=0.9)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            mem1, mem2 = self.lif1.init_leaky(), self.lif2.init_leaky()
            spikes, out = [], []
            for t in range(x.shape[1]):
                spk1, mem1 = self.lif1(self.fc1(x[:, t]), mem1)
                spk2, mem2 = self.lif2(self.fc2(spk1), mem2)
                spikes.append(spk1)
                out.append(mem2)
            self.spikes = torch.stack(spikes)
            return torch.stack(out).sum(0)

    torch.manual_seed(0)
    net = StepNet().eval()
    x = 3.0 * torch.randn(N, T, F)
    labels = torch.randint(0, 3, (N,))
    model = EvsnnModel(net)
    metrics = [ActivationSparsity, SynapticOperations, MembraneUpdates]
    results = Benchmark(model, DataLoader(TensorDataset(x, labels), batch_size=N), [], [], [[], metrics]).run(
        quiet=True
    )
    assert model.last_profile.skipped == {"net.lif2": "Leaky"}
    spikes = int(torch.count_nonzero(net.spikes))
    assert 0 < spikes < T * N * H_ALIF
    assert results["ActivationSparsity"] == pytest.approx(1.0 - spikes / (T * N * H_ALIF), rel=1e-6)
    assert results["MembraneUpdates"] == T * H_ALIF
    ops = results["SynapticOperations"]
    assert ops["Dense"] == pytest.approx(T * (F * H_ALIF + H_ALIF * 3))
    assert ops["Effective_ACs"] == pytest.approx(spikes * 3 / N)  # the spikes into fc2
    assert ops["Effective_MACs"] == pytest.approx(int(torch.count_nonzero(x)) * H_ALIF / N)  # graded input
