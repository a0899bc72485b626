"""Fused numba training kernels for DeltaGRU and DeltaLSTM on the CPU: event-sparse forward *and* backward.

Forward (SPEC §4, the equations of [`evsnn.functional.delta_gru_scan`][evsnn.functional.delta_gru_scan] and
[`delta_lstm_scan`][evsnn.functional.delta_lstm_scan]): per sample and step, encode ``Δx_t`` and ``Δh_{t−1}``,
add the rows of ``W_ihᵀ``/``W_hhᵀ`` of the *active* columns to the accumulators ``M``, gates,
``h_t``. The samples of a thread go through the rows of ``W_hhᵀ`` in blocks together, each adding
its active rows four at a time, so a row comes from L3 once per step for all of them. It keeps
for the backward only what the backward reads: per (step, sample) the list of
active input and hidden columns and their delta values (``int32`` index + value, in buffers of
fixed capacity, one region per sample, so the custom op's shapes follow from the sizes), and
the gate values (GRU ``r, z, n, M_nh``; LSTM ``i, f, g, o`` and ``c_t``: elementwise, dense as in
any GRU/LSTM). The batch is cut into one run of samples per thread (``torch.get_num_threads()``).

Backward (Chen et al.'s symmetric sparse BPTT, SPEC §4), in reverse time:
``δM_t = gates' gradient + δM_{t+1}`` (the accumulator's gradient accumulates), and only for the
columns active at step t: ``∂L/∂Δs_t = Wᵀ δM_t`` (one dot product per active column), then
``∂L/∂W[:, k] += δM_t · Δs_t[k]``; unit-major over a thread's samples, so that a row of
``W_hhᵀ`` and of its gradient is read once per step for all the samples in which it is active.
Columns that were inactive are never read, forward or
backward: a non-finite weight column of an input that never changes cannot reach anything.

The masks are piecewise constant, so this is the exact gradient (autograd of the reference),
with the reference's mask: ``|Δ| > Θ`` (strict) or ``|Δ| ≥ Θ`` (inclusive, which at ``Θ = 0``
also passes the gradient of a zero difference). The thresholds get no gradient (as in the
reference). Sums are grouped differently from the reference's, so results agree to rounding.

The module runs past 600 lines because it holds the forward and backward kernels of both cells,
each blocked over the samples of a thread for cache reuse, beside their launchers and custom-op
registrations: splitting them would separate each kernel from the launcher that sizes its buffers.
"""

from __future__ import annotations

import contextlib
import functools
from types import SimpleNamespace

import numpy as np
import torch
from torch import Tensor

from ...functional.checks import check_steps

try:  # numba is optional (the ``cpu`` extra); this module is imported only on the training path
    from numba import prange
except ImportError:  # pragma: no cover - without numba the kernels are never compiled
    prange = range


from ...functional.delta import (
    DeltaGRUState,
    DeltaLSTMState,
    DeltaTrace,
    check_delta_rule,
    delta_gru_initial_state,
    delta_lstm_initial_state,
)
from ..cpu_common import NUMBA_REASON, _expand_theta, cpu_zeros, flat_storage, numba_available, numba_batch_threads
from ..cpu_vecmath import install, sigmoid, tanh
from ..transforms import refuse_double_backward

__all__ = [
    "delta_gru_train_scan",
    "delta_lstm_train_scan",
    "kernels_available",
    "delta_train_cpu_fwd",
    "delta_train_cpu_bwd",
]

_DTYPES = (torch.float32, torch.float64)

# Rows of W_hhᵀ per block of the forward's gather: 64 rows of 3H–4H values (768 KiB–1 MiB in
# float32 at H = 1024) stay in a core's L2 beside the accumulators while every sample adds its rows.
_ROW_BLOCK = 64


