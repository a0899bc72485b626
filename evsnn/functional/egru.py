"""EGRU, the event-based GRU (Subramoney et al., ICLR 2023), SPEC.md §3 — the reference math.

Weights and gate order as ``torch.nn.GRU`` (r, z, n):

    r_t = σ(W_ir x_t + b_ir + W_hr y_{t−1} + b_hr)
    z_t = σ(W_iz x_t + b_iz + W_hz y_{t−1} + b_hz)
    n_t = tanh(W_in x_t + b_in + r_t ⊙ (W_hn y_{t−1} + b_hn))

``reset="output"`` (paper, default):

    c_t = z_t ⊙ c_{t−1} + (1 − z_t) ⊙ n_t − y_{t−1};   o_t = H(c_t − θ);   y_t = o_t ⊙ c_t

``reset="threshold"`` (EvNN code v0.2):

    c̃_t = z_t ⊙ c_{t−1} + (1 − z_t) ⊙ n_t;   o_t = H(c̃_t − θ);   y_t = o_t ⊙ c̃_t;   c_t = c̃_t − o_t ⊙ θ

Zoneout (as the official EvNN code) mixes the value compared with θ with ``c_{t−1}`` *before*
the event test: ``c̃_t ← d ⊙ c_{t−1} + (1 − d) ⊙ c̃_t``, ``d ~ Bernoulli(p)`` in training and
``d = p`` in evaluation; the event, ``y_t`` and the reset all see the zoned value.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ..surrogate import Surrogate, Triangle
from .checks import check_steps
from .precision import Precision, precision_of, project, state_dtype

__all__ = ["EGRUState", "EGRUTrace", "RESETS", "egru_step", "egru_scan", "egru_pointwise", "egru_initial_state"]

RESETS = ("output", "threshold")
_DEFAULT_SURROGATE = Triangle(0.3)


class EGRUState(NamedTuple):
    """``c`` internal state and ``y`` event output, each ``[B, H]``."""

    c: Tensor
    y: Tensor


class EGRUTrace(NamedTuple):
    """Per-step internals of a scan: ``c_pre`` = the value compared with θ (c_t, or c̃_t for
    the threshold reset), ``[T, B, H]``."""

    c_pre: Tensor


def egru_initial_state(batch: int, hidden: int, like: Tensor) -> EGRUState:
    """Zero ``c`` and ``y`` on ``like``'s device, float32 for a low-precision ``like`` (SPEC §6).

    The two fields are separate tensors: an in-place write to one must not change the other,
    and an exporter (``torch.onnx.export``) merges inputs that share storage into one."""
    dtype = state_dtype(like.dtype)
    return EGRUState(like.new_zeros(batch, hidden, dtype=dtype), like.new_zeros(batch, hidden, dtype=dtype))


def _check_reset(reset: str) -> None:
    if reset not in RESETS:
        raise ValueError(f"reset must be one of {RESETS}, got {reset!r}")


def _egru_cell(
    gi: Tensor,
    state: EGRUState,
    weight_hh: Tensor,
    bias_hh: Tensor | None,
    threshold: Tensor,
    reset: str,
    surrogate: Surrogate,
    p: Precision,
    zoneout: Tensor | float | None = None,
) -> tuple[Tensor, EGRUState, Tensor]:
    """One step given the input projection ``gi = W_ih x_t + b_ih`` (``[B, 3H]``)."""
    gh = project(state.y, weight_hh, bias_hh, p)
    return egru_pointwise(gi, gh, state, threshold, reset, surrogate, zoneout)


def egru_pointwise(
    gi: Tensor,
    gh: Tensor,
    state: EGRUState,
    threshold: Tensor,
    reset: str,
    surrogate: Surrogate,
    zoneout: Tensor | float | None = None,
) -> tuple[Tensor, EGRUState, Tensor]:
    """The EGRU gates, state update and events of SPEC §3 given both projections
    ``gi = W_ih x_t + b_ih`` and ``gh = W_hh y_{t−1} + b_hh`` (``[B, 3H]`` each).

    The one home of these equations: every torch implementation (the reference, the CPU event
    path with its event-sparse ``gh``) calls it. ``zoneout`` is the zoneout weight ``d`` of this
    step (a ``[B, H]`` 0/1 mask in training, the probability ``p`` in evaluation, ``None`` for
    none): ``c̃_t ← d ⊙ c_{t−1} + (1 − d) ⊙ c̃_t`` before the event test (SPEC §3).
    Returns ``(y_t, EGRUState(c_t, y_t), c_pre)`` with ``c_pre`` the zoned value compared with θ.
    """
    c_prev, y_prev = state
    i_r, i_z, i_n = gi.chunk(3, dim=-1)
    h_r, h_z, h_n = gh.chunk(3, dim=-1)
    r = torch.sigmoid(i_r + h_r)
    z = torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    c_pre = z * c_prev + (1.0 - z) * n
    if reset == "output":
        c_pre = c_pre - y_prev
    if zoneout is not None:
        c_pre = zoneout * c_prev + (1.0 - zoneout) * c_pre
    o = surrogate(c_pre - threshold)
    y = o * c_pre
    c = c_pre - o * threshold if reset == "threshold" else c_pre
    return y, EGRUState(c, y), c_pre


def egru_step(
    x: Tensor,
    state: EGRUState | None,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None,
    bias_hh: Tensor | None,
    threshold: Tensor,
    *,
    reset: str = "output",
    surrogate: Surrogate = _DEFAULT_SURROGATE,
) -> tuple[Tensor, EGRUState]:
    """One EGRU step on ``x`` ``[B, I]``. Returns ``(y_t, EGRUState(c_t, y_t))``."""
    _check_reset(reset)
    p = precision_of(weight_ih.dtype, weight_ih.device.type)
    if state is None:
        state = egru_initial_state(x.shape[0], weight_hh.shape[1], x)
    gi = project(x, weight_ih, bias_ih, p)
    y, new_state, _ = _egru_cell(gi, state, weight_hh, bias_hh, threshold.to(p.compute), reset, surrogate, p)
    return y.to(p.matmul), new_state


def egru_scan(
    x: Tensor,
    state: EGRUState | None,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None,
    bias_hh: Tensor | None,
    threshold: Tensor,
    *,
    reset: str = "output",
    surrogate: Surrogate = _DEFAULT_SURROGATE,
    zoneout: float = 0.0,
    training: bool = False,
) -> tuple[Tensor, EGRUState, EGRUTrace]:
    """Reference EGRU over ``x`` ``[T, B, I]`` — the oracle of every backend.

    ``zoneout`` (Krueger et al.) replaces each unit's candidate ``c̃_t`` by ``c_{t−1}`` with that
    probability in training (a fresh Bernoulli mask per step) and by the expectation
    ``p·c_{t−1} + (1 − p)·c̃_t`` at evaluation, before the event test (SPEC §3). Returns
    ``(y [T, B, H], final EGRUState, EGRUTrace(c_pre))``. Precision (SPEC §6, see
    `evsnn.functional.precision`): products in the weights' (or autocast) dtype, ``c``,
    θ and the event test in float32 for a low-precision layer, ``y`` returned in the product dtype.
    """
    _check_reset(reset)
    check_steps("egru_scan", x)
    p = precision_of(weight_ih.dtype, weight_ih.device.type)
    if state is None:
        state = egru_initial_state(x.shape[1], weight_hh.shape[1], x)
    gi_all = project(x, weight_ih, bias_ih, p)
    if weight_hh.dtype != p.matmul:
        weight_hh = weight_hh.to(p.matmul)  # cast once, not per step
    threshold = threshold.to(p.compute)
    if not 0.0 <= zoneout < 1.0:
        raise ValueError(f"zoneout must be a probability in [0, 1), got {zoneout!r}")
    ys, c_pres = [], []
    for t in range(x.shape[0]):
        d: Tensor | float | None = None
        if zoneout > 0.0:
            d = (torch.rand_like(state.c) < zoneout).to(state.c.dtype) if training else zoneout
        y, state, c_pre = _egru_cell(gi_all[t], state, weight_hh, bias_hh, threshold, reset, surrogate, p, d)
        ys.append(y)
        c_pres.append(c_pre)
    return torch.stack(ys).to(p.matmul), state, EGRUTrace(torch.stack(c_pres))
