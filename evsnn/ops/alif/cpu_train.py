"""Fused numba kernels for ALIF on the CPU (SPEC §2): the inference loop and event-sparse training.

Forward (`_alif_forward`, the equations of [`evsnn.functional.alif_dynamics`][evsnn.functional.alif_dynamics]): per
sample and step, ``I_t = current_t + b_hh + Σ_{k: s_{t−1,k} ≠ 0} s_{t−1,k}·W_hhᵀ[k]`` (only the
rows of units that spiked), then ``b_t``, ``B_t``, ``v_t`` and ``s_t = H(v_t − B_t)``. Inference
runs it alone (`alif_loop`, what `ALIFRunner`'s numba kernel calls); training also
keeps per (sample, step) the list of units that spiked (``int32`` indices in a fixed-capacity buffer,
one region per sample, so the custom op's shapes follow from the sizes) and the dense ``b_t`` and
``I_t`` (elementwise, as in any recurrent cell).

Backward (`_alif_backward`), in reverse time per chunk of samples (chunks in parallel):
with ``x_t = v_t − B_t`` and the pseudo-derivative ``g``,

    gs = ∂L/∂s_t,  gx = gs·g(x_t),  gv = α·gv_{t+1} + ∂L/∂v_t + gx,
    gB = ∂L/∂B_t − gx − gv·s_{t−1},  gb = ρ·gb_{t+1} + β·gB,  gI_t = (1 − α)·gv,
    ∂L/∂s_{t−1} = (1 − ρ)·gb − B_t·gv + W_hhᵀ gI_t,

and the recurrent product ``(W_hhᵀ gI_t)_k`` is formed only for units whose ``s_{t−1,k}`` can
pass a gradient: ``x_{t−1,k}`` inside the surrogate's support (every finite ``x`` for a surrogate
without one; with ``state.s`` requiring a gradient, every unit at t = 0). For a surrogate without
a support that is every unit, and the launcher forms the products as one dense matrix product per
step (``torch.mm``, between single-step kernel calls) instead. ``∂L/∂W_hh`` is summed
from the spike lists. A unit that never spikes and never enters the support has its weight
column read by neither pass. The parameters' gradients ``∂α, ∂ρ, ∂b0, ∂β, ∂b_hh`` are summed
per unit; ``α = exp(−1/τ)`` and ``ρ`` stay torch ops ([`evsnn.functional.alif.decay`][evsnn.functional.alif.decay]), so
autograd carries them to τ.

``g`` is evaluated here with the reference's gating (the autograd of
`evsnn.surrogate.Surrogate.__call__`): a NaN or infinite ``x`` passes no gradient, nor does
a finite ``x`` outside a finite support (Triangle: ``|x| ≤ ε`` passes; `Truncated`:
``|x| < ε``), whatever comes from above, NaN included. The formulas are those of
[`evsnn.surrogate`][evsnn.surrogate] (one numba copy, selected by `Surrogate.kernel_spec`); a surrogate
without a kernel spec is refused ([`kernel_surrogate_reason`][evsnn.ops.cpu_common.kernel_surrogate_reason]).

``detach_reset=True`` is the snntorch convention of [`evsnn.interop.snntorch.ALIF`][evsnn.interop.snntorch.ALIF]:
``s_{t−1}`` enters the adaptation trace and the reset without gradient (it still does through
``W_hh s_{t−1}``).

The module runs past 600 lines because each kernel sits beside its launcher, and each launcher
is its custom op with the op's fake kernel and autograd rule: one place per signature.
"""

from __future__ import annotations

import contextlib
import functools
import math
from types import SimpleNamespace

import numpy as np
import torch
from torch import Tensor

from ...functional.alif import ALIFState, ALIFTrace, alif_initial_state, decay
from ...functional.checks import check_steps
from ...surrogate import MultiGaussian, Surrogate
from ..cpu_common import (
    NUMBA_REASON,
    cpu_empty,
    cpu_zeros,
    flat_storage,
    kernel_surrogate_reason,
    numba_available,
    numba_batch_threads,
)
from ..cpu_surrogate import TRIANGLE, pseudo_derivative, surrogate_args
from ..transforms import refuse_double_backward

try:  # numba is optional (the ``cpu`` extra)
    from numba import prange