def _delta_forward(
    x,
    wx,
    wh,
    theta_x,
    theta_h,
    h,
    c,
    x_hat,
    h_hat,
    m,
    inclusive,
    gru,
    out_h,
    out_c,
    out_dx,
    out_dh,
    gate0,
    gate1,
    gate2,
    gate3,
    idx_x,
    val_x,
    off_x,
    idx_h,
    val_h,
    off_h,
    chunks,
):  # pragma: no cover - numba
    """DeltaGRU (``gru``) or DeltaLSTM over ``x [T, B, I]`` from the state ``h, (c,) x̂, ĥ, M``
    (updated in place; ``c``/``out_c`` are unused placeholders for the GRU).

    ``wx = W_ihᵀ [I, G·H]``, ``wh = W_hhᵀ [H, G·H]``. Writes ``h_t``, ``c_t``, ``Δx_t``,
    ``Δh_{t−1}`` and the gates (GRU: ``r, z, n, M_nh``; LSTM: ``i, f, g, o``); the active columns
    of step t of sample b are ``idx_*[off_*[b·T + t, 0] : off_*[b·T + t, 1]]``, their deltas in
    ``val_*``; sample b writes only its own region (from ``b·T·I`` / ``b·T·H`` on). The batch is
    cut into ``chunks`` runs of samples that run in parallel. GRU accumulators ``M`` are ``(r, z, nx, nh)``: input rows feed ``r, z, nx``,
    hidden rows ``r, z, nh`` (SPEC §4); LSTM rows feed all four gates.
    """
    steps, batch, n_in = x.shape
    hs = h.shape[1]
    x_cols = wx.shape[1]
    one = np.ones(1, dtype=h.dtype)[0]
    per_chunk = (batch + chunks - 1) // chunks
    for part in prange(chunks):
        b0 = part * per_chunk
        nb = max(0, min(batch, b0 + per_chunk) - b0)
        pos_x = np.empty(nb, dtype=np.int64)
        pos_h = np.empty(nb, dtype=np.int64)
        done = np.empty(nb, dtype=np.int64)
        for bb in range(nb):
            pos_x[bb] = (b0 + bb) * steps * n_in
            pos_h[bb] = (b0 + bb) * steps * hs
        for t in range(steps):
            for bb in range(nb):
                b = b0 + bb
                cell = b * steps + t
                # The deltas of the step and their lists; the rows are added below.
                px = pos_x[bb]
                off_x[cell, 0] = px
                for i in range(n_in):
                    d = x[t, b, i] - x_hat[b, i]
                    # The reference's mask, written as "not ≤" / "not <" (a NaN difference passes on).
                    if (not abs(d) < theta_x[i]) if inclusive else (not abs(d) <= theta_x[i]):
                        out_dx[t, b, i] = d
                        x_hat[b, i] += d
                        idx_x[px] = i
                        val_x[px] = d
                        px += 1
                    else:
                        out_dx[t, b, i] = 0.0
                off_x[cell, 1] = px
                pos_x[bb] = px
                ph = pos_h[bb]
                off_h[cell, 0] = ph
                for k in range(hs):
                    d = h[b, k] - h_hat[b, k]
                    if (not abs(d) < theta_h[k]) if inclusive else (not abs(d) <= theta_h[k]):
                        out_dh[t, b, k] = d
                        h_hat[b, k] += d
                        idx_h[ph] = k
                        val_h[ph] = d
                        ph += 1
                    else:
                        out_dh[t, b, k] = 0.0
                off_h[cell, 1] = ph
                pos_h[bb] = ph
                done[bb] = off_h[cell, 0]
                # The input rows (W_ihᵀ is small enough to stay in L2), four per pass over M, the
                # last one to three in one pass.
                a = m[b]
                p = off_x[cell, 0]
                while p + 4 <= px:
                    d0, d1, d2, d3 = val_x[p], val_x[p + 1], val_x[p + 2], val_x[p + 3]
                    r0, r1, r2, r3 = wx[idx_x[p]], wx[idx_x[p + 1]], wx[idx_x[p + 2]], wx[idx_x[p + 3]]
                    for j in range(x_cols):
                        a[j] += d0 * r0[j] + d1 * r1[j] + d2 * r2[j] + d3 * r3[j]
                    p += 4
                if px - p == 3:
                    d0, d1, d2 = val_x[p], val_x[p + 1], val_x[p + 2]
                    r0, r1, r2 = wx[idx_x[p]], wx[idx_x[p + 1]], wx[idx_x[p + 2]]
                    for j in range(x_cols):
                        a[j] += d0 * r0[j] + d1 * r1[j] + d2 * r2[j]
                elif px - p == 2:
                    d0, d1 = val_x[p], val_x[p + 1]
                    r0, r1 = wx[idx_x[p]], wx[idx_x[p + 1]]
                    for j in range(x_cols):
                        a[j] += d0 * r0[j] + d1 * r1[j]
                elif px - p == 1:
                    d0 = val_x[p]
                    r0 = wx[idx_x[p]]
                    for j in range(x_cols):
                        a[j] += d0 * r0[j]
            # The hidden rows: the samples go through the units in blocks of `_ROW_BLOCK` rows, so
            # the rows a block needs come from L3 once per step for the whole batch (not once per
            # sample), and each sample adds its rows of the block four at a time, the last one to
            # three in one pass (its M read and written once per pass). GRU rows feed r, z and
            # M_nh (SPEC §4).
            for k_end in range(_ROW_BLOCK, hs + _ROW_BLOCK, _ROW_BLOCK):
                for bb in range(nb):
                    b = b0 + bb
                    a = m[b]
                    end = off_h[b * steps + t, 1]
                    p = done[bb]
                    q = p
                    while q < end and idx_h[q] < k_end:
                        q += 1
                    done[bb] = q
                    while p + 4 <= q:
                        d0, d1, d2, d3 = val_h[p], val_h[p + 1], val_h[p + 2], val_h[p + 3]
                        r0, r1, r2, r3 = wh[idx_h[p]], wh[idx_h[p + 1]], wh[idx_h[p + 2]], wh[idx_h[p + 3]]
                        if gru:
                            for j in range(2 * hs):
                                a[j] += d0 * r0[j] + d1 * r1[j] + d2 * r2[j] + d3 * r3[j]
                            for j in range(hs):
                                jj = 2 * hs + j
                                a[3 * hs + j] += d0 * r0[jj] + d1 * r1[jj] + d2 * r2[jj] + d3 * r3[jj]
                        else:
                            for j in range(4 * hs):
                                a[j] += d0 * r0[j] + d1 * r1[j] + d2 * r2[j] + d3 * r3[j]
                        p += 4
                    if q - p == 3:
                        d0, d1, d2 = val_h[p], val_h[p + 1], val_h[p + 2]
                        r0, r1, r2 = wh[idx_h[p]], wh[idx_h[p + 1]], wh[idx_h[p + 2]]
                        if gru:
                            for j in range(2 * hs):
                                a[j] += d0 * r0[j] + d1 * r1[j] + d2 * r2[j]
                            for j in range(hs):
                                jj = 2 * hs + j
                                a[3 * hs + j] += d0 * r0[jj] + d1 * r1[jj] + d2 * r2[jj]
                        else:
                            for j in range(4 * hs):
                                a[j] += d0 * r0[j] + d1 * r1[j] + d2 * r2[j]
                    elif q - p == 2:
                        d0, d1 = val_h[p], val_h[p + 1]
                        r0, r1 = wh[idx_h[p]], wh[idx_h[p + 1]]
                        if gru:
                            for j in range(2 * hs):
                                a[j] += d0 * r0[j] + d1 * r1[j]
                            for j in range(hs):
                                jj = 2 * hs + j
                                a[3 * hs + j] += d0 * r0[jj] + d1 * r1[jj]
                        else:
                            for j in range(4 * hs):
                                a[j] += d0 * r0[j] + d1 * r1[j]
                    elif q - p == 1:
                        d0 = val_h[p]
                        r0 = wh[idx_h[p]]
                        if gru:
                            for j in range(2 * hs):
                                a[j] += d0 * r0[j]
                            for j in range(hs):
                                jj = 2 * hs + j
                                a[3 * hs + j] += d0 * r0[jj]
                        else:
                            for j in range(4 * hs):
                                a[j] += d0 * r0[j]
            # The gate math in the arrays' dtype, one loop per cell type over the units: SIMD code
            # with the vectorisable sigmoid/tanh.
            for bb in range(nb):
                b = b0 + bb
                if gru:
                    for j in range(hs):
                        r = sigmoid(m[b, j])
                        z = sigmoid(m[b, hs + j])
                        nh = m[b, 3 * hs + j]
                        n = tanh(m[b, 2 * hs + j] + r * nh)
                        h_j = (one - z) * n + z * h[b, j]
                        h[b, j] = h_j
                        out_h[t, b, j] = h_j
                        gate0[t, b, j] = r
                        gate1[t, b, j] = z
                        gate2[t, b, j] = n
                        gate3[t, b, j] = nh
                else:
                    for j in range(hs):
                        gi = sigmoid(m[b, j])
                        gf = sigmoid(m[b, hs + j])
                        gg = tanh(m[b, 2 * hs + j])
                        go = sigmoid(m[b, 3 * hs + j])
                        c_j = gf * c[b, j] + gi * gg
                        c[b, j] = c_j
                        h_j = go * tanh(c_j)
                        h[b, j] = h_j
                        out_c[t, b, j] = c_j
                        out_h[t, b, j] = h_j
                        gate0[t, b, j] = gi
                        gate1[t, b, j] = gf
                        gate2[t, b, j] = gg
                        gate3[t, b, j] = go


