"""NeuroBench over evsnn models: workload metrics that see the events inside evsnn layers.

NeuroBench's own hooks only see ``nn.Linear``/``nn.RNNBase``-like modules and snntorch neurons,
so the recurrent events inside an ALIF, EGRU or delta layer are invisible to its
``SynapticOperations``, ``ActivationSparsity`` and ``MembraneUpdates``. Wrap the network in
`EvsnnModel` and use the metrics of this module instead: each batch is run once through
[`evsnn.metrics.profile`][evsnn.metrics.profile], and the metrics are sums over its per-layer rows, so a NeuroBench
``Benchmark`` reports the same counts as ``profile`` (recurrent events included).

```python
from neurobench.benchmarks import Benchmark
from neurobench.metrics.workload import ClassificationAccuracy
from evsnn.interop.neurobench import ActivationSparsity, EvsnnModel, MembraneUpdates, SynapticOperations

bench = Benchmark(EvsnnModel(net), loader, [], [], [[], [ClassificationAccuracy, ActivationSparsity,
                                                          SynapticOperations, MembraneUpdates]])
results = bench.run()
```

Counted are what ``profile`` counts: the evsnn layers, the [`evsnn.interop.snntorch`][evsnn.interop.snntorch] neurons
(both record ``last_stats``) and the dense ``nn.Linear``/``nn.Conv`` layers outside them (their
synaptic operations: ``Dense`` and, driven by nonzero inputs, ``Effective_ACs`` for spikes or
``Effective_MACs``). Modules that none of these describe (a ``snn.Leaky``, pooling, ...) are named
in ``model.last_profile.skipped``; their operations are NeuroBench's to count with its own metrics.
"""

from __future__ import annotations

from typing import Any

import torch
from neurobench.metrics.abstract.workload_metric import AccumulatedMetric
from neurobench.models import TorchModel
from torch import Tensor, nn

from ..metrics import Profile, profile


class _KeepOutput(nn.Module):
    """Runs ``net`` and keeps its output, so that one profiled call also gives the predictions."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.output: Any = None

    def forward(self, x: Tensor) -> Any:
        self.output = self.net(x)
        return self.output


class EvsnnModel(TorchModel):
    """A NeuroBench model over an ``nn.Module`` that contains evsnn layers.

    Each call runs the network once under [`evsnn.metrics.profile`][evsnn.metrics.profile] (no warm-up call, no
    gradient) and keeps the profile (one row per counted layer, with its ``neurons`` per sample)
    for the metrics of this module.

    Args:
        net: the network; it receives NeuroBench's batch as is (``[B, T, ...]``: build the
            evsnn layers with ``batch_first=True`` or transpose inside ``net``).
    """

    def __init__(self, net: nn.Module) -> None:
        if not isinstance(net, nn.Module):
            raise TypeError(f"EvsnnModel expects an nn.Module, got {type(net).__name__}")
        super().__init__(net)
        self.last_profile: Profile | None = None
        self.last_units: list[int] = []
        self.last_batch_size = 0

    def __call__(self, batch: Tensor) -> Any:
        keep = _KeepOutput(self.net)
        with torch.no_grad():
            self.last_profile = profile(keep, batch, warmup=False)
        self.last_units = [row.neurons for row in self.last_profile.layers]
        self.last_batch_size = int(batch.shape[0])
        return keep.output


def _profiled(model: Any, metric: str) -> tuple[Profile, list[int], int]:
    if not isinstance(model, EvsnnModel) or model.last_profile is None:
        raise TypeError(
            f"{metric} needs the network wrapped in evsnn.interop.neurobench.EvsnnModel, got {type(model).__name__}"
        )
    return model.last_profile, model.last_units, model.last_batch_size


class ActivationSparsity(AccumulatedMetric):
    """Fraction of (step, sample, neuron) slots of the evsnn layers without an event (spike,
    EGRU event, nonzero hidden delta), over the whole dataset: ``1 − Σ events / Σ slots``."""

    def __init__(self) -> None:
        super().__init__(requires_hooks=False)
        self.reset()

    def reset(self) -> None:
        self.events = 0.0
        self.slots = 0

    def __call__(self, model: Any, preds: Tensor, data: tuple[Tensor, Tensor]) -> float:
        prof, units, batch = _profiled(model, "ActivationSparsity")
        for row, n in zip(prof.layers, units):  # a dense layer has no neurons, hence no slots
            slots = len(row.event_fraction_per_step) * batch * n
            self.events += row.event_fraction * slots
            self.slots += slots
        return self.compute()

    def compute(self) -> float:
        return 0.0 if self.slots == 0 else 1.0 - self.events / self.slots


class SynapticOperations(AccumulatedMetric):
    """Synaptic operations of the counted layers per sample, as NeuroBench names them:
    ``Effective_ACs`` (operations driven by binary spikes: a spiking input, ALIF's recurrent
    spikes, spikes into an ``nn.Linear``), ``Effective_MACs`` (graded events: EGRU events, deltas,
    non-binary inputs) and ``Dense`` (the multiply-accumulates of the same layers run densely).
    Their sum ``Effective_ACs + Effective_MACs`` is ``profile``'s ``event_ops``."""

    def __init__(self) -> None:
        super().__init__(requires_hooks=False)
        self.reset()

    def reset(self) -> None:
        self.macs = 0
        self.acs = 0
        self.dense = 0
        self.samples = 0

    def __call__(self, model: Any, preds: Tensor, data: tuple[Tensor, Tensor]) -> dict[str, float]:
        prof, _, batch = _profiled(model, "SynapticOperations")
        for row in prof.layers:
            acs = 0
            if row.input_event_ops is not None:
                recurrent = row.event_ops - row.input_event_ops
                acs = (row.input_event_ops if row.input_binary else 0) + (recurrent if row.events_binary else 0)
            self.acs += acs
            self.macs += row.event_ops - acs
            self.dense += row.dense_macs
        self.samples += batch
        return self.compute()

    def compute(self) -> dict[str, float]:
        if self.samples == 0:
            return {"Effective_MACs": 0.0, "Effective_ACs": 0.0, "Dense": 0.0}
        n = self.samples
        return {"Effective_MACs": self.macs / n, "Effective_ACs": self.acs / n, "Dense": self.dense / n}


class MembraneUpdates(AccumulatedMetric):
    """State updates of the evsnn layers per sample: every neuron's membrane (ALIF ``v``, EGRU
    ``c``, delta ``h``) is updated at every step, event or not, so this is ``Σ steps · neurons``."""

    def __init__(self) -> None:
        super().__init__(requires_hooks=False)
        self.reset()

    def reset(self) -> None:
        self.updates = 0
        self.samples = 0

    def __call__(self, model: Any, preds: Tensor, data: tuple[Tensor, Tensor]) -> float:
        prof, units, batch = _profiled(model, "MembraneUpdates")
        for row, n in zip(prof.layers, units):
            self.updates += len(row.event_fraction_per_step) * batch * n
        self.samples += batch
        return self.compute()

    def compute(self) -> float:
        return 0.0 if self.samples == 0 else self.updates / self.samples
