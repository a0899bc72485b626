"""Spike encoders for analogue sequences ``x [..., T, F]`` with values in ``[0, 1]``.

- rate: ``s_{t,f} ~ Bernoulli(x_f)`` independently at each of ``steps`` steps (the input must be
  a static ``[..., F]`` intensity);
- latency: one spike per feature at step ``round((1 − x_f)·(steps − 1))`` — bright features fire
  first; features with ``x_f ≤ floor`` never fire;
- delta: along an existing time axis, ``+1`` where ``x_t − x̂ > θ`` and ``−1`` where
  ``x_t − x̂ < −θ``, with the reference ``x̂`` moved to ``x_t`` at every event (send-on-delta,
  the same rule as SPEC.md §4's delta memories, reduced to the sign).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["ENCODINGS", "encode", "rate_encode", "latency_encode", "delta_encode"]

ENCODINGS = ("none", "rate", "latency", "delta")


def _check_unit_interval(name: str, x: Tensor) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} expects a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} expects a floating-point tensor, got {x.dtype}")
    if x.numel() and (float(x.min()) < 0.0 or float(x.max()) > 1.0):
        raise ValueError(f"{name} expects values in [0, 1], got range [{float(x.min()):.3g}, {float(x.max()):.3g}]")


def _check_steps(steps: object) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise TypeError(f"steps must be an int, got {type(steps).__name__}")
    if steps <= 0:
        raise ValueError(f"steps must be positive, got {steps}")
    return steps


def rate_encode(x: Tensor, steps: int, *, generator: torch.Generator | None = None) -> Tensor:
    """``[..., F]`` intensities in [0, 1] → ``[..., steps, F]`` Bernoulli spikes with ``P(s=1) = x``."""
    _check_unit_interval("rate_encode", x)
    steps = _check_steps(steps)
    p = x.unsqueeze(-2).expand(*x.shape[:-1], steps, x.shape[-1])
    return torch.bernoulli(p, generator=generator).to(x.dtype)


def latency_encode(x: Tensor, steps: int, *, floor: float = 0.0) -> Tensor:
    """``[..., F]`` in [0, 1] → ``[..., steps, F]``: one spike at step ``round((1 − x)(steps − 1))``
    for each feature with ``x > floor``, none otherwise."""
    _check_unit_interval("latency_encode", x)
    steps = _check_steps(steps)
    when = torch.round((1.0 - x) * (steps - 1)).long()
    out = torch.zeros(*x.shape[:-1], steps, x.shape[-1], dtype=x.dtype, device=x.device)
    out.scatter_(-2, when.unsqueeze(-2), (x > floor).to(x.dtype).unsqueeze(-2))
    return out


def delta_encode(x: Tensor, threshold: float = 0.1) -> Tensor:
    """``[..., T, F]`` → signed events ``[..., T, F]`` in {−1, 0, +1} (send-on-delta).

    The reference starts at 0; an event fires where ``|x_t − x̂| > threshold`` and then sets
    ``x̂ = x_t``, so a constant signal produces one event and a slow drift one event per
    ``threshold`` it covers.
    """
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(
            f"delta_encode expects a floating-point torch.Tensor, got {getattr(x, 'dtype', type(x).__name__)}"
        )
    if x.dim() < 2:
        raise ValueError(f"delta_encode expects [..., T, F], got shape {tuple(x.shape)}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or threshold < 0:
        raise ValueError(f"threshold must be a number >= 0, got {threshold!r}")
    ref = torch.zeros_like(x.select(-2, 0))
    events = []
    for t in range(x.shape[-2]):
        diff = x.select(-2, t) - ref
        fire = diff.abs() > threshold
        events.append(torch.sign(diff) * fire)
        ref = torch.where(fire, x.select(-2, t), ref)
    return torch.stack(events, dim=-2)


def encode(
    x: Tensor,
    encoding: str,
    *,
    steps: int | None = None,
    threshold: float = 0.1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Apply one of `ENCODINGS` by name. ``rate`` and ``latency`` need ``steps`` and a
    static ``[..., F]`` input; ``delta`` and ``none`` keep the time axis of ``[..., T, F]``."""
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown encoding {encoding!r}; expected one of {ENCODINGS}")
    if encoding == "none":
        return x
    if encoding == "delta":
        return delta_encode(x, threshold)
    if steps is None:
        raise ValueError(f"the {encoding!r} encoding needs steps=")
    if encoding == "rate":
        return rate_encode(x, steps, generator=generator)
    return latency_encode(x, steps)