def _delta_backward(
    wx,
    wh,
    h0,
    c0,
    gru,
    out_h,
    out_c,
    gate0,
    gate1,
    gate2,
    gate3,
    idx_x,
    val_x,
    off_x,
    idx_h,
    val_h,
    off_h,
    g_out,
    out_strides,
    g_dx,
    g_dh,
    a_h,
    a_c,
    a_xhat,
    a_hhat,
    a_m,
    g_x,
    g_wx_parts,
    g_wh_parts,
):  # pragma: no cover - numba
    """Reverse-time adjoint of `_delta_forward`.

    ``a_h, a_c, a_xhat, a_hhat, a_m`` enter as the gradients of the final state and leave as
    those of the initial state (in place; ``a_c`` unused for the GRU). ``g_out``, ``g_dx``,
    ``g_dh`` are the gradients of the outputs and of the delta traces (each empty where it is
    zero); ``g_out`` comes as the flat storage of a ``[T, B, H]`` tensor of element strides
    ``out_strides``, so that a broadcast gradient (a sum's or mean's, strides 0) is read
    without being copied out to full size. Writes ``g_x [T, B, I]``
    (zero-filled by the caller) and accumulates ``∂L/∂W_ihᵀ``, ``∂L/∂W_hhᵀ`` into
    ``g_wx_parts[c]``, ``g_wh_parts[c]`` (zero-filled), one part per chunk ``c`` of the batch:
    the chunks run in parallel and the caller sums the parts.
    """
    steps, batch, hs = out_h.shape
    x_cols = wx.shape[1]
    chunks = g_wx_parts.shape[0]
    # An output whose gradient is zero (autograd's None) comes as an empty array and is not read.
    has_out = g_out.shape[0] != 0
    has_dx = g_dx.shape[0] != 0
    has_dh = g_dh.shape[0] != 0
    per_chunk = (batch + chunks - 1) // chunks
    for part in prange(chunks):
        b0 = part * per_chunk
        nb = max(0, min(batch, b0 + per_chunk) - b0)
        a_prev = np.empty((nb, hs), dtype=a_h.dtype)
        # Per column (hidden, then input), the chunk's samples in which it is active at the step,
        # and where in idx_*/val_* that entry sits.
        n_in = wx.shape[0]
        act_at = np.empty((max(hs, n_in), nb), dtype=np.int64)
        act_p = np.empty((max(hs, n_in), nb), dtype=np.int64)
        n_act = np.empty(max(hs, n_in), dtype=np.int64)
        zero_row = np.zeros(a_m.shape[1], dtype=a_m.dtype)
        zero = zero_row[0]
        one = np.ones(1, dtype=a_m.dtype)[0]
        g_wx = g_wx_parts[part]
        g_wh = g_wh_parts[part]
        for t in range(steps - 1, -1, -1):
            for bb in range(nb):
                b = b0 + bb
                # The previous state as a row and the constants in the arrays' dtype: the loop has
                # no branch and no float64 arithmetic on float32 data, and vectorises.
                prev = (out_h[t - 1, b] if gru else out_c[t - 1, b]) if t > 0 else (h0[b] if gru else c0[b])
                if has_out:
                    base = t * out_strides[0] + b * out_strides[1]
                    if out_strides[2] == 1:
                        g_row = g_out[base : base + hs]
                        for j in range(hs):
                            a_h[b, j] += g_row[j]
                    else:
                        for j in range(hs):
                            a_h[b, j] += g_out[base + j * out_strides[2]]
                # δM_t = the gates' gradient + δM_{t+1}.
                for j in range(hs):
                    gh = a_h[b, j]
                    if gru:
                        # h_t = (1 − z)·n + z·h_{t−1}, n = tanh(M_nx + r·M_nh).
                        h_prev = prev[j]
                        r = gate0[t, b, j]
                        z = gate1[t, b, j]
                        n = gate2[t, b, j]
                        g_pre_n = gh * (one - z) * (one - n * n)
                        a_m[b, j] += g_pre_n * gate3[t, b, j] * r * (one - r)
                        a_m[b, hs + j] += gh * (h_prev - n) * z * (one - z)
                        a_m[b, 2 * hs + j] += g_pre_n
                        a_m[b, 3 * hs + j] += g_pre_n * r
                        a_prev[bb, j] = gh * z
                    else:
                        # c_t = f·c_{t−1} + i·g, h_t = o·tanh(c_t); h_{t−1} enters only through Δh.
                        c_prev = prev[j]
                        gi = gate0[t, b, j]
                        gf = gate1[t, b, j]
                        gg = gate2[t, b, j]
                        go = gate3[t, b, j]
                        tc = np.tanh(out_c[t, b, j])
                        gc = a_c[b, j] + gh * go * (one - tc * tc)
                        a_m[b, j] += gc * gg * gi * (one - gi)
                        a_m[b, hs + j] += gc * c_prev * gf * (one - gf)
                        a_m[b, 2 * hs + j] += gc * gi * (one - gg * gg)
                        a_m[b, 3 * hs + j] += gh * tc * go * (one - go)
                        a_c[b, j] = gc * gf
                        a_prev[bb, j] = zero
            # Active hidden columns: ∂L/∂Δh_k = W_hh[:, k]ᵀ δM (GRU: rows r, z, nh of M) and
            # ∂L/∂W_hh[:, k] += δM · Δh_k, unit-major over the chunk's samples: each row of W_hh
            # and of its gradient is read once per step for all samples (not once per sample),
            # and meets the samples in which its column is active up to four at a time.
            for k in range(hs):
                n_act[k] = 0
            for bb in range(nb):
                cell = (b0 + bb) * steps + t
                for p in range(off_h[cell, 0], off_h[cell, 1]):
                    k = idx_h[p]
                    act_at[k, n_act[k]] = bb
                    act_p[k, n_act[k]] = p
                    n_act[k] += 1
            for k in range(hs):
                n = n_act[k]
                if n == 0:
                    continue
                row = wh[k]
                grow = g_wh[k]
                q = 0
                while q < n:
                    # Up to four samples per pass; the rows of a shorter pass's absent samples are
                    # placeholders that its loop does not read.
                    s0 = act_at[k, q]
                    m0 = a_m[b0 + s0]
                    d0 = val_h[act_p[k, q]]
                    m1, m2, m3 = zero_row, zero_row, zero_row
                    d1, d2, d3 = zero, zero, zero
                    if q + 1 < n:
                        m1 = a_m[b0 + act_at[k, q + 1]]
                        d1 = val_h[act_p[k, q + 1]]
                    if q + 2 < n:
                        m2 = a_m[b0 + act_at[k, q + 2]]
                        d2 = val_h[act_p[k, q + 2]]
                    if q + 3 < n:
                        m3 = a_m[b0 + act_at[k, q + 3]]
                        d3 = val_h[act_p[k, q + 3]]
                    acc0 = zero
                    acc1 = zero
                    acc2 = zero
                    acc3 = zero
                    # One loop per count of samples, not a pass padded to four with zero rows (which
                    # cost loads and multiply-adds as real ones): most columns are active in one to
                    # three samples of a step.
                    c = min(4, n - q)
                    if c == 4:
                        if gru:
                            for j in range(2 * hs):
                                rj = row[j]
                                acc0 += rj * m0[j]
                                acc1 += rj * m1[j]
                                acc2 += rj * m2[j]
                                acc3 += rj * m3[j]
                                grow[j] += d0 * m0[j] + d1 * m1[j] + d2 * m2[j] + d3 * m3[j]
                            for j in range(hs):
                                jm = 3 * hs + j
                                rj = row[2 * hs + j]
                                acc0 += rj * m0[jm]
                                acc1 += rj * m1[jm]
                                acc2 += rj * m2[jm]
                                acc3 += rj * m3[jm]
                                grow[2 * hs + j] += d0 * m0[jm] + d1 * m1[jm] + d2 * m2[jm] + d3 * m3[jm]
                        else:
                            for j in range(4 * hs):
                                rj = row[j]
                                acc0 += rj * m0[j]
                                acc1 += rj * m1[j]
                                acc2 += rj * m2[j]
                                acc3 += rj * m3[j]
                                grow[j] += d0 * m0[j] + d1 * m1[j] + d2 * m2[j] + d3 * m3[j]
                    elif c == 3:
                        if gru:
                            for j in range(2 * hs):
                                rj = row[j]
                                acc0 += rj * m0[j]
                                acc1 += rj * m1[j]
                                acc2 += rj * m2[j]
                                grow[j] += d0 * m0[j] + d1 * m1[j] + d2 * m2[j]
                            for j in range(hs):
                                jm = 3 * hs + j
                                rj = row[2 * hs + j]
                                acc0 += rj * m0[jm]
                                acc1 += rj * m1[jm]
                                acc2 += rj * m2[jm]
                                grow[2 * hs + j] += d0 * m0[jm] + d1 * m1[jm] + d2 * m2[jm]
                        else:
                            for j in range(4 * hs):
                                rj = row[j]
                                acc0 += rj * m0[j]
                                acc1 += rj * m1[j]
                                acc2 += rj * m2[j]
                                grow[j] += d0 * m0[j] + d1 * m1[j] + d2 * m2[j]
                    elif c == 2:
                        if gru:
                            for j in range(2 * hs):
                                rj = row[j]
                                acc0 += rj * m0[j]
                                acc1 += rj * m1[j]
                                grow[j] += d0 * m0[j] + d1 * m1[j]
                            for j in range(hs):
                                jm = 3 * hs + j
                                rj = row[2 * hs + j]
                                acc0 += rj * m0[jm]
                                acc1 += rj * m1[jm]
                                grow[2 * hs + j] += d0 * m0[jm] + d1 * m1[jm]
                        else:
                            for j in range(4 * hs):
                                rj = row[j]
                                acc0 += rj * m0[j]
                                acc1 += rj * m1[j]
                                grow[j] += d0 * m0[j] + d1 * m1[j]
                    else:
                        if gru:
                            for j in range(2 * hs):
                                rj = row[j]
                                acc0 += rj * m0[j]
                                grow[j] += d0 * m0[j]
                            for j in range(hs):
                                jm = 3 * hs + j
                                rj = row[2 * hs + j]
                                acc0 += rj * m0[jm]
                                grow[2 * hs + j] += d0 * m0[jm]
                        else:
                            for j in range(4 * hs):
                                rj = row[j]
                                acc0 += rj * m0[j]
                                grow[j] += d0 * m0[j]
                    for e in range(c):
                        bb = act_at[k, q + e]
                        acc = acc0 if e == 0 else (acc1 if e == 1 else (acc2 if e == 2 else acc3))
                        b = b0 + bb
                        # Δh_k = h_{t−1,k} − ĥ_k and ĥ_k += Δh_k: the delta's gradient goes to
                        # h_{t−1} and, with the opposite sign, to the previous memory.
                        g = acc + a_hhat[b, k]
                        if has_dh:
                            g += g_dh[t, b, k]
                        a_prev[bb, k] += g
                        a_hhat[b, k] -= g
                    q += 4
            for bb in range(nb):
                b = b0 + bb
                for j in range(hs):
                    a_h[b, j] = a_prev[bb, j]
            # Active input columns: ∂L/∂Δx_i = W_ih[:, i]ᵀ δM (GRU: rows r, z, nx of M) and
            # ∂L/∂W_ih[:, i] += δM · Δx_i, column-major over the chunk's samples as above.
            for i in range(n_in):
                n_act[i] = 0
            for bb in range(nb):
                cell = (b0 + bb) * steps + t
                for p in range(off_x[cell, 0], off_x[cell, 1]):
                    i = idx_x[p]
                    act_at[i, n_act[i]] = bb
                    act_p[i, n_act[i]] = p
                    n_act[i] += 1
            for i in range(n_in):
                n = n_act[i]
                row = wx[i]
                grow = g_wx[i]
                q = 0
                while q < n:
                    m0 = a_m[b0 + act_at[i, q]]
                    d0 = val_x[act_p[i, q]]
                    m1, m2, m3 = zero_row, zero_row, zero_row
                    d1, d2, d3 = zero, zero, zero
                    if q + 1 < n:
                        m1 = a_m[b0 + act_at[i, q + 1]]
                        d1 = val_x[act_p[i, q + 1]]
                    if q + 2 < n:
                        m2 = a_m[b0 + act_at[i, q + 2]]
                        d2 = val_x[act_p[i, q + 2]]
                    if q + 3 < n:
                        m3 = a_m[b0 + act_at[i, q + 3]]
                        d3 = val_x[act_p[i, q + 3]]
                    acc0 = zero
                    acc1 = zero
                    acc2 = zero
                    acc3 = zero
                    for j in range(x_cols):
                        rj = row[j]
                        acc0 += rj * m0[j]
                        acc1 += rj * m1[j]
                        acc2 += rj * m2[j]
                        acc3 += rj * m3[j]
                        grow[j] += d0 * m0[j] + d1 * m1[j] + d2 * m2[j] + d3 * m3[j]
                    for e in range(min(4, n - q)):
                        b = b0 + act_at[i, q + e]
                        acc = acc0 if e == 0 else (acc1 if e == 1 else (acc2 if e == 2 else acc3))
                        # Δx_i = x_{t,i} − x̂_i and x̂_i += Δx_i.
                        g = acc + a_xhat[b, i]
                        if has_dx:
                            g += g_dx[t, b, i]
                        g_x[t, b, i] = g
                        a_xhat[b, i] -= g
                    q += 4


