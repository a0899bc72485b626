"""NeuroBench's example scripts as their authors wrote them (a trained snntorch ``nn.Sequential``
wrapped in a model, ``Benchmark(model, test_set_loader, preprocessors, postprocessors,
[static_metrics, workload_metrics])``, ``choose_max_count``), run once on the snn.Leaky network
with NeuroBench's own ``SNNTorchModel`` and metrics, and once on the same network with evsnn's
ALIF in place of snn.Leaky, through :class:`evsnn.interop.neurobench.EvsnnModel` and its metrics.
With adaptation off and snn.Leaky's surrogate the swap computes snn.Leaky, so both benchmarks
must report the same accuracy, activation sparsity and synaptic operations."""

from __future__ import annotations

import functools

import pytest
import snntorch as snn
import snntorch.functional as SF
import torch
from neurobench.benchmarks import Benchmark
from neurobench.metrics.static import Footprint
from neurobench.metrics.workload import ActivationSparsity, ClassificationAccuracy, SynapticOperations
from neurobench.models import SNNTorchModel
from neurobench.processors.postprocessors import ChooseMaxCount
from snntorch import spikegen, surrogate, utils
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from evsnn.data import load_digits_sequences
from evsnn.interop import neurobench as enb
from evsnn.interop import snntorch as esnn

num_steps, beta = 10, 0.9


def build(Leaky) -> nn.Sequential:
    spike_grad = surrogate.atan()
    return nn.Sequential(
        nn.Linear(64, 64),
        Leaky(beta=beta, spike_grad=spike_grad, init_hidden=True),
        nn.Linear(64, 10),
        Leaky(beta=beta, spike_grad=spike_grad, init_hidden=True, output=True),
    )


class StepLoop(nn.Module):
    """What ``SNNTorchModel`` does with a snntorch ``nn.Sequential``: reset, one call per step of
    a ``[batch, time, ...]`` batch, spikes stacked batch first. EvsnnModel takes a whole-sequence
    network, so a step-wise one is wrapped in this loop."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, data: torch.Tensor) -> torch.Tensor:
        utils.reset(self.net)
        spikes = [self.net(data[:, step])[0] for step in range(data.shape[1])]
        return torch.stack(spikes).transpose(0, 1)


def trained(Leaky) -> nn.Sequential:
    """The tutorial-style training the example scripts load the result of (one epoch)."""
    split = load_digits_sequences("pixels")
    x, y = split.train.tensors
    torch.manual_seed(0)
    net = build(Leaky)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    loss_fn = SF.ce_rate_loss()
    perm = torch.randperm(len(x))
    for i in range(0, len(perm), 128):
        idx = perm[i : i + 128]
        utils.reset(net)
        data = spikegen.rate(x[idx].flatten(1), num_steps=num_steps)
        spk = torch.stack([net(data[t])[0] for t in range(num_steps)])
        loss = loss_fn(spk, y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net.eval()


def test_benchmark_of_the_swapped_network_reports_what_neurobench_reports(single_thread):
    split = load_digits_sequences("pixels")
    x_test, y_test = split.test.tensors
    torch.manual_seed(1)
    spikes = spikegen.rate(x_test[:96].flatten(1), num_steps=num_steps).transpose(0, 1)  # [B, T, 64]
    test_set_loader = DataLoader(TensorDataset(spikes, y_test[:96]), batch_size=32)
    preprocessors = []
    postprocessors = [ChooseMaxCount()]

    # The original script: snntorch network, NeuroBench's own model wrapper and metrics.
    model = SNNTorchModel(trained(snn.Leaky))
    static_metrics = [Footprint]
    workload_metrics = [ClassificationAccuracy, ActivationSparsity, SynapticOperations]
    benchmark = Benchmark(model, test_set_loader, preprocessors, postprocessors, [static_metrics, workload_metrics])
    original = benchmark.run(quiet=True)

    # The swap: the class, and evsnn's model wrapper and metrics that see the evsnn neurons.
    alif = functools.partial(esnn.ALIF, adapt_strength=0.0)
    model = enb.EvsnnModel(StepLoop(trained(alif)))
    workload_metrics = [ClassificationAccuracy, enb.ActivationSparsity, enb.SynapticOperations]
    benchmark = Benchmark(model, test_set_loader, preprocessors, postprocessors, [static_metrics, workload_metrics])
    swapped = benchmark.run(quiet=True)

    assert original["ClassificationAccuracy"] > 0.3  # trained well above chance (0.1)
    assert swapped["ClassificationAccuracy"] == pytest.approx(original["ClassificationAccuracy"])
    assert 0 < original["ActivationSparsity"] < 1
    assert swapped["ActivationSparsity"] == pytest.approx(original["ActivationSparsity"], rel=1e-6)
    assert swapped["SynapticOperations"]["Dense"] == pytest.approx(original["SynapticOperations"]["Dense"])
    for kind in ("Effective_ACs", "Effective_MACs"):
        assert swapped["SynapticOperations"][kind] == pytest.approx(original["SynapticOperations"][kind]), kind
    # The ALIF's β and adaptation buffers are its own parameters beyond snn.Leaky's.
    assert swapped["Footprint"] > original["Footprint"]
