"""Adaptive multi-timescale LIF (ALIF), SPEC.md §2 — the reference math.

Per neuron, with ``α = exp(−1/τ_m)`` and ``ρ = exp(−1/τ_adp)``:

    b_t = ρ·b_{t−1} + (1 − ρ)·s_{t−1}
    B_t = b0 + β·b_t
    v_t = α·v_{t−1} + (1 − α)·I_t − B_t·s_{t−1}
    s_t = H(v_t − B_t)

Initial state ``v = 0, s = 0, b = b0``. Nothing is detached: the gradient of ``s_t`` reaches
``v_t`` and the threshold ``B_t`` through ``x = v_t − B_t``, and τ through α and ρ.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ..surrogate import MultiGaussian, Surrogate
from .checks import check_steps
from .precision import Precision, precision_of, project, state_dtype

__all__ = [
    "ALIFState",
    "ALIFTrace",
    "alif_initial_state",
    "alif_leaky_dynamics",
    "alif_step",
    "alif_dynamics",
    "alif_scan",
    "leaky_readout_step",
    "leaky_readout_scan",
    "decay",
    "decay_time_constant",
    "euler_time_constant",
    "euler_to_steps",
]

_DEFAULT_SURROGATE = MultiGaussian()


class ALIFState(NamedTuple):
    """``v`` membrane potential, ``b`` adaptation trace, ``s`` last spikes; each ``[B, N]``."""

    v: Tensor
    b: Tensor
    s: Tensor


class ALIFTrace(NamedTuple):
    """Per-step internals of a scan: membrane ``v`` and adaptive threshold ``threshold``, ``[T, B, N]``."""

    v: Tensor
    threshold: Tensor


def decay(tau: Tensor) -> Tensor:
    """``exp(−1/τ)`` with τ clamped to at least one step (SPEC §2: τ ≥ 1 always)."""
    return torch.exp(-1.0 / tau.clamp(min=1.0))


def decay_time_constant(alpha: Tensor) -> Tensor:
    """The inverse of `decay`: ``τ = −1/ln α`` for a per-step decay ``α ∈ [e⁻¹, 1)`` (SPEC §2)."""
    return -1.0 / torch.log(alpha)


def euler_time_constant(tau: Tensor, dt: float) -> Tensor:
    """``τ_E = dt/(1 − α)``, ``α = decay(τ)``: the time constant of a forward-Euler leak
    ``v ← (1 − dt/τ_E)·v + (dt/τ_E)·I`` (NIR's ``LI``) that decays per step exactly as τ steps do."""
    return dt / (1.0 - decay(tau))


def euler_to_steps(tau_euler: Tensor, dt: float) -> Tensor:
    """The inverse of `euler_time_constant`: ``τ = −1/ln(1 − dt/τ_E)`` (``log1p``, exact for small ``dt/τ_E``)."""
    return -1.0 / torch.log1p(-dt / tau_euler)


def alif_initial_state(like: Tensor, b0: float | Tensor = 0.01) -> ALIFState:
    """Zero membrane and spikes, adaptation trace ``b0`` (SPEC §2), shaped like ``like``
    (float32 for a low-precision ``like``, SPEC §6). Each field is its own tensor (see
    [`egru_initial_state`][evsnn.functional.egru_initial_state])."""
    dtype = state_dtype(like.dtype)
    b = torch.zeros_like(like, dtype=dtype) + (b0.to(dtype) if isinstance(b0, Tensor) else b0)
    return ALIFState(torch.zeros_like(like, dtype=dtype), b, torch.zeros_like(like, dtype=dtype))


def _alif_precision(current: Tensor, tau_mem: Tensor) -> Precision:
    # The current is already a product (W_ih x, in the autocast or module dtype); the parameters
    # say whether autocast applies (a float64 layer stays float64).
    return precision_of(torch.promote_types(current.dtype, tau_mem.dtype), tau_mem.device.type)


def _as(value: float | Tensor, dtype: torch.dtype) -> float | Tensor:
    return value.to(dtype) if isinstance(value, Tensor) else value


def alif_step(
    current: Tensor,
    state: ALIFState | None,
    *,
    tau_mem: Tensor,
    tau_adapt: Tensor,
    b0: float | Tensor = 0.01,
    beta: float | Tensor = 1.8,
    surrogate: Surrogate = _DEFAULT_SURROGATE,
) -> tuple[Tensor, ALIFState]:
    """One ALIF step on the already-projected input current ``I_t`` (``[B, N]``).

    Returns ``(s_t, ALIFState(v_t, b_t, s_t))``. ``beta = 0`` gives the non-adaptive LIF
    with fixed threshold ``b0``.
    """
    p = _alif_precision(current, tau_mem)
    if state is None:
        state = alif_initial_state(current, b0)
    alpha, rho = decay(tau_mem.to(p.compute)), decay(tau_adapt.to(p.compute))
    b0, beta = _as(b0, p.compute), _as(beta, p.compute)
    s, new_state, _ = alif_dynamics(current.to(p.compute), state, alpha, rho, b0, beta, surrogate)
    return s.to(p.matmul), new_state


def alif_dynamics(
    current: Tensor,
    state: ALIFState,
    alpha: Tensor,
    rho: Tensor,
    b0: float | Tensor,
    beta: float | Tensor,
    surrogate: Surrogate,
) -> tuple[Tensor, ALIFState, Tensor]:
    """The ALIF update of SPEC §2 given ``α``, ``ρ`` and the total input current ``I_t``.

    The one home of these equations: every torch implementation (the reference scan and step,
    the CPU event path) calls it. Returns ``(s_t, ALIFState(v_t, b_t, s_t), B_t)``.
    """
    b, threshold = _adaptive_threshold(state, rho, b0, beta)
    v = alpha * state.v + (1.0 - alpha) * current - threshold * state.s
    s = surrogate(v - threshold)
    return s, ALIFState(v, b, s), threshold


def _adaptive_threshold(
    state: ALIFState, rho: Tensor, b0: float | Tensor, beta: float | Tensor
) -> tuple[Tensor, Tensor]:
    """SPEC §2's adaptation: ``b_t = ρ·b_{t−1} + (1 − ρ)·s_{t−1}`` and ``B_t = b0 + β·b_t``."""
    b = rho * state.b + (1.0 - rho) * state.s
    return b, b0 + beta * b


def alif_leaky_dynamics(
    current: Tensor,
    state: ALIFState,
    beta: Tensor,
    rho: Tensor,
    threshold: Tensor,
    adapt_strength: Tensor,
    reset: str,
    surrogate: Surrogate,
    zero_reset_clears_input: bool,
) -> tuple[Tensor, ALIFState]:
    """One ALIF step in snntorch's units: SPEC §2's adaptation around ``snn.Leaky``'s membrane.

    ``mem = β·mem + I`` (SPEC §2 integrates ``(1 − β)·I`` instead), reset as ``snn.Leaky`` and
    ``snn.RLeaky`` define ``reset_mechanism`` (``"subtract"``, ``"zero"``, ``"none"``), with the
    adaptive threshold ``B_t`` in place of their fixed one. ``"zero"`` clears the decayed membrane
    before the input (``snn.Leaky``) or, with ``zero_reset_clears_input``, the whole new value
    (``snn.RLeaky``). What the snntorch adapters of `evsnn.interop.snntorch` compute; returns
    ``(s_t, ALIFState(v_t, b_t, s_t))``.
    """
    s_prev = state.s
    b, threshold = _adaptive_threshold(state, rho, threshold, adapt_strength)
    if reset == "subtract":
        v = beta * state.v + current - threshold * s_prev
    elif reset == "zero":
        if zero_reset_clears_input:
            v = (1.0 - s_prev) * (beta * state.v + current)
        else:
            v = beta * ((1.0 - s_prev) * state.v) + current
    else:
        v = beta * state.v + current
    s = surrogate(v - threshold)
    return s, ALIFState(v, b, s)


def alif_scan(
    current: Tensor,
    state: ALIFState | None,
    *,
    tau_mem: Tensor,
    tau_adapt: Tensor,
    b0: float | Tensor = 0.01,
    beta: float | Tensor = 1.8,
    surrogate: Surrogate = _DEFAULT_SURROGATE,
    weight_hh: Tensor | None = None,
    bias_hh: Tensor | None = None,
) -> tuple[Tensor, ALIFState, ALIFTrace]:
    """Reference multi-step ALIF over ``current`` ``[T, B, N]`` (the oracle of every backend).

    With ``weight_hh`` (``[N, N]``) the layer is recurrent: ``I_t += W_hh s_{t−1} + b_hh``.
    Returns ``(spikes [T, B, N], final_state, ALIFTrace(v, threshold))``. Precision (SPEC §6):
    membrane, trace and threshold in float32 for a low-precision layer, spikes returned in the
    product dtype (the dtype of ``current`` under autocast or in a low-precision module).
    """
    check_steps("alif_scan", current)
    p = _alif_precision(current, tau_mem)
    if state is None:
        state = alif_initial_state(current[0], b0)
    spikes, vs, thresholds = [], [], []
    alpha = decay(tau_mem.to(p.compute))
    rho = decay(tau_adapt.to(p.compute))
    b0, beta = _as(b0, p.compute), _as(beta, p.compute)
    current = current.to(p.compute)
    if weight_hh is not None and weight_hh.dtype != p.matmul:
        weight_hh = weight_hh.to(p.matmul)  # cast once, not per step
    for t in range(current.shape[0]):
        i_t = current[t]
        if weight_hh is not None:
            i_t = i_t + project(state.s, weight_hh, bias_hh, p)
        s, state, threshold = alif_dynamics(i_t, state, alpha, rho, b0, beta, surrogate)
        spikes.append(s)
        vs.append(state.v)
        thresholds.append(threshold)
    return (
        torch.stack(spikes).to(p.matmul),
        state,
        ALIFTrace(torch.stack(vs), torch.stack(thresholds)),
    )


def leaky_readout_step(current: Tensor, m: Tensor | None, *, tau: Tensor) -> Tensor:
    """Non-spiking leaky readout ``m_t = α_o·m_{t−1} + (1 − α_o)·I_t`` (SPEC §2); ``m`` is a
    membrane: float32 for a low-precision current or τ (SPEC §6)."""
    dtype = state_dtype(torch.promote_types(current.dtype, tau.dtype))
    alpha = decay(tau.to(dtype))
    if m is None:
        m = torch.zeros_like(current, dtype=dtype)
    return alpha * m + (1.0 - alpha) * current.to(dtype)


def leaky_readout_scan(current: Tensor, m: Tensor | None, *, tau: Tensor) -> Tensor:
    """Readout over ``[T, B, N]``; returns all ``m_t`` stacked (float32 for a low-precision
    current or τ, SPEC §6)."""
    check_steps("leaky_readout_scan", current)
    dtype = state_dtype(torch.promote_types(current.dtype, tau.dtype))
    alpha = decay(tau.to(dtype))
    current = current.to(dtype)
    if m is None:
        m = torch.zeros_like(current[0])
    out = []
    for t in range(current.shape[0]):
        m = alpha * m + (1.0 - alpha) * current[t]
        out.append(m)
    return torch.stack(out)