@functools.cache
def _kernels() -> SimpleNamespace | None:
    try:
        import numba
    except ImportError:
        return None
    install()  # the vectorisable sigmoid/tanh the loops call
    # Reassociation lets the backward's dot products vectorise; the forward has no reduction and
    # must not reassociate where the vectorisable exp is inlined (evsnn.ops.cpu_vecmath), and
    # numpy's error model (no branch guarding a division) lets its gate loops vectorise. No
    # NaN/inf assumptions are made, so non-finite values propagate as in the reference.
    forward = numba.njit(cache=True, nogil=True, fastmath={"contract"}, error_model="numpy", parallel=True)
    backward = numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"}, parallel=True)
    return SimpleNamespace(forward=forward(_delta_forward), backward=backward(_delta_backward), numba=numba)


def _threads(batch: int) -> contextlib.AbstractContextManager[int]:
    return numba_batch_threads(_kernels().numba, batch)


def kernels_available() -> bool:
    """Whether the fused numba training kernels can run (numba installed)."""
    return _kernels() is not None


def _np(t: Tensor) -> np.ndarray:
    return t.detach().numpy()


# The launchers below are the custom ops themselves (torch.library: one opaque op per call for
# torch.compile, a fake kernel for its shapes, the backward registered as the forward's gradient).
# Every output is a fresh tensor (no output aliases an input or another output).