except ImportError:  # pragma: no cover - without numba the kernels are never compiled
    prange = range

__all__ = ["alif_loop", "alif_train_scan", "kernels_available", "alif_train_cpu_fwd", "alif_train_cpu_bwd"]

_DTYPES = (torch.float32, torch.float64)


def _alif_forward(
    current,
    wt,
    bias_hh,
    alpha,
    rho,
    b0,
    beta,
    v,
    b,
    s,
    out_s,
    out_v,
    out_thr,
    out_b,
    out_i,
    idx,
    off,
    one,
):  # pragma: no cover - numba
    """ALIF over ``current [T, B, N]`` from the state ``v, b, s [B, N]`` (updated in place).

    ``wt = W_hhᵀ [N, N]`` (``[0, 0]``: not recurrent), ``bias_hh [N]`` (``[0]``: none). Writes
    ``s_t, v_t, B_t`` into ``out_s, out_v, out_thr``. Training (``out_b.shape[0] > 0``) also
    writes ``b_t``, ``I_t`` and the units that spiked at step t of sample b,
    ``idx[off[b·T + t, 0] : off[b·T + t, 1]]``; sample b writes only its region (from ``b·T·N``).
    ``one`` is 1 in the arrays' dtype, so that a float32 step rounds like the reference's ops.
    """
    steps, batch, n = current.shape
    recurrent = wt.shape[0] > 0
    has_bias = bias_hh.shape[0] > 0
    train = out_b.shape[0] > 0
    lists = train and recurrent  # the backward reads the spike lists only for W_hh
    for bb in prange(batch):
        acc = np.empty(n, dtype=current.dtype)
        active = np.empty(n, dtype=np.int64)
        n_act = 0
        if recurrent:
            for k in range(n):
                if s[bb, k] != 0:  # a given s_0 may hold any value (NaN too, as the dense product)
                    active[n_act] = k
                    n_act += 1
        pos = bb * steps * n
        for t in range(steps):
            if recurrent:
                for j in range(n):
                    acc[j] = bias_hh[j] if has_bias else 0.0
                for a in range(n_act):
                    k = active[a]
                    w = s[bb, k]
                    row = wt[k]
                    for j in range(n):
                        acc[j] += w * row[j]
            n_act = 0
            cell = bb * steps + t
            if train:
                off[cell, 0] = pos
            for j in range(n):
                i_t = current[t, bb, j] + acc[j] if recurrent else current[t, bb, j]
                s_prev = s[bb, j]
                b_t = rho[j] * b[bb, j] + (one - rho[j]) * s_prev
                thr = b0[j] + beta[j] * b_t
                v_t = alpha[j] * v[bb, j] + (one - alpha[j]) * i_t - thr * s_prev
                # H(v − B): strict, and 0 for a NaN difference, as the reference's Heaviside.
                spike = 1.0 if v_t - thr > 0 else 0.0
                v[bb, j] = v_t
                b[bb, j] = b_t
                s[bb, j] = spike
                out_s[t, bb, j] = spike
                out_v[t, bb, j] = v_t
                out_thr[t, bb, j] = thr
                if train:
                    out_b[t, bb, j] = b_t
                    out_i[t, bb, j] = i_t
                if spike != 0.0:
                    active[n_act] = j
                    n_act += 1
                    if lists:
                        idx[pos] = j
                        pos += 1
            if train:
                off[cell, 1] = pos


