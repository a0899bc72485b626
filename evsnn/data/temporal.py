"""A synthetic SHD-like spike-pattern task that only temporal memory solves.

``n_groups`` groups of ``channels_per_group`` input channels. A class is an ordered pair of
groups ``(a, b)``: group ``a`` bursts in the first half of the sequence, group ``b`` in the
second. Classes come in twins ``(a, b)`` / ``(b, a)``: the same channels fire the same number
of spikes (each burst channel fires exactly ``burst_spikes`` times at random steps inside its
window), only the order differs. Poisson background noise at ``noise_rate`` per channel and
step is added everywhere. A classifier of spike counts is at chance between twins; telling
them apart needs a memory of what came first, across the gap between the two windows.
"""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

__all__ = ["temporal_pattern_task"]


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def temporal_pattern_task(
    n_samples: int = 512,
    *,
    n_classes: int = 4,
    channels_per_group: int = 8,
    steps: int = 60,
    burst_spikes: int = 3,
    gap: int = 10,
    noise_rate: float = 0.01,
    seed: int = 0,
) -> tuple[TensorDataset, list[tuple[int, int]]]:
    """Return ``(dataset of (x [steps, n_groups·channels_per_group], label), class_orders)``.

    ``n_classes`` must be even; there are ``n_classes // 2`` twin pairs and one group per class
    position, so ``n_groups = n_classes``: class ``2k`` is (group 2k, group 2k+1), class
    ``2k+1`` the reverse. Each burst window is ``(steps − gap) // 2`` steps; the second window
    starts ``gap`` steps after the first ends. ``class_orders[c]`` is the ``(first, second)``
    group of class ``c``. Labels are balanced (``n_samples`` rounded down to a multiple of
    ``n_classes``).
    """
    n_samples = _check_int("n_samples", n_samples, 1)
    n_classes = _check_int("n_classes", n_classes, 2)
    if n_classes % 2:
        raise ValueError(f"n_classes must be even (classes come in twin pairs), got {n_classes}")
    channels_per_group = _check_int("channels_per_group", channels_per_group, 1)
    steps = _check_int("steps", steps, 3)
    gap = _check_int("gap", gap, 0)
    window = (steps - gap) // 2
    burst_spikes = _check_int("burst_spikes", burst_spikes, 1)
    if window < burst_spikes:
        raise ValueError(
            f"each burst window has (steps - gap) // 2 = {window} steps, fewer than burst_spikes={burst_spikes}"
        )
    if not 0.0 <= noise_rate < 1.0:
        raise ValueError(f"noise_rate must be in [0, 1), got {noise_rate!r}")
    g = torch.Generator().manual_seed(seed)
    per_class = n_samples // n_classes
    if per_class == 0:
        raise ValueError(f"n_samples={n_samples} is smaller than n_classes={n_classes}")
    orders = []
    for k in range(n_classes // 2):
        orders += [(2 * k, 2 * k + 1), (2 * k + 1, 2 * k)]
    n_channels = n_classes * channels_per_group
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    n = labels.numel()
    x = (torch.rand(n, steps, n_channels, generator=g) < noise_rate).float()
    starts = (0, window + gap)
    for i, label in enumerate(labels.tolist()):
        for group, start in zip(orders[label], starts):
            for ch in range(group * channels_per_group, (group + 1) * channels_per_group):
                # exactly burst_spikes distinct steps inside the window
                when = start + torch.randperm(window, generator=g)[:burst_spikes]
                x[i, when, ch] = 1.0
    perm = torch.randperm(n, generator=g)
    return TensorDataset(x[perm], labels[perm]), orders