@torch.library.custom_op("evsnn::delta_train_cpu_fwd", mutates_args=(), device_types="cpu")
def delta_train_cpu_fwd(
    x: Tensor,
    h0: Tensor,
    c0: Tensor | None,
    x_hat0: Tensor,
    h_hat0: Tensor,
    m0: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    theta_x: Tensor,
    theta_h: Tensor,
    inclusive: bool,
    gru: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
           Tensor, Tensor, Tensor]:  # fmt: skip
    """The fused forward (`_delta_forward`) over ``x [T, B, I]``: ``(h_seq, h_T, c_T, x̂_T, ĥ_T, M_T, Δx, Δh, c_seq,
    gates [4, T, B, H], idx_x, val_x, off_x, idx_h, val_h, off_h)``; for the GRU (``c0`` ``None``)
    ``c_T`` and ``c_seq`` are empty. The active columns travel in buffers of fixed capacity (one
    region per sample: ``[B·T·I]``/``[B·T·H]`` indices and deltas, ``[B·T, 2]`` offsets), so every
    shape follows from the sizes."""
    steps, batch, n_in = x.shape
    hs = weight_hh.shape[1]
    wx = weight_ih.detach().t().contiguous()
    wh = weight_hh.detach().t().contiguous()

    def work(t):
        return t.detach().clone(memory_format=torch.contiguous_format)

    h, x_hat, h_hat, m = work(h0), work(x_hat0), work(h_hat0), work(m0)
    c = x.new_zeros(0, 0) if gru else work(c0)
    out = x.new_empty(steps, batch, hs)
    out_c = x.new_empty(0, 0, 0) if gru else x.new_empty(steps, batch, hs)
    dx = x.new_empty(steps, batch, n_in)
    dh = x.new_empty(steps, batch, hs)
    gates = x.new_empty(4, steps, batch, hs)
    cells = steps * batch
    # Capacity for every column active, one region per sample; zero-filled, so that the op's outputs
    # are deterministic, the unused tail of each region included.
    idx_x = cpu_zeros((cells * n_in,), torch.int32)
    idx_h = cpu_zeros((cells * hs,), torch.int32)
    val_x = cpu_zeros((cells * n_in,), x.dtype)
    val_h = cpu_zeros((cells * hs,), x.dtype)
    off_x = torch.empty(cells, 2, dtype=torch.int64)
    off_h = torch.empty(cells, 2, dtype=torch.int64)
    with _threads(batch) as chunks:
        _kernels().forward(
            _np(x.detach().contiguous()), _np(wx), _np(wh), _np(theta_x.detach().contiguous()),
            _np(theta_h.detach().contiguous()), _np(h), _np(c), _np(x_hat), _np(h_hat), _np(m), inclusive, gru,
            _np(out), _np(out_c), _np(dx), _np(dh), *(_np(g) for g in gates),
            _np(idx_x), _np(val_x), _np(off_x), _np(idx_h), _np(val_h), _np(off_h), chunks,
        )  # fmt: skip
    return out, h, c, x_hat, h_hat, m, dx, dh, out_c, gates, idx_x, val_x, off_x, idx_h, val_h, off_h