def _alif_backward(
    wt,
    alpha,
    rho,
    beta,
    v0,
    b0_state,
    s0,
    out_s,
    out_v,
    out_thr,
    out_b,
    out_i,
    idx,
    off,
    kind,
    params,
    gate,
    detach_reset,
    need_s0,
    zero,
    g_s,
    s_strides,
    g_v,
    g_thr,
    a_v,
    a_b,
    a_s,
    g_cur,
    g_alpha,
    g_rho,
    g_b0,
    g_beta,
    g_bias,
    g_wt,
    rec_in,
    t_first,
    t_last,
):  # pragma: no cover - numba
    """Reverse-time adjoint of `_alif_forward` (training storage).

    ``a_v, a_b, a_s [B, N]`` enter as the gradients of the final ``v, b, s`` and leave as those
    of the initial state (in place). ``g_s, g_v, g_thr`` are the gradients of the spikes and of
    the trace (empty: zero, not read); ``g_s`` comes as the flat storage of a ``[T, B, N]``
    tensor of element strides ``s_strides``, so that a broadcast gradient (a sum's or a mean's,
    strides 0) is read without a full-size copy. Writes ``g_cur [T, B, N]`` (``∂L/∂current``) and accumulates
    per chunk ``c`` of the batch ``∂L/∂α, ρ, b0, β, b_hh`` into ``g_*[c]`` and ``∂L/∂W_hhᵀ`` into
    ``g_wt[c]`` (zero-filled; the caller sums the parts). Surrogate ``kind`` with ``params``;
    ``gate``: the truncation support (``inf`` if none). Runs the steps ``t_last`` down to
    ``t_first``; ``rec_in [B, N]`` (empty: formed here, unit by unit) holds ``W_hhᵀ gI_{t+1}`` for
    every unit when a single step runs.
    """
    steps, batch, n = out_s.shape
    recurrent = wt.shape[0] > 0
    has_gs = g_s.shape[0] > 0
    has_gv = g_v.shape[0] > 0
    has_gthr = g_thr.shape[0] > 0
    given = rec_in.shape[0] > 0
    chunks = g_alpha.shape[0]
    per_chunk = (batch + chunks - 1) // chunks
    for part in prange(chunks):
        lo = part * per_chunk
        hi = min(batch, lo + per_chunk)
        nb = max(0, hi - lo)
        g_at = np.empty((nb, n), dtype=out_v.dtype)
        pass_at = np.empty((nb, n), dtype=np.bool_)
        rec = np.zeros((nb, n), dtype=out_v.dtype)  # W_hhᵀ gI_{t+1}; zero where s_t passes nothing
        live = np.empty(nb, dtype=np.int64)
        for t in range(t_last, t_first - 1, -1):
            s_base = t * s_strides[0]
            # The pseudo-derivatives of the step first, sample by sample along the units (in
            # memory order), for the unit-major recurrent products below.
            for bb in range(lo, hi):
                for j in range(n):
                    x = out_v[t, bb, j] - out_thr[t, bb, j]
                    # The surrogate's pseudo-derivative with the reference's gating: a NaN or
                    # infinite x passes nothing (|x| < gate is false for them, gate = inf
                    # included), nor a finite x outside a finite support.
                    g_at[bb - lo, j] = pseudo_derivative(kind, params, gate, x)
                    # The triangle's G clamps at ±width, inclusive: the reference's product
                    # reaches s_t up to |x| = width (where g is 0, which a NaN product keeps NaN).
                    pass_at[bb - lo, j] = abs(x) < gate and (kind != TRIANGLE or abs(x) <= params[0])
            if recurrent and t + 1 < steps and not given:
                for j in range(n):
                    n_live = 0
                    for bb in range(lo, hi):
                        rec[bb - lo, j] = zero
                        if pass_at[bb - lo, j]:
                            live[n_live] = bb
                            n_live += 1
                    # ∂L/∂s_t gets W_hhᵀ gI_{t+1}: only where s_t can pass it on. Four samples
                    # per pass over the row of W_hhᵀ: the row is loaded once for the four.
                    row = wt[j]
                    p = 0
                    while p + 4 <= n_live:
                        d0 = g_cur[t + 1, live[p]]
                        d1 = g_cur[t + 1, live[p + 1]]
                        d2 = g_cur[t + 1, live[p + 2]]
                        d3 = g_cur[t + 1, live[p + 3]]
                        a0 = zero
                        a1 = zero
                        a2 = zero
                        a3 = zero
                        for i in range(n):
                            ri = row[i]
                            a0 += ri * d0[i]
                            a1 += ri * d1[i]
                            a2 += ri * d2[i]
                            a3 += ri * d3[i]
                        rec[live[p] - lo, j] = a0
                        rec[live[p + 1] - lo, j] = a1
                        rec[live[p + 2] - lo, j] = a2
                        rec[live[p + 3] - lo, j] = a3
                        p += 4
                    while p < n_live:
                        d0 = g_cur[t + 1, live[p]]
                        a0 = zero
                        for i in range(n):
                            a0 += row[i] * d0[i]
                        rec[live[p] - lo, j] = a0
                        p += 1
            # The adjoints along the units (memory order) once every unit's ∂L/∂s_t is known.
            for bb in range(lo, hi):
                for j in range(n):
                    passes = pass_at[bb - lo, j]
                    g = g_at[bb - lo, j]
                    gs = a_s[bb, j] + (rec_in[bb, j] if given and t + 1 < steps else rec[bb - lo, j])
                    if has_gs:
                        gs += g_s[s_base + bb * s_strides[1] + j * s_strides[2]]
                    gx = gs * g if passes else 0.0
                    gv = a_v[bb, j] + gx
                    if has_gv:
                        gv += g_v[t, bb, j]
                    s_prev = out_s[t - 1, bb, j] if t > 0 else s0[bb, j]
                    v_prev = out_v[t - 1, bb, j] if t > 0 else v0[bb, j]
                    b_prev = out_b[t - 1, bb, j] if t > 0 else b0_state[bb, j]
                    g_b_t = -gx - gv * s_prev
                    if has_gthr:
                        g_b_t += g_thr[t, bb, j]
                    gb = a_b[bb, j] + beta[j] * g_b_t
                    gi = (1.0 - alpha[j]) * gv
                    g_cur[t, bb, j] = gi
                    g_alpha[part, j] += gv * (v_prev - out_i[t, bb, j])
                    g_rho[part, j] += gb * (b_prev - s_prev)
                    g_b0[part, j] += g_b_t
                    g_beta[part, j] += g_b_t * out_b[t, bb, j]
                    g_bias[part, j] += gi
                    a_v[bb, j] = alpha[j] * gv
                    a_b[bb, j] = rho[j] * gb
                    if detach_reset:
                        a_s[bb, j] = 0.0
                    else:
                        a_s[bb, j] = (1.0 - rho[j]) * gb - out_thr[t, bb, j] * gv
            if recurrent:
                gw = g_wt[part]
                for bb in range(lo, hi):
                    gi_row = g_cur[t, bb]
                    if t > 0:
                        # ∂L/∂W_hhᵀ[k] += s_{t−1,k}·gI_t for the units that spiked at t − 1 (s = 1).
                        cell = bb * steps + t - 1
                        for p in range(off[cell, 0], off[cell, 1]):
                            grow = gw[idx[p]]
                            for i in range(n):
                                grow[i] += gi_row[i]
                    else:
                        for k in range(n):
                            w = s0[bb, k]
                            if w != 0:
                                grow = gw[k]
                                for i in range(n):
                                    grow[i] += w * gi_row[i]
                        if need_s0:
                            for k in range(n):
                                row = wt[k]
                                acc = zero
                                for i in range(n):
                                    acc += row[i] * gi_row[i]
                                a_s[bb, k] += acc


