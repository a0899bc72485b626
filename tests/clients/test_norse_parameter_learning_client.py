"""norse's parameter-learning notebook, written as its authors wrote it: a
``norse.torch.SequentialState`` of ``nn.Linear``, ``LIF`` with learnable ``LIFParameters``
(``tau_mem_inv`` and ``tau_syn_inv`` as ``nn.Parameter``), ``nn.Linear`` and a leaky-integrator
readout ``LI``, decoded by the maximum over time and trained with a cross-entropy. In the swap
evsnn's norse ALIF takes the place of ``Linear`` + ``LIF`` (it owns its input weights) with its
time constants learnable; same seed, same synthetic spike patterns, and it must train as well."""

from __future__ import annotations

import norse.torch as norse
import torch
from torch import nn

from evsnn.interop import norse as enorse

T, B, F, HIDDEN, CLASSES = 30, 32, 20, 32, 3


def spike_patterns(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each class fires its own third of the inputs at a higher rate: ``[T, B, F]`` spikes."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, CLASSES, (B,), generator=g)
    rates = torch.full((B, F), 0.05)
    for k in range(CLASSES):
        rates[y == k, k * F // CLASSES : (k + 1) * F // CLASSES] = 0.4
    return (torch.rand(T, B, F, generator=g) < rates).float(), y


def decode(x: torch.Tensor) -> torch.Tensor:
    x, _ = torch.max(x, 0)
    return torch.nn.functional.log_softmax(x, dim=1)


def original_model() -> nn.Module:
    p = norse.LIFParameters(
        tau_mem_inv=nn.Parameter(torch.full((HIDDEN,), 100.0)),
        tau_syn_inv=nn.Parameter(torch.full((HIDDEN,), 200.0)),
        v_th=torch.tensor(0.5),
    )
    return norse.SequentialState(nn.Linear(F, HIDDEN), norse.LIF(p), nn.Linear(HIDDEN, CLASSES), norse.LI())


def swapped_model() -> nn.Module:
    # Its time constants tau_mem and tau_adapt are nn.Parameters, learned like the notebook's
    # LIFParameters; the reference backend keeps the test free of the CPU kernels' compile time.
    alif = enorse.ALIF(F, HIDDEN, backend="torch")
    assert {"tau_mem", "tau_adapt"} <= {name for name, p in alif.named_parameters() if p.requires_grad}
    return norse.SequentialState(alif, nn.Linear(HIDDEN, CLASSES), norse.LI())


def train(model: nn.Module, epochs: int = 40) -> list[float]:
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    batches = [spike_patterns(seed) for seed in range(4)]
    for epoch in range(epochs):
        x, y = batches[epoch % len(batches)]
        out, _ = model(x)
        loss = torch.nn.functional.nll_loss(decode(out), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_parameter_learning_with_evsnn_alif_trains_as_the_original(single_thread):
    torch.manual_seed(0)
    original = train(original_model())
    torch.manual_seed(0)
    swapped = train(swapped_model())
    assert sum(original[-4:]) < 0.8 * sum(original[:4]), original
    assert sum(swapped[-4:]) < 0.8 * sum(swapped[:4]), swapped
    # Measured at seed 0 (last four iterations): 0.48 for the swap against 0.86 for the original.
    assert sum(swapped[-4:]) <= 1.10 * sum(original[-4:]), (swapped[-4:], original[-4:])