@delta_train_cpu_fwd.register_fake
def _(x, h0, c0, x_hat0, h_hat0, m0, weight_ih, weight_hh, theta_x, theta_h, inclusive, gru):
    steps, batch, n_in = x.shape
    hs = weight_hh.shape[1]
    cells = steps * batch
    seq = x.new_empty(steps, batch, hs)
    lstm = c0 is not None
    return (
        seq, x.new_empty(batch, hs), x.new_empty(batch, hs) if lstm else x.new_empty(0, 0), x.new_empty(batch, n_in),
        x.new_empty(batch, hs), x.new_empty(batch, 4 * hs), x.new_empty(steps, batch, n_in), torch.empty_like(seq),
        torch.empty_like(seq) if lstm else x.new_empty(0, 0, 0), x.new_empty(4, steps, batch, hs),
        x.new_empty(cells * n_in, dtype=torch.int32), x.new_empty(cells * n_in), x.new_empty(cells, 2, dtype=torch.int64),
        x.new_empty(cells * hs, dtype=torch.int32), x.new_empty(cells * hs), x.new_empty(cells, 2, dtype=torch.int64),
    )  # fmt: skip


@torch.library.custom_op("evsnn::delta_train_cpu_bwd", mutates_args=(), device_types="cpu")
def delta_train_cpu_bwd(
    g_out: Tensor | None,
    g_h: Tensor | None,
    g_c: Tensor | None,
    g_xhat: Tensor | None,
    g_hhat: Tensor | None,
    g_m: Tensor | None,
    g_dx: Tensor | None,
    g_dh: Tensor | None,
    h0: Tensor,
    c0: Tensor | None,
    out: Tensor,
    out_c: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    gates: Tensor,
    idx_x: Tensor,
    val_x: Tensor,
    off_x: Tensor,
    idx_h: Tensor,
    val_h: Tensor,
    off_h: Tensor,
    gru: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The fused backward (`_delta_backward`, Chen et al.'s symmetric sparse BPTT) from the output
    gradients (``None``: zero) and `delta_train_cpu_fwd`'s results: ``(∂x, ∂h_0, ∂c_0, ∂x̂_0, ∂ĥ_0, ∂M_0, ∂W_ih, ∂W_hh)`` (``∂c_0``
    empty for the GRU)."""
    steps, batch, hs = out.shape
    wx = weight_ih.detach().t().contiguous()
    wh = weight_hh.detach().t().contiguous()
    n_in = wx.shape[0]

    def grad_or_empty(g):
        # A zero gradient (None) is not materialised: the kernel skips an empty one.
        return out.new_empty(0, 0, 0) if g is None else g.detach().contiguous()

    def adjoint(g, *shape):
        # In-place adjoints: start as the final state's gradients, end as the initial state's.
        return out.new_zeros(shape) if g is None else g.detach().clone(memory_format=torch.contiguous_format)

    g_dx, g_dh = grad_or_empty(g_dx), grad_or_empty(g_dh)
    if g_out is None:
        g_out, out_strides = out.new_empty(0), torch.zeros(3, dtype=torch.int64)
    else:
        g_out, out_strides = flat_storage(g_out.detach())
    a_h = adjoint(g_h, batch, hs)
    a_c = out.new_zeros(0, 0) if gru else adjoint(g_c, batch, hs)
    a_xhat = adjoint(g_xhat, batch, n_in)
    a_hhat = adjoint(g_hhat, batch, hs)
    a_m = adjoint(g_m, batch, 4 * hs)
    g_x = cpu_zeros((steps, batch, n_in), out.dtype)
    c0 = out.new_zeros(0, 0) if c0 is None else c0.detach()
    with _threads(batch) as parts:
        g_wx = cpu_zeros((parts, *wx.shape), wx.dtype)
        g_wh = cpu_zeros((parts, *wh.shape), wh.dtype)
        _kernels().backward(
            _np(wx), _np(wh), _np(h0.detach().contiguous()), _np(c0.contiguous()), gru, _np(out.detach()),
            _np(out_c.detach()), *(_np(g) for g in gates.detach()),
            _np(idx_x), _np(val_x.detach()), _np(off_x), _np(idx_h), _np(val_h.detach()), _np(off_h),
            _np(g_out), _np(out_strides), _np(g_dx), _np(g_dh), _np(a_h), _np(a_c), _np(a_xhat), _np(a_hhat), _np(a_m),
            _np(g_x), _np(g_wx), _np(g_wh),
        )  # fmt: skip
    # One part per thread: with one thread the part is the sum (no copy before the transpose).
    g_wx = g_wx[0] if parts == 1 else g_wx.sum(0)
    g_wh = g_wh[0] if parts == 1 else g_wh.sum(0)
    return g_x, a_h, a_c, a_xhat, a_hhat, a_m, g_wx.t().contiguous(), g_wh.t().contiguous()


@delta_train_cpu_bwd.register_fake
def _(g_out, g_h, g_c, g_xhat, g_hhat, g_m, g_dx, g_dh, h0, c0, out, c_seq, weight_ih, weight_hh, *rest):
    steps, batch, hs = out.shape
    n_in = weight_ih.shape[1]
    return (
        out.new_empty(steps, batch, n_in), out.new_empty(batch, hs),
        out.new_empty(batch, hs) if c0 is not None else out.new_empty(0, 0), out.new_empty(batch, n_in),
        out.new_empty(batch, hs), out.new_empty(batch, 4 * hs), weight_ih.new_empty(weight_ih.shape),
        weight_hh.new_empty(weight_hh.shape),
    )  # fmt: skip


def _setup_train(ctx, inputs, output) -> None:
    x, h0, c0, x_hat0, h_hat0, m0, weight_ih, weight_hh, theta_x, theta_h, inclusive, gru = inputs
    out, _, c, *_, c_seq, gates, idx_x, val_x, off_x, idx_h, val_h, off_h = output
    ctx.save_for_backward(h0, c0, out, c_seq, weight_ih, weight_hh, gates, idx_x, val_x, off_x, idx_h, val_h, off_h)
    ctx.gru = gru
    # An output without a gradient reaches the backward as None, not as zeros of its shape: the
    # gates and the capacity buffers alone would be 80 MB at H = 1024, B = 32, T = 100.
    ctx.set_materialize_grads(False)
    ctx.mark_non_differentiable(c_seq, gates, idx_x, val_x, off_x, idx_h, val_h, off_h)
    if gru:
        ctx.mark_non_differentiable(c)  # the GRU's empty placeholder


def _backward_train(ctx, g_out, g_h, g_c, g_xhat, g_hhat, g_m, g_dx, g_dh, *_residuals):
    saved = ctx.saved_tensors
    refuse_double_backward("cpu_event", "delta_gru" if ctx.gru else "delta_lstm", g_out, g_h, g_c, g_dx, g_dh, *saved)
    g_x, g_h0, g_c0, g_xhat0, g_hhat0, g_m0, g_wih, g_whh = torch.ops.evsnn.delta_train_cpu_bwd(
        g_out, g_h, None if ctx.gru else g_c, g_xhat, g_hhat, g_m, g_dx, g_dh, *saved, ctx.gru
    )
    return g_x, g_h0, None if ctx.gru else g_c0, g_xhat0, g_hhat0, g_m0, g_wih, g_whh, None, None, None, None


delta_train_cpu_fwd.register_autograd(_backward_train, setup_context=_setup_train)


def _delta_train_scan(x, state, weight_ih, weight_hh, bias_ih, bias_hh, theta_x, theta_h, delta_rule, gru):
    family = "delta_gru" if gru else "delta_lstm"
    inclusive = check_delta_rule(delta_rule) == "inclusive"
    check_steps(f"the cpu_train {family} scan", x)
    if not numba_available():  # not _kernels(): torch.compile traces this check, numba's jit it cannot
        raise RuntimeError(f"the fused CPU training kernels: {NUMBA_REASON}")
    if x.dim() != 3:
        raise ValueError(f"the cpu_train {family} scan expects x of shape [T, B, I], got {tuple(x.shape)}")
    for name, t in (("x", x), ("weight_ih", weight_ih), ("weight_hh", weight_hh)):
        if t.device.type != "cpu":
            raise ValueError(f"the cpu_train {family} scan runs on CPU tensors; {name} is on {t.device}")
        if t.dtype not in _DTYPES or t.dtype != x.dtype:
            raise TypeError(
                f"the cpu_train {family} scan takes float32 or float64 tensors of one dtype; x is {x.dtype}, "
                f"{name} is {t.dtype}"
            )
    batch, n_in, hs = x.shape[1], weight_ih.shape[1], weight_hh.shape[1]
    state_type = DeltaGRUState if gru else DeltaLSTMState
    if state is None:
        init = delta_gru_initial_state if gru else delta_lstm_initial_state
        state = init(batch, n_in, hs, bias_ih, bias_hh, x)
    shapes = {"h": (batch, hs), "c": (batch, hs), "x_hat": (batch, n_in), "h_hat": (batch, hs), "m": (batch, 4 * hs)}
    for name, t in zip(state_type._fields, state):
        if t.dtype != x.dtype or t.device.type != "cpu" or tuple(t.shape) != shapes[name]:
            raise TypeError(
                f"the cpu_train {family} scan expects state field {name!r} as a CPU {x.dtype} tensor of shape "
                f"{shapes[name]}, got a {t.device.type} {t.dtype} tensor of shape {tuple(t.shape)}"
            )
    fields = state_type(*state)._asdict()
    out, h, c, x_hat, h_hat, m, dx, dh, *_ = torch.ops.evsnn.delta_train_cpu_fwd(
        x,
        fields["h"],
        fields.get("c"),
        fields["x_hat"],
        fields["h_hat"],
        fields["m"],
        weight_ih,
        weight_hh,
        _expand_theta(theta_x, n_in, "theta_x", x).detach().contiguous(),
        _expand_theta(theta_h, hs, "theta_h", x).detach().contiguous(),
        inclusive,
        gru,
    )
    final = DeltaGRUState(h, x_hat, h_hat, m) if gru else DeltaLSTMState(h, c, x_hat, h_hat, m)
    return out, final, DeltaTrace(dx, dh)


_ARGS_DOC = """
    Args:
        x: input ``[T, B, I]``.
        state: the cell's state NamedTuple or ``None`` (zeros, ``M`` at the biases).
        weight_ih, weight_hh, bias_ih, bias_hh: ``nn.GRU``/``nn.LSTM``-layout parameters.
        theta_x, theta_h: delta thresholds (numbers or per-feature tensors; no gradient).
        delta_rule: ``"strict"`` (``|Δ| > Θ``) or ``"inclusive"`` (``|Δ| ≥ Θ``).
"""


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

    Same signature and result as [`evsnn.functional.delta_gru_scan`][evsnn.functional.delta_gru_scan] (without
    ``fixed_point``), differentiable in ``x``, the state, the weights and the biases (through
    the initial accumulators); CPU float32/float64 tensors of one dtype, numba required.
    """
    return _delta_train_scan(x, state, weight_ih, weight_hh, bias_ih, bias_hh, theta_x, theta_h, delta_rule, gru=True)


def delta_lstm_train_scan(
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
) -> tuple[Tensor, DeltaLSTMState, DeltaTrace]:
    """DeltaLSTM over ``x [T, B, I]`` with the fused event-sparse forward and backward (SPEC §4).

    Same signature and result as [`evsnn.functional.delta_lstm_scan`][evsnn.functional.delta_lstm_scan] (without
    ``fixed_point``), differentiable in ``x``, the state, the weights and the biases (through
    the initial accumulator); CPU float32/float64 tensors of one dtype, numba required.
    """
    return _delta_train_scan(x, state, weight_ih, weight_hh, bias_ih, bias_hh, theta_x, theta_h, delta_rule, gru=False)


delta_gru_train_scan.__doc__ += _ARGS_DOC
delta_lstm_train_scan.__doc__ += _ARGS_DOC