@functools.cache
def _kernels() -> SimpleNamespace | None:
    try:
        import numba
    except ImportError:
        return None
    # The forward keeps the reference's rounding (no fast-math); the backward lets its dot
    # products reassociate to vectorise, with no NaN/inf assumptions (non-finite values propagate).
    forward = numba.njit(cache=True, nogil=True, parallel=True)(_alif_forward)
    backward = numba.njit(cache=True, nogil=True, parallel=True, fastmath={"reassoc", "contract"})(_alif_backward)
    return SimpleNamespace(forward=forward, backward=backward, numba=numba)


def kernels_available() -> bool:
    """Whether the fused numba ALIF kernels can run (numba installed)."""
    return _kernels() is not None


def _threads(batch: int) -> contextlib.AbstractContextManager[int]:
    return numba_batch_threads(_kernels().numba, batch)


def _np(t: Tensor) -> np.ndarray:
    return t.detach().numpy()


def alif_loop(
    current: np.ndarray,
    table: np.ndarray,
    bias_hh: np.ndarray,
    alpha: np.ndarray,
    rho: np.ndarray,
    b0: np.ndarray,
    beta: np.ndarray,
    v: np.ndarray,
    b: np.ndarray,
    s: np.ndarray,
    out_s: np.ndarray,
    out_v: np.ndarray,
    out_thr: np.ndarray,
) -> None:
    """The fused inference loop over ``current [T, B, N]`` (numpy arrays of one dtype): the state
    ``v, b, s [B, N]`` is updated in place, ``s_t, v_t, B_t`` written into ``out_*``.

    ``table = W_hhᵀ [N, N]`` contiguous (``[0, 0]`` for a non-recurrent layer), ``bias_hh [N]``
    (``[0]``: none), ``alpha, rho, b0, beta [N]``. Samples run in parallel on
    ``torch.get_num_threads()`` threads.
    """
    empty = np.empty((0, 0, 0), dtype=current.dtype)
    with _threads(current.shape[1]):
        _kernels().forward(
            current,
            table,
            bias_hh,
            alpha,
            rho,
            b0,
            beta,
            v,
            b,
            s,
            out_s,
            out_v,
            out_thr,
            empty,
            empty,
            np.empty(0, dtype=np.int32),
            np.empty((0, 2), dtype=np.int64),
            current.dtype.type(1),
        )


