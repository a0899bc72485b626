"""Fused numba training kernel for the DeltaGRU on the CPU: event-sparse forward *and* backward.

Forward (SPEC §4, the equations of :func:`evsnn.functional.delta_gru_scan`): per sample and
step, encode ``Δx_t`` and ``Δh_{t−1}``, add the rows of ``W_ihᵀ``/``W_hhᵀ`` of the *active*
columns to the accumulators ``M``, gates, ``h_t``. It keeps for the backward only what the
backward reads: per (step, sample) the list of active input and hidden columns and their
delta values (compact, ``int32`` index + value), and the gate values ``r, z, n, M_nh``
(elementwise, dense as in any GRU).

Backward (Chen et al.'s symmetric sparse BPTT, SPEC §4), in reverse time per sample:
``δM_t = gates' gradient + δM_{t+1}`` (the accumulator's gradient accumulates), and only for the
columns active at step t: ``∂L/∂Δs_t = Wᵀ δM_t`` (one dot product per active column), then
``∂L/∂W[:, k] += δM_t · Δs_t[k]``. Columns that were inactive are never read, forward or
backward: a non-finite weight column of an input that never changes cannot reach anything.

The masks are piecewise constant, so this is the exact gradient (autograd of the reference),
with the reference's mask: ``|Δ| > Θ`` (strict) or ``|Δ| ≥ Θ`` (inclusive, which at ``Θ = 0``
also passes the gradient of a zero difference). The thresholds get no gradient (as in the
reference). Sums are grouped differently from the reference's, so results agree to rounding.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import numpy as np
import torch
from torch import Tensor

from ..functional.checks import check_steps
from ..functional.delta import DeltaGRUState, DeltaTrace, check_delta_rule, delta_gru_initial_state

__all__ = ["delta_gru_train_scan", "train_kernels_available"]

_DTYPES = (torch.float32, torch.float64)


def _delta_gru_forward(
    x, wx, wh, theta_x, theta_h, h, x_hat, h_hat, m, inclusive,
    out_h, out_dx, out_dh, gate_r, gate_z, gate_n, gate_nh,
    idx_x, val_x, off_x, idx_h, val_h, off_h,
):  # pragma: no cover - numba
    """DeltaGRU over ``x [T, B, I]`` from the state ``h, x̂, ĥ, M`` (updated in place).

    ``wx = W_ihᵀ [I, 3H]``, ``wh = W_hhᵀ [H, 3H]``. Writes ``h_t``, ``Δx_t``, ``Δh_{t−1}`` and
    the gates; the active columns of step t of sample b are ``idx_*[off_*[b·T + t] : off_*[b·T + t + 1]]``
    with their deltas in ``val_*``.
    """
    steps, batch, n_in = x.shape
    hs = h.shape[1]
    pos_x = 0
    pos_h = 0
    for b in range(batch):
        for t in range(steps):
            cell = b * steps + t
            off_x[cell] = pos_x
            off_h[cell] = pos_h
            for i in range(n_in):
                d = x[t, b, i] - x_hat[b, i]
                # The reference's mask, written as "not ≤" / "not <" (a NaN difference passes on).
                if (not abs(d) < theta_x[i]) if inclusive else (not abs(d) <= theta_x[i]):
                    out_dx[t, b, i] = d
                    x_hat[b, i] += d
                    idx_x[pos_x] = i
                    val_x[pos_x] = d
                    pos_x += 1
                    row = wx[i]
                    for j in range(3 * hs):
                        m[b, j] += d * row[j]
                else:
                    out_dx[t, b, i] = 0.0
            for k in range(hs):
                d = h[b, k] - h_hat[b, k]
                if (not abs(d) < theta_h[k]) if inclusive else (not abs(d) <= theta_h[k]):
                    out_dh[t, b, k] = d
                    h_hat[b, k] += d
                    idx_h[pos_h] = k
                    val_h[pos_h] = d
                    pos_h += 1
                    row = wh[k]
                    for j in range(2 * hs):
                        m[b, j] += d * row[j]
                    for j in range(hs):
                        m[b, 3 * hs + j] += d * row[2 * hs + j]
                else:
                    out_dh[t, b, k] = 0.0
            for j in range(hs):
                r = 1.0 / (1.0 + np.exp(-m[b, j]))
                z = 1.0 / (1.0 + np.exp(-m[b, hs + j]))
                nh = m[b, 3 * hs + j]
                n = np.tanh(m[b, 2 * hs + j] + r * nh)
                h[b, j] = (1.0 - z) * n + z * h[b, j]
                out_h[t, b, j] = h[b, j]
                gate_r[t, b, j] = r
                gate_z[t, b, j] = z
                gate_n[t, b, j] = n
                gate_nh[t, b, j] = nh
    off_x[batch * steps] = pos_x
    off_h[batch * steps] = pos_h


def _delta_gru_backward(
    wx, wh, h0, out_h, gate_r, gate_z, gate_n, gate_nh,
    idx_x, val_x, off_x, idx_h, val_h, off_h,
    g_out, g_dx, g_dh, a_h, a_xhat, a_hhat, a_m,
    g_x, g_wx, g_wh,
):  # pragma: no cover - numba
    """Reverse-time adjoint of :func:`_delta_gru_forward`.

    ``a_h, a_xhat, a_hhat, a_m`` enter as the gradients of the final state and leave as those
    of the initial state (in place). ``g_out``, ``g_dx``, ``g_dh`` are the gradients of the
    outputs and of the delta traces. Writes ``g_x [T, B, I]`` (zero-filled by the caller) and
    accumulates ``g_wx = ∂L/∂W_ihᵀ [I, 3H]``, ``g_wh = ∂L/∂W_hhᵀ [H, 3H]`` (zero-filled).
    """
    steps, batch, hs = out_h.shape
    a_prev = np.empty(hs, dtype=a_h.dtype)
    for b in range(batch):
        for t in range(steps - 1, -1, -1):
            cell = b * steps + t
            # Gates: h_t = (1 − z)·n + z·h_{t−1}, n = tanh(M_nx + r·M_nh).
            for j in range(hs):
                gh = a_h[b, j] + g_out[t, b, j]
                h_prev = out_h[t - 1, b, j] if t > 0 else h0[b, j]
                r = gate_r[t, b, j]
                z = gate_z[t, b, j]
                n = gate_n[t, b, j]
                g_pre_n = gh * (1.0 - z) * (1.0 - n * n)
                a_m[b, j] += g_pre_n * gate_nh[t, b, j] * r * (1.0 - r)
                a_m[b, hs + j] += gh * (h_prev - n) * z * (1.0 - z)
                a_m[b, 2 * hs + j] += g_pre_n
                a_m[b, 3 * hs + j] += g_pre_n * r
                a_prev[j] = gh * z
            # Active hidden columns: ∂L/∂Δh_k = W_hh[:, k]ᵀ δM (rows r, z, nh of M).
            for p in range(off_h[cell], off_h[cell + 1]):
                k = idx_h[p]
                d = val_h[p]
                row = wh[k]
                grow = g_wh[k]
                acc = 0.0
                for j in range(2 * hs):
                    acc += row[j] * a_m[b, j]
                    grow[j] += d * a_m[b, j]
                for j in range(hs):
                    acc += row[2 * hs + j] * a_m[b, 3 * hs + j]
                    grow[2 * hs + j] += d * a_m[b, 3 * hs + j]
                # Δh_k = h_{t−1,k} − ĥ_k and ĥ_k += Δh_k: the delta's gradient goes to h_{t−1}
                # and, with the opposite sign, to the previous memory.
                g = acc + g_dh[t, b, k] + a_hhat[b, k]
                a_prev[k] += g
                a_hhat[b, k] -= g
            for j in range(hs):
                a_h[b, j] = a_prev[j]
            # Active input columns: ∂L/∂Δx_i = W_ih[:, i]ᵀ δM (rows r, z, nx of M).
            for p in range(off_x[cell], off_x[cell + 1]):
                i = idx_x[p]
                d = val_x[p]
                row = wx[i]
                grow = g_wx[i]
                acc = 0.0
                for j in range(3 * hs):
                    acc += row[j] * a_m[b, j]
                    grow[j] += d * a_m[b, j]
                g = acc + g_dx[t, b, i] + a_xhat[b, i]
                g_x[t, b, i] = g
                a_xhat[b, i] -= g


@functools.cache
def _kernels() -> SimpleNamespace | None:
    try:
        import numba
    except ImportError:
        return None
    # Reassociation lets the backward's dot products vectorise; no NaN/inf assumptions are made,
    # so non-finite values propagate as in the reference.
    fast = {"reassoc", "contract"}
    forward = numba.njit(cache=True, nogil=True, fastmath=fast)(_delta_gru_forward)
    backward = numba.njit(cache=True, nogil=True, fastmath=fast)(_delta_gru_backward)
    return SimpleNamespace(forward=forward, backward=backward)


def train_kernels_available() -> bool:
    """Whether the fused numba training kernels can run (numba installed)."""
    return _kernels() is not None


def _np(t: Tensor) -> np.ndarray:
    return t.detach().numpy()


class _DeltaGRUTrain(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, h0, x_hat0, h_hat0, m0, weight_ih, weight_hh, theta_x, theta_h, inclusive):
        steps, batch, n_in = x.shape
        hs = weight_hh.shape[1]
        wx = weight_ih.detach().t().contiguous()
        wh = weight_hh.detach().t().contiguous()
        h = h0.detach().clone(memory_format=torch.contiguous_format)
        x_hat = x_hat0.detach().clone(memory_format=torch.contiguous_format)
        h_hat = h_hat0.detach().clone(memory_format=torch.contiguous_format)
        m = m0.detach().clone(memory_format=torch.contiguous_format)
        out = x.new_empty(steps, batch, hs)
        dx = x.new_empty(steps, batch, n_in)
        dh = x.new_empty(steps, batch, hs)
        gates = [x.new_empty(steps, batch, hs) for _ in range(4)]
        cells = steps * batch
        # Capacity for every column active; np.empty only reserves the pages, and only the used
        # prefix is kept for the backward.
        idx_x = np.empty(cells * n_in, dtype=np.int32)
        idx_h = np.empty(cells * hs, dtype=np.int32)
        val_x = np.empty(cells * n_in, dtype=_np(x).dtype)
        val_h = np.empty(cells * hs, dtype=_np(x).dtype)
        off_x = np.empty(cells + 1, dtype=np.int64)
        off_h = np.empty(cells + 1, dtype=np.int64)
        _kernels().forward(
            _np(x.contiguous()), _np(wx), _np(wh), _np(theta_x), _np(theta_h),
            _np(h), _np(x_hat), _np(h_hat), _np(m), inclusive,
            _np(out), _np(dx), _np(dh), *(_np(g) for g in gates),
            idx_x, val_x, off_x, idx_h, val_h, off_h,
        )
        n_x, n_h = int(off_x[-1]), int(off_h[-1])
        ctx.events = (idx_x[:n_x].copy(), val_x[:n_x].copy(), off_x, idx_h[:n_h].copy(), val_h[:n_h].copy(), off_h)
        ctx.save_for_backward(h0, out, wx, wh, *gates)
        return out, h.clone(), x_hat, h_hat, m, dx, dh

    @staticmethod
    def backward(ctx, g_out, g_h, g_xhat, g_hhat, g_m, g_dx, g_dh):
        h0, out, wx, wh, *gates = ctx.saved_tensors
        steps, batch, hs = out.shape
        n_in = wx.shape[0]

        def grad_or_zeros(g, *shape):
            return out.new_zeros(shape) if g is None else g.contiguous()

        g_out = grad_or_zeros(g_out, steps, batch, hs)
        g_dx = grad_or_zeros(g_dx, steps, batch, n_in)
        g_dh = grad_or_zeros(g_dh, steps, batch, hs)
        # In-place adjoints: start as the final state's gradients, end as the initial state's.
        a_h = grad_or_zeros(g_h, batch, hs).clone()
        a_xhat = grad_or_zeros(g_xhat, batch, n_in).clone()
        a_hhat = grad_or_zeros(g_hhat, batch, hs).clone()
        a_m = grad_or_zeros(g_m, batch, 4 * hs).clone()
        g_x = out.new_zeros(steps, batch, n_in)
        g_wx = torch.zeros_like(wx)
        g_wh = torch.zeros_like(wh)
        idx_x, val_x, off_x, idx_h, val_h, off_h = ctx.events
        _kernels().backward(
            _np(wx), _np(wh), _np(h0.contiguous()), _np(out), *(_np(g) for g in gates),
            idx_x, val_x, off_x, idx_h, val_h, off_h,
            _np(g_out), _np(g_dx), _np(g_dh), _np(a_h), _np(a_xhat), _np(a_hhat), _np(a_m),
            _np(g_x), _np(g_wx), _np(g_wh),
        )
        return g_x, a_h, a_xhat, a_hhat, a_m, g_wx.t(), g_wh.t(), None, None, None


def _theta_vector(theta: float | Tensor, n: int, name: str, like: Tensor) -> Tensor:
    t = torch.as_tensor(theta, dtype=like.dtype).detach()
    if t.dim() > 1 or (t.dim() == 1 and t.shape[0] not in (1, n)):
        raise ValueError(f"{name} must be a number or a tensor broadcastable to ({n},), got shape {tuple(t.shape)}")
    return t.expand(n).contiguous()


def delta_gru_train_scan(
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
) -> tuple[Tensor, DeltaGRUState, DeltaTrace]:
    """DeltaGRU over ``x [T, B, I]`` with the fused event-sparse forward and backward (SPEC §4).

    Same signature and result as :func:`evsnn.functional.delta_gru_scan` (without
    ``fixed_point``), differentiable in ``x``, the state, the weights and the biases (through
    the initial accumulators); CPU float32/float64 tensors of one dtype, numba required.

    Args:
        x: input ``[T, B, I]``.
        state: ``DeltaGRUState(h, x_hat, h_hat, m)`` or ``None`` (zeros, ``M`` at the biases).
        weight_ih, weight_hh, bias_ih, bias_hh: ``nn.GRU``-layout parameters.
        theta_x, theta_h: delta thresholds (numbers or per-feature tensors; no gradient).
        delta_rule: ``"strict"`` (``|Δ| > Θ``) or ``"inclusive"`` (``|Δ| ≥ Θ``).
    """
    inclusive = check_delta_rule(delta_rule) == "inclusive"
    check_steps("the cpu_train delta_gru scan", x)
    if _kernels() is None:
        raise RuntimeError("the fused CPU training kernels need numba: pip install numba (or evsnn[cpu])")
    if x.dim() != 3:
        raise ValueError(f"the cpu_train delta_gru scan expects x of shape [T, B, I], got {tuple(x.shape)}")
    for name, t in (("x", x), ("weight_ih", weight_ih), ("weight_hh", weight_hh)):
        if t.device.type != "cpu":
            raise ValueError(f"the cpu_train delta_gru scan runs on CPU tensors; {name} is on {t.device}")
        if t.dtype not in _DTYPES or t.dtype != x.dtype:
            raise TypeError(
                f"the cpu_train delta_gru scan takes float32 or float64 tensors of one dtype; x is {x.dtype}, "
                f"{name} is {t.dtype}"
            )
    n_in, hs = weight_ih.shape[1], weight_hh.shape[1]
    if state is None:
        state = delta_gru_initial_state(x.shape[1], n_in, hs, bias_ih, bias_hh, x)
    h0, x_hat0, h_hat0, m0 = state
    shapes = ((x.shape[1], hs), (x.shape[1], n_in), (x.shape[1], hs), (x.shape[1], 4 * hs))
    for name, t, shape in zip(DeltaGRUState._fields, state, shapes):
        if t.dtype != x.dtype or t.device.type != "cpu" or tuple(t.shape) != shape:
            raise TypeError(
                f"the cpu_train delta_gru scan expects state field {name!r} as a CPU {x.dtype} tensor of shape "
                f"{shape}, got a {t.device.type} {t.dtype} tensor of shape {tuple(t.shape)}"
            )
    out, h, x_hat, h_hat, m, dx, dh = _DeltaGRUTrain.apply(
        x, h0, x_hat0, h_hat0, m0, weight_ih, weight_hh,
        _theta_vector(theta_x, n_in, "theta_x", x), _theta_vector(theta_h, hs, "theta_h", x), inclusive,
    )
    return out, DeltaGRUState(h, x_hat, h_hat, m), DeltaTrace(dx, dh)
