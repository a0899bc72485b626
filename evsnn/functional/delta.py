"""Delta-encoded GRU and LSTM (Neil et al. 2017; Gao et al.), SPEC.md §4 — the reference math.

Only changes larger than a threshold propagate; the matrix products accumulate them:

    Δx_t = (x_t − x̂_{t−1}) ⊙ 1[|x_t − x̂_{t−1}| > Θ_x],   x̂_t = x̂_{t−1} + Δx_t
    Δh_t = (h_t − ĥ_{t−1}) ⊙ 1[|h_t − ĥ_{t−1}| > Θ_h],   ĥ_t = ĥ_{t−1} + Δh_t

DeltaGRU keeps four accumulators ``M = [M_r, M_z, M_nx, M_nh]`` (``[B, 4H]``):

    M_r  += W_ir Δx_t + W_hr Δh_{t−1}     (from b_ir + b_hr)
    M_z  += W_iz Δx_t + W_hz Δh_{t−1}     (from b_iz + b_hz)
    M_nx += W_in Δx_t                     (from b_in)
    M_nh += W_hn Δh_{t−1}                 (from b_hn)
    r = σ(M_r), z = σ(M_z), n = tanh(M_nx + r ⊙ M_nh), h_t = (1 − z) ⊙ n + z ⊙ h_{t−1}

DeltaLSTM keeps one accumulator ``M [B, 4H]`` (gates i, f, g, o) from ``b_ih + b_hh``.
Invariant: ``M_t = W_x x̂_t + W_h ĥ_{t−1} + b``; with Θ = 0 the cells are ``nn.GRU``/``nn.LSTM``.
The masks are piecewise constant, so autograd of this code is the exact gradient.

Tie rule ``delta_rule``: ``"strict"`` (SPEC default) fires on ``|Δ| > Θ``; ``"inclusive"`` (the
official DeltaRNN code) fires on ``|Δ| ≥ Θ``. A NaN difference propagates under both (``Δ = NaN``).
``fixed_point=(m, n)`` rounds the activations (each ``x_t`` and each new ``h_t``, c stays full
precision) to Qm.n with a straight-through gradient (`quantize_fixed_point`).
Precision (SPEC §6): the products take Δx/Δh in the weights' (or autocast) dtype; x̂, ĥ, M, c, h
and every comparison with Θ stay float32 for a low-precision layer; the ``h`` sequence is
returned in the product dtype.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .checks import check_steps
from .fixed_point import check_fixed_point, quantize_fixed_point
from .precision import Precision, precision_of, project, state_dtype

__all__ = [
    "DELTA_RULES",
    "check_delta_rule",
    "DeltaGRUState",
    "DeltaLSTMState",
    "DeltaTrace",
    "delta_encode",
    "delta_accumulator_increment",
    "delta_accumulators",
    "delta_gru_gates",
    "delta_lstm_gates",
    "delta_gru_initial_state",
    "delta_lstm_initial_state",
    "delta_gru_step",
    "delta_lstm_step",
    "delta_gru_scan",
    "delta_lstm_scan",
]


DELTA_RULES = ("strict", "inclusive")


def check_delta_rule(delta_rule: object) -> str:
    """``delta_rule`` must be ``"strict"`` (``|Δ| > Θ``) or ``"inclusive"`` (``|Δ| ≥ Θ``)."""
    if delta_rule not in DELTA_RULES:
        raise ValueError(f"delta_rule must be one of {DELTA_RULES}, got {delta_rule!r}")
    return delta_rule


class DeltaGRUState(NamedTuple):
    """``h`` hidden ``[B, H]``, ``x_hat`` input memory ``[B, I]``, ``h_hat`` hidden memory
    ``[B, H]`` (ĥ_{t−1}, before this step's Δh), ``m`` accumulators ``[B, 4H]`` (r, z, nx, nh)."""

    h: Tensor
    x_hat: Tensor
    h_hat: Tensor
    m: Tensor


class DeltaLSTMState(NamedTuple):
    """``h``, ``c`` ``[B, H]``, memories ``x_hat [B, I]``, ``h_hat [B, H]``, accumulator ``m [B, 4H]``."""

    h: Tensor
    c: Tensor
    x_hat: Tensor
    h_hat: Tensor
    m: Tensor


class DeltaTrace(NamedTuple):
    """Per-step deltas of a scan: ``delta_x [T, B, I]`` and ``delta_h [T, B, H]`` (Δh_{t−1},
    the hidden delta used at step t)."""

    delta_x: Tensor
    delta_h: Tensor


def delta_encode(
    value: Tensor, memory: Tensor, theta: float | Tensor, delta_rule: str = "strict"
) -> tuple[Tensor, Tensor]:
    """``Δ = (value − memory) ⊙ 1[|value − memory| > Θ]`` (``≥`` for ``delta_rule="inclusive"``);
    returns ``(Δ, memory + Δ)``. A NaN difference gives ``Δ = NaN`` (``NaN · 0``) under both rules."""
    diff = value - memory
    mag = diff.detach().abs()
    mask = (mag >= theta if delta_rule == "inclusive" else mag > theta).to(diff.dtype)
    delta = diff * mask
    return delta, memory + delta


def delta_accumulator_increment(gx: Tensor, gh: Tensor, gru: bool) -> Tensor:
    """Increment of the accumulators ``M [..., 4H]`` from ``gx = W_ih Δx`` and ``gh = W_hh Δh``
    (SPEC §4). The one home of the accumulator slot layout.

    DeltaLSTM: ``gx + gh`` (gates i, f, g, o from both sides). DeltaGRU (``gx``, ``gh`` of
    ``[..., 3H]`` with row blocks r, z, n): the input feeds ``(r, z, nx)`` and the hidden state
    feeds ``(r, z, nh)``, so the result is ``[gx_r + gh_r, gx_z + gh_z, gx_n, gh_n]``. The two
    products stay apart (no zero block multiplies a delta): a NaN or inf in one side reaches
    only the slots that side feeds, as in the recurrence above.

    Args:
        gx: input-side product ``Δx W_ihᵀ``, ``[..., 3H]`` (GRU) or ``[..., 4H]`` (LSTM).
        gh: hidden-side product ``Δh W_hhᵀ``, same shape as ``gx``.
        gru: ``True`` for the DeltaGRU layout, ``False`` for the DeltaLSTM one.
    """
    if not gru:
        return gx + gh
    hs = gh.shape[-1] // 3
    return torch.cat([gx[..., : 2 * hs] + gh[..., : 2 * hs], gx[..., 2 * hs :], gh[..., 2 * hs :]], dim=-1)


def delta_accumulators(
    x_hat: Tensor,
    h_hat: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None,
    bias_hh: Tensor | None,
    gru: bool,
) -> Tensor:
    """The accumulators that the memories imply, ``M = W_ih x̂ + W_hh ĥ + b`` (the SPEC §4
    invariant), in the memories' dtype; differentiable in the weights and biases.

    A state carried to a later forward is continued from these instead of from accumulators
    summed with earlier weights, so the continuation computes with the current weights.

    Args:
        x_hat: input memory x̂ ``[..., I]``.
        h_hat: hidden memory ĥ ``[..., H]`` (the one the next step's Δh is taken against).
        weight_ih: ``[G·H, I]`` (G = 3 for the GRU, 4 for the LSTM).
        weight_hh: ``[G·H, H]``.
        bias_ih: ``[G·H]`` or ``None``.
        bias_hh: ``[G·H]`` or ``None``.
        gru: ``True`` for the DeltaGRU slot layout ``(r, z, nx, nh)``, ``False`` for the DeltaLSTM one.
    """
    dtype = x_hat.dtype
    gx = torch.matmul(x_hat, weight_ih.to(dtype).t()).to(dtype)
    gh = torch.matmul(h_hat, weight_hh.to(dtype).t()).to(dtype)
    if bias_ih is not None:
        gx = gx + bias_ih.to(dtype)
    if bias_hh is not None:
        gh = gh + bias_hh.to(dtype)
    return delta_accumulator_increment(gx, gh, gru)


def delta_gru_initial_state(
    batch: int,
    input_size: int,
    hidden_size: int,
    bias_ih: Tensor | None,
    bias_hh: Tensor | None,
    like: Tensor,
    h0: Tensor | None = None,
) -> DeltaGRUState:
    """Memories at zero, accumulators at the biases (SPEC §4), ``h = h0`` or zeros; float32
    for a low-precision ``like`` (SPEC §6)."""
    hs = hidden_size
    like = like.new_zeros((), dtype=state_dtype(like.dtype))
    b = like.new_zeros(4 * hs)
    if bias_ih is not None:
        b = b + delta_accumulator_increment(bias_ih, bias_ih.new_zeros(3 * hs), gru=True)
    if bias_hh is not None:
        b = b + delta_accumulator_increment(bias_hh.new_zeros(3 * hs), bias_hh, gru=True)
    h = like.new_zeros(batch, hs) if h0 is None else h0
    # clone: one accumulator row per sample (an expanded view would share one row among all)
    return DeltaGRUState(
        h, like.new_zeros(batch, input_size), like.new_zeros(batch, hs), b.expand(batch, 4 * hs).clone()
    )


def delta_lstm_initial_state(
    batch: int,
    input_size: int,
    hidden_size: int,
    bias_ih: Tensor | None,
    bias_hh: Tensor | None,
    like: Tensor,
    h0: Tensor | None = None,
    c0: Tensor | None = None,
) -> DeltaLSTMState:
    """Memories at zero, accumulator at ``b_ih + b_hh`` (SPEC §4); float32 for a low-precision
    ``like`` (SPEC §6)."""
    hs = hidden_size
    like = like.new_zeros((), dtype=state_dtype(like.dtype))
    b = like.new_zeros(4 * hs)
    if bias_ih is not None:
        b = b + bias_ih
    if bias_hh is not None:
        b = b + bias_hh
    h = like.new_zeros(batch, hs) if h0 is None else h0
    c = like.new_zeros(batch, hs) if c0 is None else c0
    # clone: one accumulator row per sample (an expanded view would share one row among all)
    return DeltaLSTMState(
        h, c, like.new_zeros(batch, input_size), like.new_zeros(batch, hs), b.expand(batch, 4 * hs).clone()
    )


def _delta_gru_cell(
    x: Tensor,
    state: DeltaGRUState,
    weight_ih: Tensor,
    weight_hh: Tensor,
    theta_x: float | Tensor,
    theta_h: float | Tensor,
    p: Precision,
    delta_rule: str = "strict",
    fixed_point: tuple[int, int] | None = None,
) -> tuple[Tensor, DeltaGRUState, Tensor, Tensor]:
    h_prev, x_hat, h_hat, m = state
    if fixed_point is not None:
        x = quantize_fixed_point(x, *fixed_point)
    dx, x_hat = delta_encode(x, x_hat, theta_x, delta_rule)
    dh, h_hat = delta_encode(h_prev, h_hat, theta_h, delta_rule)
    gx = project(dx, weight_ih, None, p)
    gh = project(dh, weight_hh, None, p)
    m = m + delta_accumulator_increment(gx, gh, gru=True)
    h = delta_gru_gates(m, h_prev)
    if fixed_point is not None:
        h = quantize_fixed_point(h, *fixed_point)
    return h, DeltaGRUState(h, x_hat, h_hat, m), dx, dh


def delta_gru_gates(m: Tensor, h_prev: Tensor) -> Tensor:
    """DeltaGRU output from its accumulators ``m = [M_r, M_z, M_nx, M_nh]`` (SPEC §4):
    ``h_t = (1 − z) ⊙ n + z ⊙ h_{t−1}``. The one home of these gate equations."""
    m_r, m_z, m_nx, m_nh = m.chunk(4, dim=-1)
    r = torch.sigmoid(m_r)
    z = torch.sigmoid(m_z)
    n = torch.tanh(m_nx + r * m_nh)
    return (1.0 - z) * n + z * h_prev


def delta_lstm_gates(m: Tensor, c_prev: Tensor) -> tuple[Tensor, Tensor]:
    """DeltaLSTM ``(h_t, c_t)`` from its accumulator ``m = [i, f, g, o]`` (SPEC §4):
    ``c_t = f ⊙ c_{t−1} + i ⊙ g``, ``h_t = o ⊙ tanh(c_t)``. The one home of these equations."""
    m_i, m_f, m_g, m_o = m.chunk(4, dim=-1)
    c = torch.sigmoid(m_f) * c_prev + torch.sigmoid(m_i) * torch.tanh(m_g)
    return torch.sigmoid(m_o) * torch.tanh(c), c


def _delta_lstm_cell(
    x: Tensor,
    state: DeltaLSTMState,
    weight_ih: Tensor,
    weight_hh: Tensor,
    theta_x: float | Tensor,
    theta_h: float | Tensor,
    p: Precision,
    delta_rule: str = "strict",
    fixed_point: tuple[int, int] | None = None,
) -> tuple[Tensor, DeltaLSTMState, Tensor, Tensor]:
    h_prev, c_prev, x_hat, h_hat, m = state
    if fixed_point is not None:
        x = quantize_fixed_point(x, *fixed_point)
    dx, x_hat = delta_encode(x, x_hat, theta_x, delta_rule)
    dh, h_hat = delta_encode(h_prev, h_hat, theta_h, delta_rule)
    m = m + project(dx, weight_ih, None, p) + project(dh, weight_hh, None, p)
    h, c = delta_lstm_gates(m, c_prev)
    if fixed_point is not None:
        h = quantize_fixed_point(h, *fixed_point)
    return h, DeltaLSTMState(h, c, x_hat, h_hat, m), dx, dh


def _gru_state_or_initial(x, state, weight_ih, weight_hh, bias_ih, bias_hh) -> DeltaGRUState:
    if state is not None:
        return state
    return delta_gru_initial_state(x.shape[-2], weight_ih.shape[1], weight_hh.shape[1], bias_ih, bias_hh, x)


def _lstm_state_or_initial(x, state, weight_ih, weight_hh, bias_ih, bias_hh) -> DeltaLSTMState:
    if state is not None:
        return state
    return delta_lstm_initial_state(x.shape[-2], weight_ih.shape[1], weight_hh.shape[1], bias_ih, bias_hh, x)


def delta_gru_step(
    x: Tensor,
    state: DeltaGRUState | None,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None,
    bias_hh: Tensor | None,
    *,
    theta_x: float | Tensor = 0.0,
    theta_h: float | Tensor = 0.0,
    delta_rule: str = "strict",
    fixed_point: tuple[int, int] | None = None,
) -> tuple[Tensor, DeltaGRUState]:
    """One DeltaGRU step on ``x [B, I]``. Biases enter only through the initial accumulators."""
    p = precision_of(weight_ih.dtype, weight_ih.device.type)
    state = _gru_state_or_initial(x, state, weight_ih, weight_hh, bias_ih, bias_hh)
    delta_rule, fixed_point = check_delta_rule(delta_rule), check_fixed_point("fixed_point", fixed_point)
    h, new_state, _, _ = _delta_gru_cell(x, state, weight_ih, weight_hh, theta_x, theta_h, p, delta_rule, fixed_point)
    return h.to(p.matmul), new_state


def delta_lstm_step(
    x: Tensor,
    state: DeltaLSTMState | None,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None,
    bias_hh: Tensor | None,
    *,
    theta_x: float | Tensor = 0.0,
    theta_h: float | Tensor = 0.0,
    delta_rule: str = "strict",
    fixed_point: tuple[int, int] | None = None,
) -> tuple[Tensor, DeltaLSTMState]:
    """One DeltaLSTM step on ``x [B, I]``."""
    p = precision_of(weight_ih.dtype, weight_ih.device.type)
    state = _lstm_state_or_initial(x, state, weight_ih, weight_hh, bias_ih, bias_hh)
    delta_rule, fixed_point = check_delta_rule(delta_rule), check_fixed_point("fixed_point", fixed_point)
    h, new_state, _, _ = _delta_lstm_cell(x, state, weight_ih, weight_hh, theta_x, theta_h, p, delta_rule, fixed_point)
    return h.to(p.matmul), new_state


def delta_gru_scan(
    x: Tensor,
    state: DeltaGRUState | None,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None,
    bias_hh: Tensor | None,
    *,
    theta_x: float | Tensor = 0.0,
    theta_h: float | Tensor = 0.0,
    delta_rule: str = "strict",
    fixed_point: tuple[int, int] | None = None,
) -> tuple[Tensor, DeltaGRUState, DeltaTrace]:
    """Reference DeltaGRU over ``x [T, B, I]``: ``(h [T, B, H], final state, DeltaTrace)``.

    ``delta_rule``: ``"strict"`` (``|Δ| > Θ``, default) or ``"inclusive"`` (``|Δ| ≥ Θ``, official
    code). ``fixed_point=(m, n)``: each ``x_t`` and ``h_t`` rounded to Qm.n (straight-through)."""
    check_steps("delta_gru_scan", x)
    p = precision_of(weight_ih.dtype, weight_ih.device.type)
    state = _gru_state_or_initial(x, state, weight_ih, weight_hh, bias_ih, bias_hh)
    delta_rule, fixed_point = check_delta_rule(delta_rule), check_fixed_point("fixed_point", fixed_point)
    weight_ih, weight_hh = weight_ih.to(p.matmul), weight_hh.to(p.matmul)  # cast once, not per step
    hs, dxs, dhs = [], [], []
    for t in range(x.shape[0]):
        h, state, dx, dh = _delta_gru_cell(
            x[t], state, weight_ih, weight_hh, theta_x, theta_h, p, delta_rule, fixed_point
        )
        hs.append(h)
        dxs.append(dx)
        dhs.append(dh)
    return torch.stack(hs).to(p.matmul), state, DeltaTrace(torch.stack(dxs), torch.stack(dhs))


def delta_lstm_scan(
    x: Tensor,
    state: DeltaLSTMState | None,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None,
    bias_hh: Tensor | None,
    *,
    theta_x: float | Tensor = 0.0,
    theta_h: float | Tensor = 0.0,
    delta_rule: str = "strict",
    fixed_point: tuple[int, int] | None = None,
) -> tuple[Tensor, DeltaLSTMState, DeltaTrace]:
    """Reference DeltaLSTM over ``x [T, B, I]``: ``(h [T, B, H], final state, DeltaTrace)``;
    ``delta_rule`` and ``fixed_point`` as `delta_gru_scan` (``c`` stays full precision)."""
    check_steps("delta_lstm_scan", x)
    p = precision_of(weight_ih.dtype, weight_ih.device.type)
    state = _lstm_state_or_initial(x, state, weight_ih, weight_hh, bias_ih, bias_hh)
    delta_rule, fixed_point = check_delta_rule(delta_rule), check_fixed_point("fixed_point", fixed_point)
    weight_ih, weight_hh = weight_ih.to(p.matmul), weight_hh.to(p.matmul)  # cast once, not per step
    hs, dxs, dhs = [], [], []
    for t in range(x.shape[0]):
        h, state, dx, dh = _delta_lstm_cell(
            x[t], state, weight_ih, weight_hh, theta_x, theta_h, p, delta_rule, fixed_point
        )
        hs.append(h)
        dxs.append(dx)
        dhs.append(dh)
    return torch.stack(hs).to(p.matmul), state, DeltaTrace(torch.stack(dxs), torch.stack(dhs))