# The launchers below are the custom ops themselves (torch.library: one opaque op per call for
# torch.compile, a fake kernel for its shapes, the backward registered as the forward's gradient).
# Every output is a fresh tensor (no output aliases an input or another output).


@torch.library.custom_op("evsnn::alif_train_cpu_fwd", mutates_args=(), device_types="cpu")
def alif_train_cpu_fwd(
    current: Tensor,
    v0: Tensor,
    b0_state: Tensor,
    s0: Tensor,
    alpha: Tensor,
    rho: Tensor,
    b0: Tensor,
    beta: Tensor,
    weight_hh: Tensor | None,
    bias_hh: Tensor | None,
    detach_reset: bool,
    sg_kind: int,
    sg_params: list[float],
    sg_gate: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The fused forward (`_alif_forward`) over ``current [T, B, N]`` (``alpha, rho, b0, beta [N]``)
    with training storage: ``(spikes, v_T, b_T, s_T, v_seq, threshold_seq, b_seq, I_seq, idx, off)``.
    ``idx [B·T·N]`` (int32; empty without ``weight_hh``) holds the units that spiked at step t of
    sample b at ``idx[off[b·T + t, 0] : off[b·T + t, 1]]`` (``off [B·T, 2]``, int64): one region
    of fixed capacity per sample, so the shapes depend on the sizes only. ``detach_reset`` and
    the surrogate's kernel form (``sg_*``) serve the backward."""
    steps, batch, n = current.shape
    recurrent = weight_hh is not None
    wt = cpu_empty((n, n), current.dtype).copy_(weight_hh.detach().t()) if recurrent else current.new_zeros(0, 0)
    bias = current.new_zeros(0) if bias_hh is None else bias_hh
    work = [t.detach().clone(memory_format=torch.contiguous_format) for t in (v0, b0_state, s0)]
    outs = [cpu_empty((steps, batch, n), current.dtype) for _ in range(5)]  # s, v, B, b, I
    # Zero-filled (calloc: the unused tail of each region is never touched): the op's outputs are
    # deterministic, that tail included.
    idx = cpu_zeros((batch * steps * n if recurrent else 0,), torch.int32)
    off = torch.empty(batch * steps, 2, dtype=torch.int64)
    vec = [t.detach().contiguous() for t in (alpha, rho, b0, beta, bias)]
    with _threads(batch):
        _kernels().forward(
            _np(current.detach().contiguous()),
            _np(wt),
            _np(vec[4]),
            *(_np(t) for t in vec[:4]),
            *(_np(t) for t in work),
            *(_np(t) for t in outs),
            _np(idx),
            _np(off),
            _np(current).dtype.type(1),
        )
    spikes, vs, thrs, b_seq, i_seq = outs
    return spikes, *work, vs, thrs, b_seq, i_seq, idx, off


@alif_train_cpu_fwd.register_fake
def _(current, v0, b0_state, s0, alpha, rho, b0, beta, weight_hh, bias_hh, detach_reset, sg_kind, sg_params, sg_gate):
    steps, batch, n = current.shape
    seqs = [current.new_empty(steps, batch, n) for _ in range(5)]
    state = [current.new_empty(batch, n) for _ in range(3)]
    idx = current.new_empty(batch * steps * n if weight_hh is not None else 0, dtype=torch.int32)
    off = current.new_empty(batch * steps, 2, dtype=torch.int64)
    return seqs[0], *state, *seqs[1:], idx, off


@torch.library.custom_op("evsnn::alif_train_cpu_bwd", mutates_args=(), device_types="cpu")
def alif_train_cpu_bwd(
    g_s: Tensor | None,
    g_vT: Tensor | None,
    g_bT: Tensor | None,
    g_sT: Tensor | None,
    g_v: Tensor | None,
    g_thr: Tensor | None,
    v0: Tensor,
    b0_state: Tensor,
    s0: Tensor,
    alpha: Tensor,
    rho: Tensor,
    beta: Tensor,
    weight_hh: Tensor | None,
    spikes: Tensor,
    vs: Tensor,
    thrs: Tensor,
    b_seq: Tensor,
    i_seq: Tensor,
    idx: Tensor,
    off: Tensor,
    detach_reset: bool,
    need_s0: bool,
    sg_kind: int,
    sg_params: list[float],
    sg_gate: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The fused backward (`_alif_backward`) from the output gradients (``None``: zero) and
    `alif_train_cpu_fwd`'s results: ``(∂current, ∂v_0, ∂b_0, ∂s_0, ∂α, ∂ρ, ∂b0, ∂β, ∂W_hh, ∂b_hh)``
    (``∂W_hh`` ``[0, 0]`` without ``weight_hh``). ``need_s0``: form ``∂L/∂s_0`` for every unit."""
    steps, batch, n = spikes.shape
    like = spikes
    recurrent = weight_hh is not None
    wt = cpu_empty((n, n), like.dtype).copy_(weight_hh.detach().t()) if recurrent else like.new_zeros(0, 0)
    none = like.new_zeros(0, 0, 0)

    def grad(g, shape):
        # In-place adjoints: they start as the final state's gradients and end as the initial state's.
        if g is None:
            return like.new_zeros(shape)
        return g.detach().to(like.dtype).clone(memory_format=torch.contiguous_format)

    a_v, a_b, a_s = grad(g_vT, (batch, n)), grad(g_bT, (batch, n)), grad(g_sT, (batch, n))
    # A zero gradient (None) is not materialised: the kernel skips an empty one.
    if g_s is None:
        g_s, s_strides = like.new_empty(0), torch.zeros(3, dtype=torch.int64)
    else:
        g_s, s_strides = flat_storage(g_s.detach().to(like.dtype))
    g_cur = cpu_empty((steps, batch, n), like.dtype)
    zero = np.float32(0) if like.dtype == torch.float32 else np.float64(0)
    outs = (spikes, vs, thrs, b_seq, i_seq)
    with _threads(batch) as parts:
        sums = [like.new_zeros(parts, n) for _ in range(5)]  # alpha, rho, b0, beta, bias_hh
        g_wt = cpu_zeros((parts, n, n) if recurrent else (parts, 0, 0), like.dtype)
        args = (
            _np(wt), _np(alpha.detach().contiguous()), _np(rho.detach().contiguous()),
            _np(beta.detach().contiguous()), *(_np(t.detach().contiguous()) for t in (v0, b0_state, s0)),
            *(_np(t.detach()) for t in outs), _np(idx), _np(off),
            sg_kind, np.asarray(sg_params, dtype=np.float64), sg_gate, detach_reset, need_s0, zero,
            _np(g_s), _np(s_strides),
            *(_np(none if g is None else g.detach().contiguous()) for g in (g_v, g_thr)),
            _np(a_v), _np(a_b), _np(a_s), _np(g_cur), *(_np(t) for t in sums), _np(g_wt),
        )  # fmt: skip
        if recurrent and math.isinf(sg_gate) and sg_kind != TRIANGLE:
            # A surrogate without a support passes a gradient to every unit's s_t: the recurrent
            # products W_hhᵀ gI_{t+1} are then a dense [B, N] × [N, N] product per step, which
            # torch's matrix product forms faster than the kernel's per-unit dot products.
            rec = cpu_empty((batch, n), like.dtype)
            w = weight_hh.detach().to(like.dtype).contiguous()
            kernel = _kernels().backward
            kernel(*args, _np(rec[:0]), steps - 1, steps - 1)
            for t in range(steps - 2, -1, -1):
                torch.mm(g_cur[t + 1], w, out=rec)
                kernel(*args, _np(rec), t, t)
        else:
            _kernels().backward(*args, _np(like.new_zeros(0, 0)), 0, steps - 1)
    # One part per thread: with one thread the part is the sum (no copy).
    g_alpha, g_rho, g_b0, g_beta, g_bias, g_wt = (t[0] if parts == 1 else t.sum(0) for t in (*sums, g_wt))
    return g_cur, a_v, a_b, a_s, g_alpha, g_rho, g_b0, g_beta, g_wt.t().contiguous(), g_bias


@alif_train_cpu_bwd.register_fake
def _(g_s, g_vT, g_bT, g_sT, g_v, g_thr, v0, b0_state, s0, alpha, rho, beta, weight_hh, spikes, *rest):
    steps, batch, n = spikes.shape
    w = (n, n) if weight_hh is not None else (0, 0)
    return (
        spikes.new_empty(steps, batch, n), *(spikes.new_empty(batch, n) for _ in range(3)),
        *(spikes.new_empty(n) for _ in range(4)), spikes.new_empty(w), spikes.new_empty(n),
    )  # fmt: skip


def _setup_train(ctx, inputs, output) -> None:
    current, v0, b0_state, s0, alpha, rho, b0, beta, weight_hh, bias_hh, detach_reset, *surrogate = inputs
    spikes, _, _, _, v_seq, thr_seq, b_seq, i_seq, idx, off = output
    ctx.save_for_backward(v0, b0_state, s0, alpha, rho, beta, weight_hh, spikes, v_seq, thr_seq, b_seq, i_seq, idx, off)
    ctx.detach_reset = detach_reset
    ctx.surrogate = surrogate
    ctx.has_bias = bias_hh is not None
    # An output without a gradient reaches the backward as None, not as zeros of its shape (the
    # two internal sequences and the spike lists alone are 39 MB at N = 1024, B = 32, T = 100).
    ctx.set_materialize_grads(False)
    ctx.mark_non_differentiable(b_seq, i_seq, idx, off)


def _backward_train(ctx, g_s, g_vT, g_bT, g_sT, g_v, g_thr, *_residuals):
    v0, b0_state, s0, alpha, rho, beta, weight_hh, *saved = ctx.saved_tensors
    refuse_double_backward("cpu_event", "alif", g_s, g_vT, g_bT, g_sT, g_v, g_thr, alpha, rho, beta, weight_hh, *saved)
    grads = torch.ops.evsnn.alif_train_cpu_bwd(
        g_s, g_vT, g_bT, g_sT, g_v, g_thr, v0, b0_state, s0, alpha, rho, beta, weight_hh, *saved,
        ctx.detach_reset, bool(ctx.needs_input_grad[3]), *ctx.surrogate,
    )  # fmt: skip
    *state_grads, g_w, g_bias = grads
    return (*state_grads, g_w if weight_hh is not None else None, g_bias if ctx.has_bias else None,
            None, None, None, None)  # fmt: skip


alif_train_cpu_fwd.register_autograd(_backward_train, setup_context=_setup_train)


def _vector(value: float | Tensor, n: int, name: str, like: Tensor) -> Tensor:
    """``value`` as an ``[n]`` tensor of ``like``'s dtype, differentiable (expand)."""
    if isinstance(value, Tensor):
        if value.dtype != like.dtype or value.device.type != "cpu":
            raise TypeError(
                f"the fused ALIF scan expects {name} as a CPU {like.dtype} tensor or a number, got a "
                f"{value.device.type} {value.dtype} tensor"
            )
        if value.dim() > 1 or (value.dim() == 1 and value.shape[0] not in (1, n)):
            raise ValueError(
                f"{name} must be a number or a tensor broadcastable to ({n},), got shape {tuple(value.shape)}"
            )
        return value.expand(n).contiguous()
    return torch.full((n,), float(value), dtype=like.dtype)


def alif_train_scan(
    current: Tensor,
    state: ALIFState | None,
    *,
    tau_mem: Tensor,
    tau_adapt: Tensor,
    b0: float | Tensor = 0.01,
    beta: float | Tensor = 1.8,
    surrogate: Surrogate | None = None,
    weight_hh: Tensor | None = None,
    bias_hh: Tensor | None = None,
    detach_reset: bool = False,
) -> tuple[Tensor, ALIFState, ALIFTrace]:
    """ALIF over ``current [T, B, N]`` with the fused event-sparse forward and backward (SPEC §2).

    Same signature and result as [`evsnn.functional.alif_scan`][evsnn.functional.alif_scan], differentiable in the
    current, the state, ``tau_mem``, ``tau_adapt``, ``b0``, ``beta``, ``weight_hh`` and
    ``bias_hh``; CPU float32/float64 tensors of one dtype, numba required.

    Args:
        current: the input current ``W_ih x_t + b_ih``, ``[T, B, N]``.
        state: ``ALIFState(v, b, s)`` ``[B, N]`` each, or ``None`` (``v = s = 0``, ``b = b0``).
        tau_mem: per-neuron membrane time constants ``[N]`` (clamped to ≥ 1 step).
        tau_adapt: per-neuron adaptation time constants ``[N]`` (clamped to ≥ 1 step).
        b0: baseline threshold (a number or an ``[N]`` tensor).
        beta: adaptation strength (a number or an ``[N]`` tensor).
        surrogate: the spike's pseudo-derivative (default ``MultiGaussian()``); one with a
            kernel spec ([`kernel_surrogate_reason`][evsnn.ops.cpu_common.kernel_surrogate_reason]).
        weight_hh: the recurrent weights ``[N, N]``, or ``None``.
        bias_hh: the recurrent bias ``[N]``, or ``None``.
        detach_reset: ``s_{t−1}`` enters the adaptation trace and the reset without gradient
            (the snntorch convention of [`evsnn.interop.snntorch.ALIF`][evsnn.interop.snntorch.ALIF]).
    """
    surrogate = MultiGaussian() if surrogate is None else surrogate
    reason = kernel_surrogate_reason(surrogate)
    if reason is not None:
        raise TypeError(f"the fused ALIF scan cannot run: {reason}")
    check_steps("the fused ALIF scan", current)
    if not numba_available():  # not _kernels(): torch.compile traces this check, numba's jit it cannot
        raise RuntimeError(f"the fused ALIF scan: {NUMBA_REASON}")
    if current.dim() != 3:
        raise ValueError(f"the fused ALIF scan expects current of shape [T, B, N], got {tuple(current.shape)}")
    steps, batch, n = current.shape
    named = {"current": current, "tau_mem": tau_mem, "tau_adapt": tau_adapt, "weight_hh": weight_hh, "bias_hh": bias_hh}
    for name, t in named.items():
        if t is None:
            continue
        if t.device.type != "cpu":
            raise ValueError(f"the fused ALIF scan runs on CPU tensors; {name} is on {t.device}")
        if t.dtype not in _DTYPES or t.dtype != current.dtype:
            raise TypeError(
                f"the fused ALIF scan takes float32 or float64 tensors of one dtype; current is {current.dtype}, "
                f"{name} is {t.dtype}"
            )
    shapes = {"tau_mem": (n,), "tau_adapt": (n,), "weight_hh": (n, n), "bias_hh": (n,)}
    for name, shape in shapes.items():
        t = named[name]
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"the fused ALIF scan expects {name} of shape {shape}, got {tuple(t.shape)}")
    if bias_hh is not None and weight_hh is None:
        raise ValueError("the fused ALIF scan got bias_hh without weight_hh (bias_hh belongs to the recurrent product)")
    b0_vec = _vector(b0, n, "b0", current)
    if state is None:
        state = alif_initial_state(current[0], b0_vec)
    for name, t in zip(ALIFState._fields, state):
        if (
            not isinstance(t, Tensor)
            or t.dtype != current.dtype
            or t.device.type != "cpu"
            or tuple(t.shape) != (batch, n)
        ):
            got = (
                f"a {t.device.type} {t.dtype} tensor of shape {tuple(t.shape)}"
                if isinstance(t, Tensor)
                else type(t).__name__
            )
            raise TypeError(
                f"the fused ALIF scan expects state field {name!r} as a CPU {current.dtype} tensor of shape "
                f"{(batch, n)}, got {got}"
            )
    spikes, v_t, b_t, s_t, vs, thrs, *_ = torch.ops.evsnn.alif_train_cpu_fwd(
        current,
        *state,
        decay(tau_mem),
        decay(tau_adapt),
        b0_vec,
        _vector(beta, n, "beta", current),
        weight_hh,
        bias_hh,
        bool(detach_reset),
        *surrogate_args(surrogate),
    )
    return spikes, ALIFState(v_t, b_t, s_t), ALIFTrace(vs, thrs)
