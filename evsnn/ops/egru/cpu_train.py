"""Fused numba training kernel for EGRU on the CPU: event-sparse forward *and* backward (SPEC §3).

The input projection ``gi = W_ih x + b_ih`` of all steps is one dense torch product outside the
kernel (autograd differentiates it); the kernel does the recurrence.

Forward, per step: ``gh = b_hh + Σ_{k: y_{t−1,k} ≠ 0} y_{t−1,k} · W_hhᵀ[k]`` (only the rows of
units with an event), then the gates and state update of [`evsnn.functional.egru_pointwise`][evsnn.functional.egru_pointwise]
(both resets, zoneout before the event test). Each sample keeps the list of its units with an
event and adds their rows four at a time, so its accumulator is read and written once per four
rows; the samples go through the rows in blocks together, so a block is fetched from L3 once
per step for the whole batch. The gate math is one branch-free SIMD loop over the units, with
the vectorisable ``sigmoid``/``tanh`` of [`evsnn.ops.cpu_vecmath`][evsnn.ops.cpu_vecmath]. It
keeps for the backward the gates ``r, z, n`` and ``W_hn y + b_hn`` (elementwise, dense as in
any GRU) and, as returned anyway, ``y`` and ``c_pre`` (the value compared with θ): the
backward finds the events as the nonzero entries of ``y`` (a separate list would be a second
copy), recomputes ``c_{t−1}`` from ``c_pre`` and θ, and reads the zoneout masks kept as bytes.

Backward, in reverse time: the elementwise adjoint of every unit (one SIMD loop per sample and
step, the surrogate chosen outside it), then the recurrent products only where they matter: ``∂L/∂y_{t−1,k} = W_hh[:, k]ᵀ δgh_t`` only for units ``k`` that fired at
``t−1`` or whose pseudo-derivative ``g(c_pre − θ)`` at ``t−1`` is nonzero (inside the
surrogate's support; otherwise ``y_{t−1,k}`` passes no gradient), and, after the time loop
(`_weight_gradient`), ``∂L/∂W_hhᵀ[k] = Σ_t y_{t−1,k} · δgh_t`` over the events of each unit
only. The pseudo-derivative of
a surrogate with a known ``kernel_spec`` (the five of SPEC §1 and their truncations) is
evaluated in the kernel; any other [`Surrogate`][evsnn.surrogate.Surrogate] gets it from autograd of
the surrogate itself (one dense torch pass), so every one gives the reference's gradient (one
with infinite support makes the recurrent product dense: still exact). The products for
``∂L/∂y`` run unit-major over a thread's samples, four samples per pass over a row, in blocks
of columns of a copy of ``W_hhᵀ`` whose blocks are contiguous. A row of ``W_hh`` whose
unit never fires and never enters the support is never read, forward or backward.

The result is the reference's ([`evsnn.functional.egru_scan`][evsnn.functional.egru_scan]) and so are its gradients, to
rounding: the sums are grouped differently. Non-finite values propagate as in the reference's
forward (a NaN or −∞ ``c_pre`` gives ``y = 0·c_pre = NaN``, an event that reaches every unit).

The module runs past 600 lines because the forward and backward kernels (each handling both
resets, zoneout and every surrogate with a kernel form) sit beside their launchers
(`egru_train_cpu_fwd`, `egru_train_cpu_bwd`: the custom ops themselves, with their fake kernels
and autograd rule), which check and convert every argument.
"""

from __future__ import annotations

import contextlib
import functools
import math
from types import SimpleNamespace

import numpy as np
import torch
from torch import Tensor

from ...functional.checks import check_steps
from ...functional.egru import RESETS, EGRUState, EGRUTrace, egru_initial_state
from ...functional.precision import Precision, project
from ...surrogate import SnnTorchSurrogate, Surrogate, Triangle
from ..compile_marks import compile_opaque
from ..cpu_common import NUMBA_REASON, cpu_empty, flat_storage, numba_available, numba_batch_threads
from ..cpu_surrogate import pseudo_derivative, surrogate_args
from ..cpu_vecmath import install, sigmoid, tanh
from ..transforms import refuse_double_backward

try:  # numba is optional (the ``cpu`` extra); this module is imported only on the training path
    from numba import njit, prange
except ImportError:  # pragma: no cover - without numba the kernels are never compiled
    prange = range

    def njit(*args, **kwargs):
        return lambda fn: fn


__all__ = ["egru_train_scan", "kernels_available", "egru_train_reason", "egru_train_cpu_fwd", "egru_train_cpu_bwd"]

_DTYPES = (torch.float32, torch.float64)
_DEFAULT_SURROGATE = Triangle(0.3)

# Zoneout modes of the kernels: none, the expectation p (evaluation), a Bernoulli mask (training).
_ZO_NONE, _ZO_MEAN, _ZO_MASK = 0, 1, 2

# Rows of W_hhᵀ per block of the forward's gather: 64 rows of 3H values (768 KiB in float32
# at H = 1024) stay in a core's L2 beside the accumulators while every sample adds its rows.
_ROW_BLOCK = 64

# Columns of the W_hh gradient per block (`_weight_gradient`): the block of δgh for all T·B
# rows (1.6 MiB in float32 at T·B = 3200) stays in L2 (128 was the fastest of 32–256 there).
_GRAD_TILE = 128

# Units whose W_hh-gradient segments are written together (`_weight_gradient`): 16 values, a
# cache line of float32, per row of W_hh.
_UNIT_GROUP = 16

# Columns per block of the backward's ∂L/∂y products: a row segment of W_hhᵀ (2 KiB in float32)
# meets the δgh segments of its live samples, 64 KiB for 32 samples, that stay near the core
# while the block's rows stream by (512 was the fastest of 128–1024 at H = 1024, B = 32).
_DY_TILE = 512


@njit(cache=True, nogil=True, error_model="numpy")
def _pseudo_row(kind, params, gate, pseudo, t, b, v, theta, out):  # pragma: no cover - numba
    """``out[j] = g(v[j] − θ_j)`` of SPEC §1 (`pseudo_derivative`) for one (t, b) row, in
    ``out``'s dtype; ``kind`` -1 copies the precomputed ``pseudo[t, b]``. The surrogate is chosen
    outside the loops, so each is a branch-free loop over the units."""
    if kind < 0:
        for j in range(out.shape[0]):
            out[j] = pseudo[t, b, j]
    elif kind == 0:
        for j in range(out.shape[0]):
            out[j] = pseudo_derivative(0, params, gate, v[j] - theta[j])
    elif kind == 1:
        for j in range(out.shape[0]):
            out[j] = pseudo_derivative(1, params, gate, v[j] - theta[j])
    elif kind == 2:
        for j in range(out.shape[0]):
            out[j] = pseudo_derivative(2, params, gate, v[j] - theta[j])
    elif kind == 3:
        for j in range(out.shape[0]):
            out[j] = pseudo_derivative(3, params, gate, v[j] - theta[j])
    else:
        for j in range(out.shape[0]):
            out[j] = pseudo_derivative(4, params, gate, v[j] - theta[j])


@njit(cache=True, nogil=True)
def _compress_events(row, events):  # pragma: no cover - numba
    """Writes the indices of ``row``'s nonzero entries (NaN ≠ 0 counts: it spreads as in the dense
    product) to the front of ``events`` and returns their number; branch-free."""
    n = 0
    for k in range(row.shape[0]):
        events[n] = k
        n += row[k] != 0.0
    return n


def _egru_forward(
    gi,
    table,
    bias_hh,
    theta,
    c,
    y,
    reset_output,
    zo_mode,
    zo_p,
    zo_mask,
    chunks,
    out_y,
    out_v,
    gate_r,
    gate_z,
    gate_n,
    gate_hn,
):  # pragma: no cover - numba
    """EGRU over ``gi [T, B, 3H]`` from the state ``c, y`` ``[B, H]`` (updated in place).

    ``table = W_hhᵀ [H, 3H]``. Writes ``y_t``, ``c_pre_t`` and the gates ``r, z, n`` and
    ``W_hn y_{t−1} + b_hn`` ``[T, B, H]``. The batch is cut into ``chunks`` runs of samples
    that run in parallel; each writes only its own samples.
    """
    steps, batch, h3 = gi.shape
    hs = h3 // 3
    per_chunk = (batch + chunks - 1) // chunks
    for part in prange(chunks):
        b0 = part * per_chunk
        nb = max(0, min(batch, b0 + per_chunk) - b0)
        acc = np.empty((nb, h3), dtype=gi.dtype)
        # The scalars of the gate loop in the arrays' dtype: a Python float would promote a
        # float32 loop to float64 (half the SIMD width, and not the reference's arithmetic).
        typed = np.empty(3, dtype=gi.dtype)
        typed[0], typed[1], typed[2] = 1.0, 0.0, zo_p
        one, zero, zp = typed[0], typed[1], typed[2]
        events = np.empty((nb, hs), dtype=np.int64)
        n_ev = np.empty(nb, dtype=np.int64)
        done = np.empty(nb, dtype=np.int64)
        for bb in range(nb):
            n_ev[bb] = _compress_events(y[b0 + bb], events[bb])
        for t in range(steps):
            # gh = b_hh + Σ_{k: event} y_k · table[k] for every sample. Few units fire at two
            # steps in a row, so a sample's event rows are new at each step and come from L3.
            # Here the samples go through the units in blocks of `_ROW_BLOCK` rows: the rows a
            # block needs are read from L3 once for all samples and then from L2, while each
            # sample adds its rows in the block four at a time (its accumulator read and
            # written once per four rows).
            for bb in range(nb):
                done[bb] = 0
                for j in range(h3):
                    acc[bb, j] = bias_hh[j]
            for k_end in range(_ROW_BLOCK, hs + _ROW_BLOCK, _ROW_BLOCK):
                for bb in range(nb):
                    b = b0 + bb
                    a = acc[bb]
                    ev = events[bb]
                    p = done[bb]
                    q = p
                    while q < n_ev[bb] and ev[q] < k_end:
                        q += 1
                    done[bb] = q
                    while p + 4 <= q:
                        k0, k1, k2, k3 = ev[p], ev[p + 1], ev[p + 2], ev[p + 3]
                        w0, w1, w2, w3 = y[b, k0], y[b, k1], y[b, k2], y[b, k3]
                        r0, r1, r2, r3 = table[k0], table[k1], table[k2], table[k3]
                        for j in range(h3):
                            a[j] += w0 * r0[j] + w1 * r1[j] + w2 * r2[j] + w3 * r3[j]
                        p += 4
                    while p < q:
                        k = ev[p]
                        w = y[b, k]
                        row = table[k]
                        for j in range(h3):
                            a[j] += w * row[j]
                        p += 1
            for bb in range(nb):
                b = b0 + bb
                # Branch-free over the units (SIMD with the vectorisable sigmoid/tanh); the
                # zoneout mode does not change inside the loop.
                for j in range(hs):
                    r = sigmoid(gi[t, b, j] + acc[bb, j])
                    z = sigmoid(gi[t, b, hs + j] + acc[bb, hs + j])
                    hn = acc[bb, 2 * hs + j]
                    n = tanh(gi[t, b, 2 * hs + j] + r * hn)
                    c_prev = c[b, j]
                    v = z * c_prev + (one - z) * n
                    if reset_output:
                        v = v - y[b, j]
                    if zo_mode == 1:
                        v = zp * c_prev + (one - zp) * v
                    elif zo_mode == 2:
                        d = one if zo_mask[t, b, j] else zero
                        v = d * c_prev + (one - d) * v
                    gate_r[t, b, j] = r
                    gate_z[t, b, j] = z
                    gate_n[t, b, j] = n
                    gate_hn[t, b, j] = hn
                    out_v[t, b, j] = v
                    th = theta[j]
                    fire = v > th
                    # y = o·c_pre: with o = 0 that is 0, or NaN for a NaN or −∞ c_pre, as in the reference.
                    yv = v if fire else zero * v
                    y[b, j] = yv
                    out_y[t, b, j] = yv
                    c[b, j] = v - th if (fire and not reset_output) else v
                n_ev[bb] = _compress_events(y[b], events[bb])


def _egru_backward(
    weight,
    theta,
    c0,
    y0,
    reset_output,
    zo_mode,
    zo_p,
    zo_mask,
    need_y0,
    chunks,
    kind,
    params,
    gate,
    pseudo,
    out_y,
    out_v,
    gate_r,
    gate_z,
    gate_n,
    gate_hn,
    g_out,
    out_strides,
    g_v,
    a_c,
    a_y,
    g_gi,
    dgh_n,
    g_bias_parts,
    g_theta_parts,
):  # pragma: no cover - numba
    """Reverse-time adjoint of `_egru_forward`, with ``weight = W_hh [3H, H]``.

    ``a_c, a_y`` ``[B, H]`` enter as the gradients of the final ``c`` and ``y`` and leave as
    those of the initial state (in place). ``g_out``/``g_v`` are the gradients of ``y`` and of
    ``c_pre``, each empty where it is zero (autograd's ``None``) and then not read; ``g_out`` comes
    as the flat storage of a ``[T, B, H]`` tensor of element strides ``out_strides``, so that a
    broadcast gradient (a sum's or a mean's, strides 0) is read without a full-size copy. The
    pseudo-derivative ``g(c_pre − θ)`` is that of surrogate ``kind`` with
    ``params`` and truncation ``gate`` (`_pseudo_row`), or ``pseudo [T, B, H]``. Writes ``g_gi [T, B, 3H]``
    and ``dgh_n [T, B, H]`` (the gradient of ``W_hn y_{t−1} + b_hn``); accumulates ``∂L/∂b_hh``, ``∂L/∂θ`` into the zero-filled part of its chunk (the caller sums
    the parts; `_weight_gradient` then forms ``∂L/∂W_hh``). ``need_y0``: compute ``∂L/∂y_0`` for every unit (a given initial event state
    that needs its gradient), else only what reaches the parameters.
    """
    steps, batch, hs = out_y.shape
    h3 = 3 * hs
    per_chunk = (batch + chunks - 1) // chunks
    threshold_reset = not reset_output
    has_out = g_out.shape[0] != 0
    has_v = g_v.shape[0] != 0
    # W_hhᵀ in blocks of `_DY_TILE` columns, each block's rows contiguous: the products below go
    # through one block at a time, and a block read row after row from L3 is one sequential stream
    # (segments of a row 3H apart defeat the hardware prefetcher).
    # Taken from W_hh itself, which is also the transposition (no separate copy of W_hhᵀ): 16
    # rows of W_hh are read side by side (16 sequential streams) into 16-value segments (a cache
    # line) of the block's rows.
    n_tiles = (h3 + _DY_TILE - 1) // _DY_TILE
    tiled = np.empty((n_tiles, hs, _DY_TILE), dtype=weight.dtype)
    for i in range(n_tiles):
        j0 = i * _DY_TILE
        m = min(_DY_TILE, h3 - j0)
        for jb in range(0, m, 16):
            je = min(m, jb + 16)
            for k in range(hs):
                for j in range(jb, je):
                    tiled[i, k, j] = weight[j0 + j, k]
    for part in prange(chunks):
        b0 = part * per_chunk
        nb = max(0, min(batch, b0 + per_chunk) - b0)
        dgh = np.empty((nb, h3), dtype=out_y.dtype)
        # g(c_pre − θ) of the chunk's samples at t (used now) and at t − 1 (which units of
        # y_{t−1} can pass gradient; it becomes the next step's row).
        g_now = np.empty((nb, hs), dtype=out_y.dtype)
        g_before = np.empty((nb, hs), dtype=out_y.dtype)
        c_prev = np.empty(hs, dtype=out_y.dtype)
        gv_row = np.zeros(hs, dtype=out_y.dtype)
        keep = np.empty(hs, dtype=out_y.dtype)
        typed = np.empty(3, dtype=out_y.dtype)
        typed[0], typed[1], typed[2] = 1.0, 0.0, zo_p
        one, zero, zp = typed[0], typed[1], typed[2]
        if zo_mode == 1:
            for j in range(hs):
                keep[j] = zp
        live_at = np.empty((hs, nb), dtype=np.int64)
        n_live = np.empty(hs, dtype=np.int64)
        g_bias = g_bias_parts[part]
        g_theta = g_theta_parts[part]
        for bb in range(nb):
            _pseudo_row(kind, params, gate, pseudo, steps - 1, b0 + bb, out_v[steps - 1, b0 + bb], theta, g_now[bb])
        for t in range(steps - 1, -1, -1):
            for bb in range(nb):
                b = b0 + bb
                # c_{t−1} from c_pre and θ, and the zoneout mask, as rows: the loop below then
                # has no branch that loads, and vectorises.
                if t > 0:
                    for j in range(hs):
                        vp = out_v[t - 1, b, j]
                        c_prev[j] = vp - theta[j] if (threshold_reset and vp > theta[j]) else vp
                else:
                    for j in range(hs):
                        c_prev[j] = c0[b, j]
                if zo_mode == 2:
                    for j in range(hs):
                        keep[j] = one if zo_mask[t, b, j] else zero
                # The output's gradient joins the adjoint of y_t (the loop below reads a_y first
                # and then overwrites it), the trace's comes as a row; a zero one is skipped.
                if has_out:
                    base = t * out_strides[0] + b * out_strides[1]
                    if out_strides[2] == 1:
                        g_row = g_out[base : base + hs]
                        for j in range(hs):
                            a_y[b, j] += g_row[j]
                    else:
                        for j in range(hs):
                            a_y[b, j] += g_out[base + j * out_strides[2]]
                if has_v:
                    for j in range(hs):
                        gv_row[j] = g_v[t, b, j]
                g = g_now[bb]
                for j in range(hs):
                    th = theta[j]
                    v = out_v[t, b, j]
                    o = one if v > th else zero
                    dy = a_y[b, j]
                    dc = a_c[b, j]
                    # y = o·v, c = v − o·θ (threshold reset) or v; o = H(v − θ) with pseudo-derivative g.
                    do = dy * v
                    if threshold_reset:
                        do -= dc * th
                    dx = do * g[j]
                    dv = dy * o + dc + dx + gv_row[j]
                    if threshold_reset:
                        g_theta[j] -= dx + dc * o
                    else:
                        g_theta[j] -= dx
                    # Zoneout: v = d·c_{t−1} + (1 − d)·u.
                    if zo_mode == 0:
                        du = dv
                        dcp = zero
                    else:
                        d = keep[j]
                        du = (one - d) * dv
                        dcp = d * dv
                    r = gate_r[t, b, j]
                    z = gate_z[t, b, j]
                    n = gate_n[t, b, j]
                    # u = z·c_{t−1} + (1 − z)·n (− y_{t−1}), n = tanh(a_n + r·hn).
                    dcp += du * z
                    dan = du * (one - z) * (one - n * n)
                    daz = du * (c_prev[j] - n) * z * (one - z)
                    dar = dan * gate_hn[t, b, j] * r * (one - r)
                    g_gi[t, b, j] = dar
                    g_gi[t, b, hs + j] = daz
                    g_gi[t, b, 2 * hs + j] = dan
                    dgh[bb, j] = dar
                    dgh[bb, hs + j] = daz
                    dgh[bb, 2 * hs + j] = dan * r
                    dgh_n[t, b, j] = dan * r
                    a_c[b, j] = dcp
                    a_y[b, j] = -du if reset_output else zero
                for j in range(h3):
                    g_bias[j] += dgh[bb, j]
                if t > 0:
                    _pseudo_row(kind, params, gate, pseudo, t - 1, b, out_v[t - 1, b], theta, g_before[bb])
            # ∂L/∂y_{t−1,k} = W_hh[:, k]ᵀ δgh_t for the samples where y_{t−1,k} can pass gradient
            # ("live": an event, or inside the surrogate's support). First each unit's list of
            # live samples, then the dot products in blocks of `_DY_TILE` columns, unit-major over
            # the chunk's samples: each row segment of W_hh, read once per step for all samples,
            # meets its live samples four at a time while the block of δgh stays in cache.
            for k in range(hs):
                n_live[k] = 0
            if t > 0:
                for bb in range(nb):
                    v_prev = out_v[t - 1, b0 + bb]
                    g_prev = g_before[bb]
                    for k in range(hs):
                        live_at[k, n_live[k]] = bb
                        n_live[k] += v_prev[k] > theta[k] or g_prev[k] != 0.0
            elif need_y0:
                for k in range(hs):
                    for bb in range(nb):
                        live_at[k, bb] = bb
                    n_live[k] = nb
            for i in range(n_tiles):
                j0 = i * _DY_TILE
                m = min(_DY_TILE, h3 - j0)
                for k in range(hs):
                    n = n_live[k]
                    if n == 0:
                        continue
                    live = live_at[k]
                    row = tiled[i, k]
                    p = 0
                    while p + 4 <= n:
                        s0, s1, s2, s3 = live[p], live[p + 1], live[p + 2], live[p + 3]
                        d0 = dgh[s0, j0 : j0 + m]
                        d1 = dgh[s1, j0 : j0 + m]
                        d2 = dgh[s2, j0 : j0 + m]
                        d3 = dgh[s3, j0 : j0 + m]
                        a0 = zero
                        a1 = zero
                        a2 = zero
                        a3 = zero
                        for j in range(m):
                            rj = row[j]
                            a0 += rj * d0[j]
                            a1 += rj * d1[j]
                            a2 += rj * d2[j]
                            a3 += rj * d3[j]
                        a_y[b0 + s0, k] += a0
                        a_y[b0 + s1, k] += a1
                        a_y[b0 + s2, k] += a2
                        a_y[b0 + s3, k] += a3
                        p += 4
                    while p < n:
                        s0 = live[p]
                        d0 = dgh[s0, j0 : j0 + m]
                        a0 = zero
                        for j in range(m):
                            a0 += row[j] * d0[j]
                        a_y[b0 + s0, k] += a0
                        p += 1
            g_now, g_before = g_before, g_now


def _weight_gradient(y0, out_y, g_gi, dgh_n, chunks, g_weight):  # pragma: no cover - numba
    """``g_weight = ∂L/∂W_hh = Σ_{t,b} δgh_{t,b} y_{t−1,b}ᵀ`` over the events of ``y_{t−1}`` only,
    after the time loop: ``δgh`` is ``g_gi`` in its r and z thirds and ``dgh_n`` in the n third.

    Accumulated step by step, every step would read and write the rows of every unit with an
    event somewhere in the batch: most of ``W_hh``'s size, from L3, at each step. Here each
    unit's list of events (its column of ``y_{t−1}`` over all (t, b)) is built once, and the
    units (split between the threads) go through the gradient in blocks of `_GRAD_TILE`
    columns: a block of ``δgh`` for all (t, b) stays in L2 while each unit sums its event rows
    into a row segment that stays in L1, four rows per pass.
    """
    steps, batch, hs = out_y.shape
    h3 = 3 * hs
    n_rows = steps * batch
    # The events of y_{t−1} per unit as lists of rows t·B + b (counting sort over the units).
    count = np.zeros(hs + 1, dtype=np.int64)
    events = np.empty(hs, dtype=np.int64)
    for tb in range(n_rows):
        t, b = tb // batch, tb % batch
        y = y0[b] if t == 0 else out_y[t - 1, b]
        n = _compress_events(y, events)
        for p in range(n):
            count[events[p] + 1] += 1
    for k in range(hs):
        count[k + 1] += count[k]
    fill = count[:hs].copy()
    at = np.empty(count[hs], dtype=np.int64)
    weight = np.empty(count[hs], dtype=out_y.dtype)
    for tb in range(n_rows):
        t, b = tb // batch, tb % batch
        y = y0[b] if t == 0 else out_y[t - 1, b]
        n = _compress_events(y, events)
        for p in range(n):
            k = events[p]
            at[fill[k]] = tb
            weight[fill[k]] = y[k]
            fill[k] += 1
    rz = g_gi.reshape(n_rows, h3)
    nn = dgh_n.reshape(n_rows, hs)
    per_part = (hs + chunks - 1) // chunks
    for part in prange(chunks):
        k_lo = part * per_part
        k_hi = min(hs, k_lo + per_part)
        # The sums of 16 units at a time: written into W_hh's layout (transposed) as rows of
        # 16 values, a cache line each, with no transposed copy of the whole gradient afterwards.
        acc = np.empty((_UNIT_GROUP, _GRAD_TILE), dtype=out_y.dtype)
        # The block is copied out first: in place its row segments lie 3H apart, a stride at
        # which they fall into a small fraction of the L2 sets and evict each other.
        block = np.empty((n_rows, _GRAD_TILE), dtype=out_y.dtype)
        # Blocks of the r, z thirds of δgh (g_gi's first 2H columns), then of the n third (dgh_n).
        n_rz = (2 * hs + _GRAD_TILE - 1) // _GRAD_TILE
        for blk in range(n_rz + (hs + _GRAD_TILE - 1) // _GRAD_TILE):
            in_rz = blk < n_rz
            src = rz if in_rz else nn
            j0 = blk * _GRAD_TILE if in_rz else (blk - n_rz) * _GRAD_TILE
            m = min(_GRAD_TILE, (2 * hs if in_rz else hs) - j0)
            j_start = j0 if in_rz else 2 * hs + j0
            for tb in range(n_rows):
                for j in range(m):
                    block[tb, j] = src[tb, j0 + j]
            for k0 in range(k_lo, k_hi, _UNIT_GROUP):
                k1 = min(k_hi, k0 + _UNIT_GROUP)
                for k in range(k0, k1):
                    a = acc[k - k0]
                    if m == _GRAD_TILE:  # a constant trip count: the row segment can live in registers
                        _sum_rows(block, at, weight, count[k], count[k + 1], a, _GRAD_TILE)
                    else:
                        _sum_rows(block, at, weight, count[k], count[k + 1], a, m)
                for j in range(m):
                    for k in range(k0, k1):
                        g_weight[j_start + j, k] = acc[k - k0, j]


@njit(cache=True, nogil=True, inline="always")
def _sum_rows(block, at, weight, p, end, acc, m):  # pragma: no cover - numba
    """``acc[:m] = Σ_{p ≤ i < end} weight[i] · block[at[i], :m]``, four rows per pass."""
    for j in range(m):
        acc[j] = 0.0
    while p + 4 <= end:
        d0, d1, d2, d3 = block[at[p]], block[at[p + 1]], block[at[p + 2]], block[at[p + 3]]
        w0, w1, w2, w3 = weight[p], weight[p + 1], weight[p + 2], weight[p + 3]
        for j in range(m):
            acc[j] += w0 * d0[j] + w1 * d1[j] + w2 * d2[j] + w3 * d3[j]
        p += 4
    while p < end:
        d0 = block[at[p]]
        w0 = weight[p]
        for j in range(m):
            acc[j] += w0 * d0[j]
        p += 1


@functools.cache
def _kernels() -> SimpleNamespace | None:
    try:
        import numba
    except ImportError:
        return None
    install()  # the vectorisable sigmoid/tanh the loops call
    # Numpy's error model: no branch guards a division, so the loops over units vectorise. The
    # forward's loops need no reassociation (no reduction) and must not have it where the
    # vectorisable exp is inlined (`evsnn.ops.cpu_vecmath`); the backward's dot products need it.
    # No NaN/inf assumptions are made, so non-finite values propagate as in the reference.
    forward = numba.njit(cache=True, nogil=True, fastmath={"contract"}, error_model="numpy", parallel=True)
    jit = numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"}, error_model="numpy", parallel=True)
    return SimpleNamespace(
        forward=forward(_egru_forward),
        backward=jit(_egru_backward),
        weight_gradient=jit(_weight_gradient),
        numba=numba,
    )


def kernels_available() -> bool:
    """Whether the fused EGRU training kernel can run (numba installed)."""
    return _kernels() is not None


def _threads(batch: int) -> contextlib.AbstractContextManager[int]:
    return numba_batch_threads(_kernels().numba, batch)


def _np(t: Tensor) -> np.ndarray:
    return t.detach().numpy()


def _pseudo_derivative(surrogate: Surrogate, x: Tensor) -> Tensor:
    """``g(x)`` exactly as autograd of the reference sees it: the derivative of the surrogate's
    own forward (its primitive, clamps and NaN guard included)."""
    with torch.enable_grad():
        xx = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(surrogate(xx).sum(), xx)
    return g


# kind -1: a surrogate without kernel spec (its pseudo-derivative comes from autograd, `_EGRUTrain`)
_NO_KERNEL_FORM = (-1, [0.0] * 4, math.inf)


def _surrogate_args(surrogate: Surrogate) -> tuple[int, list[float], float]:
    """The surrogate as the custom ops' schema takes it, ``(kind, params, gate)``."""
    args = surrogate_args(surrogate)
    return _NO_KERNEL_FORM if args is None else args


# The launchers below are the custom ops themselves (torch.library: one opaque op per call for
# torch.compile, a fake kernel for its shapes, the backward registered as the forward's gradient).
# Every output is a fresh tensor (no output aliases an input or another output).


@torch.library.custom_op("evsnn::egru_train_cpu_fwd", mutates_args=(), device_types="cpu")
def egru_train_cpu_fwd(
    gi: Tensor,
    c0: Tensor,
    y0: Tensor,
    weight_hh: Tensor,
    bias_hh: Tensor | None,
    theta: Tensor,
    reset_output: bool,
    zo_p: float,
    zo_mask: Tensor,
    sg_kind: int,
    sg_params: list[float],
    sg_gate: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The fused forward (`_egru_forward`) over ``gi = W_ih x + b_ih [T, B, 3H]``: ``(y [T, B, H],
    c_T, y_T, c_pre [T, B, H], gates [4, T, B, H])``, the gates ``r, z, n, W_hn y + b_hn`` kept for
    `egru_train_cpu_bwd`. ``zo_mask``: the zoneout masks ``[T, B, H]`` (bool) in training, else
    empty. The surrogate's kernel form (``sg_*``) serves the backward."""
    steps, batch, h3 = gi.shape
    hs = h3 // 3
    table = cpu_empty((hs, h3), gi.dtype).copy_(weight_hh.detach().t())
    bias = gi.new_zeros(h3) if bias_hh is None else bias_hh.detach().contiguous()
    c = c0.detach().clone(memory_format=torch.contiguous_format)
    y = y0.detach().clone(memory_format=torch.contiguous_format)
    out_y = cpu_empty((steps, batch, hs), gi.dtype)
    out_v = cpu_empty((steps, batch, hs), gi.dtype)
    gates = cpu_empty((4, steps, batch, hs), gi.dtype)
    zo_mode, mask = _zoneout(zo_p, zo_mask)
    with _threads(batch) as chunks:
        _kernels().forward(
            _np(gi.detach().contiguous()),
            _np(table),
            _np(bias),
            _np(theta.detach().contiguous()),
            _np(c),
            _np(y),
            reset_output,
            zo_mode,
            zo_p,
            mask,
            chunks,
            _np(out_y),
            _np(out_v),
            *(_np(g) for g in gates),
        )
    return out_y, c, y, out_v, gates


@egru_train_cpu_fwd.register_fake
def _(gi, c0, y0, weight_hh, bias_hh, theta, reset_output, zo_p, zo_mask, sg_kind, sg_params, sg_gate):
    steps, batch, h3 = gi.shape
    hidden = h3 // 3
    seq = gi.new_empty(steps, batch, hidden)
    state = gi.new_empty(batch, hidden)
    return seq, state, torch.empty_like(state), torch.empty_like(seq), gi.new_empty(4, steps, batch, hidden)


def _zoneout(zo_p: float, zo_mask: Tensor) -> tuple[int, np.ndarray]:
    if zo_p == 0.0:
        return _ZO_NONE, np.zeros((0, 0, 0), dtype=np.uint8)
    if zo_mask.numel() == 0:
        return _ZO_MEAN, np.zeros((0, 0, 0), dtype=np.uint8)
    return _ZO_MASK, _np(zo_mask.contiguous()).view(np.uint8)


@torch.library.custom_op("evsnn::egru_train_cpu_bwd", mutates_args=(), device_types="cpu")
def egru_train_cpu_bwd(
    g_out: Tensor | None,
    g_c: Tensor | None,
    g_y: Tensor | None,
    g_v: Tensor | None,
    c0: Tensor,
    y0: Tensor,
    weight_hh: Tensor,
    theta: Tensor,
    out_y: Tensor,
    out_v: Tensor,
    gates: Tensor,
    zo_mask: Tensor,
    reset_output: bool,
    zo_p: float,
    need_y0: bool,
    sg_kind: int,
    sg_params: list[float],
    sg_gate: float,
    pseudo: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The fused backward (`_egru_backward`) from the output gradients (``None``: zero) and the
    forward's outputs: ``(∂gi, ∂c_0, ∂y_0, ∂W_hh, ∂b_hh, ∂θ)``. ``need_y0``: form ``∂L/∂y_0``
    for every unit (else only what reaches the parameters). ``pseudo``: ``g(c_pre − θ)`` for
    ``sg_kind`` -1 (a surrogate without kernel form)."""
    steps, batch, hs = out_y.shape
    weight = weight_hh.detach().contiguous()

    def adjoint(g):
        # In-place adjoints: they start as the final state's gradients and end as the initial state's.
        return out_y.new_zeros(batch, hs) if g is None else g.detach().clone(memory_format=torch.contiguous_format)

    # A zero gradient (None) is not materialised: the kernel skips an empty one.
    if g_out is None:
        g_out, out_strides = out_y.new_empty(0), torch.zeros(3, dtype=torch.int64)
    else:
        g_out, out_strides = flat_storage(g_out.detach())
    g_v = out_y.new_empty(0, 0, 0) if g_v is None else g_v.detach().contiguous()
    a_c, a_y = adjoint(g_c), adjoint(g_y)
    pseudo = out_y.new_empty(0, 0, 0) if pseudo is None else pseudo.contiguous()
    zo_mode, mask = _zoneout(zo_p, zo_mask)
    with _threads(batch) as chunks:
        g_gi = cpu_empty((steps, batch, 3 * hs), out_y.dtype)
        dgh_n = cpu_empty((steps, batch, hs), out_y.dtype)
        g_bias = weight.new_zeros(chunks, 3 * hs)
        g_theta = weight.new_zeros(chunks, hs)
        _kernels().backward(
            _np(weight), _np(theta.detach().contiguous()), _np(c0.detach().contiguous()),
            _np(y0.detach().contiguous()), reset_output, zo_mode, zo_p, mask, need_y0, chunks, sg_kind,
            np.asarray(sg_params, dtype=np.float64), sg_gate, _np(pseudo), _np(out_y.detach()), _np(out_v.detach()),
            *(_np(g) for g in gates.detach()),
            _np(g_out), _np(out_strides), _np(g_v), _np(a_c), _np(a_y), _np(g_gi), _np(dgh_n), _np(g_bias),
            _np(g_theta),
        )  # fmt: skip
    # The weight gradient's threads split the units, not the batch.
    with _threads(hs) as chunks:
        g_weight = cpu_empty((3 * hs, hs), weight.dtype)
        _kernels().weight_gradient(
            _np(y0.detach().contiguous()), _np(out_y.detach()), _np(g_gi), _np(dgh_n), chunks, _np(g_weight)
        )
    # One part per thread: with one thread the part is the sum (no copy).
    g_bias, g_theta = (p[0] if p.shape[0] == 1 else p.sum(0) for p in (g_bias, g_theta))
    return g_gi, a_c, a_y, g_weight, g_bias, g_theta


@egru_train_cpu_bwd.register_fake
def _(grad_out, grad_c, grad_y, grad_c_pre, c0, y0, weight_hh, theta, out, c_pre, gates, zo_mask, *flags):
    steps, batch, hidden = out.shape
    return (
        out.new_empty(steps, batch, 3 * hidden),
        out.new_empty(batch, hidden),
        out.new_empty(batch, hidden),
        weight_hh.new_empty(3 * hidden, hidden),
        weight_hh.new_empty(3 * hidden),
        theta.new_empty(hidden),
    )


def _setup_train(ctx, inputs, output) -> None:
    gi, c0, y0, weight_hh, bias_hh, theta, reset_output, zo_p, zo_mask, *surrogate = inputs
    out, _, _, c_pre, gates = output
    ctx.save_for_backward(c0, y0, weight_hh, theta, out, c_pre, gates, zo_mask)
    ctx.flags = (reset_output, zo_p)
    ctx.surrogate = surrogate
    ctx.has_bias = bias_hh is not None
    # An output without a gradient reaches the backward as None, not as zeros of its shape (the
    # gates alone would be 52 MB at H = 1024, B = 32, T = 100): the backward op skips it.
    ctx.set_materialize_grads(False)
    ctx.mark_non_differentiable(gates)


def _backward_train(ctx, grad_out, grad_c, grad_y, grad_c_pre, _grad_gates):
    c0, y0, weight_hh, theta, out, c_pre, gates, zo_mask = ctx.saved_tensors
    grads = (grad_out, grad_c, grad_y, grad_c_pre)
    refuse_double_backward("cpu_event", "egru", *grads, c0, y0, weight_hh, theta, out, c_pre)
    g_gi, g_c0, g_y0, g_w, g_bias, g_theta = torch.ops.evsnn.egru_train_cpu_bwd(
        grad_out, grad_c, grad_y, grad_c_pre, c0, y0, weight_hh, theta, out, c_pre, gates, zo_mask,
        *ctx.flags, bool(ctx.needs_input_grad[2]), *ctx.surrogate,
    )  # fmt: skip
    return g_gi, g_c0, g_y0, g_w, g_bias if ctx.has_bias else None, g_theta, None, None, None, None, None, None


egru_train_cpu_fwd.register_autograd(_backward_train, setup_context=_setup_train)


class _EGRUTrain(torch.autograd.Function):
    """The fused kernels as one autograd node over ``gi = W_ih x + b_ih``, for a surrogate without
    a kernel spec: its pseudo-derivative is autograd of the surrogate object, which no custom-op
    schema can carry (a surrogate with one runs the ops ``evsnn::egru_train_cpu_fwd``/``_bwd``)."""

    @staticmethod
    def forward(ctx, gi, c0, y0, weight_hh, bias_hh, theta, reset_output, surrogate, zo_p, zo_mask):
        out_y, c, y, out_v, gates = torch.ops.evsnn.egru_train_cpu_fwd(
            gi, c0, y0, weight_hh, bias_hh, theta, reset_output, zo_p, zo_mask, *_NO_KERNEL_FORM
        )
        ctx.options = (reset_output, surrogate, zo_p, bias_hh is not None)
        ctx.set_materialize_grads(False)  # a missing gradient stays None: the backward op skips it
        ctx.save_for_backward(c0, y0, weight_hh, theta, out_y, out_v, gates, zo_mask)
        return out_y, c, y, out_v

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_out, g_c, g_y, g_v):
        c0, y0, weight_hh, theta, out_y, out_v, gates, zo_mask = ctx.saved_tensors
        reset_output, surrogate, zo_p, has_bias = ctx.options
        pseudo = _pseudo_derivative(surrogate, out_v - theta)
        g_gi, a_c, a_y, g_w, g_bias, g_theta = torch.ops.evsnn.egru_train_cpu_bwd(
            g_out,
            g_c,
            g_y,
            g_v,
            c0,
            y0,
            weight_hh,
            theta,
            out_y,
            out_v,
            gates,
            zo_mask,
            reset_output,
            zo_p,
            bool(ctx.needs_input_grad[2]),
            *_NO_KERNEL_FORM,
            pseudo,
        )
        return g_gi, a_c, a_y, g_w, g_bias if has_bias else None, g_theta, None, None, None, None


# The surrogate object cannot enter a custom op: a compiled model runs this node eagerly behind one
# graph break.
_egru_train_opaque = compile_opaque(_EGRUTrain.apply)


def egru_train_reason(surrogate: object, zoneout: float = 0.0) -> str | None:
    """``None`` when `egru_train_scan` can run with this surrogate and zoneout, else why not
    (numba missing; a snntorch closure or a non-[`Surrogate`][evsnn.surrogate.Surrogate])."""
    if not numba_available():  # not _kernels(): torch.compile traces this check, numba's jit it cannot
        return f"the fused EGRU training kernel: {NUMBA_REASON}"
    if isinstance(surrogate, SnnTorchSurrogate):
        return "a snntorch surrogate is not supported by the fused EGRU training kernel; use an evsnn.surrogate"
    if not isinstance(surrogate, Surrogate):
        return f"surrogate must be an evsnn.surrogate.Surrogate, got {type(surrogate).__name__}"
    if not 0.0 <= zoneout < 1.0:
        return f"zoneout must be a probability in [0, 1), got {zoneout!r}"
    return None


def egru_train_scan(
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
    """EGRU over ``x [T, B, I]`` with the fused event-sparse forward and backward (SPEC §3).

    Same signature and result as [`evsnn.functional.egru_scan`][evsnn.functional.egru_scan], differentiable in ``x``,
    the state, the weights, the biases and the threshold; CPU float32/float64 tensors of one
    dtype, numba required. Zoneout in training draws its masks exactly as the reference does
    (one ``torch.rand_like(c)`` per step), so under the same seed both give the same result.

    Args:
        x: input ``[T, B, I]``.
        state: ``EGRUState(c, y)`` ``[B, H]`` each, or ``None`` (zeros).
        weight_ih: input weights ``[3H, I]`` (``nn.GRU`` layout).
        weight_hh: recurrent weights ``[3H, H]`` (``nn.GRU`` layout).
        bias_ih: input bias ``[3H]`` or ``None``.
        bias_hh: recurrent bias ``[3H]`` or ``None``.
        threshold: θ, a tensor broadcastable to ``(H,)``.
        reset: ``"output"`` (the paper's) or ``"threshold"`` (EvNN code v0.2).
        surrogate: any [`evsnn.surrogate.Surrogate`][evsnn.surrogate.Surrogate] (pseudo-derivative of the event test).
        zoneout: probability in ``[0, 1)``; a Bernoulli mask per step in training, its expectation otherwise.
        training: whether zoneout draws masks (``True``) or uses its expectation.
    """
    if reset not in RESETS:
        raise ValueError(f"reset must be one of {RESETS}, got {reset!r}")
    reason = egru_train_reason(surrogate, zoneout)
    if reason is not None:
        error = ValueError if "zoneout" in reason else (RuntimeError if "numba" in reason else TypeError)
        raise error(f"egru_train_scan: {reason}")
    check_steps("egru_train_scan", x)
    if x.dim() != 3:
        raise ValueError(f"egru_train_scan expects x of shape [T, B, I], got {tuple(x.shape)}")
    named = [("x", x), ("weight_ih", weight_ih), ("weight_hh", weight_hh), ("threshold", threshold)]
    named += [(n, t) for n, t in (("bias_ih", bias_ih), ("bias_hh", bias_hh)) if t is not None]
    for name, t in named:
        if t.device.type != "cpu":
            raise ValueError(f"egru_train_scan runs on CPU tensors; {name} is on {t.device}")
        if t.dtype not in _DTYPES or t.dtype != x.dtype:
            raise TypeError(
                f"egru_train_scan takes float32 or float64 tensors of one dtype; x is {x.dtype}, {name} is {t.dtype}"
            )
    batch, hs = x.shape[1], weight_hh.shape[1]
    if tuple(weight_hh.shape) != (3 * hs, hs) or weight_ih.shape[0] != 3 * hs or weight_ih.shape[1] != x.shape[2]:
        raise ValueError(
            f"egru_train_scan expects weight_ih [3H, I] = [{3 * hs}, {x.shape[2]}] and weight_hh [3H, H] = "
            f"[{3 * hs}, {hs}], got {tuple(weight_ih.shape)} and {tuple(weight_hh.shape)}"
        )
    if threshold.dim() > 1 or threshold.numel() not in (1, hs):
        raise ValueError(f"threshold must be broadcastable to ({hs},), got shape {tuple(threshold.shape)}")
    if state is None:
        state = egru_initial_state(batch, hs, x)
    for name, t in zip(EGRUState._fields, state):
        if t.dtype != x.dtype or t.device.type != "cpu" or tuple(t.shape) != (batch, hs):
            raise TypeError(
                f"egru_train_scan expects state field {name!r} as a CPU {x.dtype} tensor of shape {(batch, hs)}, "
                f"got a {t.device.type} {t.dtype} tensor of shape {tuple(t.shape)}"
            )
    # The reference's projection, with its bias added in place: the same sum, without a second
    # [T, B, 3H] tensor (39 MB at H = 1024, B = 32, T = 100, each of its pages a fresh fault).
    gi = project(x, weight_ih, None, Precision(x.dtype, x.dtype))
    if bias_ih is not None:
        gi = gi.add_(bias_ih)
    if zoneout > 0.0 and training:
        # The reference's draws, in its order: one rand_like(c) per step.
        c = state.c
        mask = torch.stack([torch.rand_like(c) < zoneout for _ in range(x.shape[0])])
    else:
        mask = x.new_zeros(0, 0, 0, dtype=torch.bool)
    theta = threshold.expand(hs).contiguous()
    kind, params, gate = _surrogate_args(surrogate)
    if kind < 0:
        out, c, y, c_pre = _egru_train_opaque(
            gi, state.c, state.y, weight_hh, bias_hh, theta, reset == "output", surrogate, float(zoneout), mask
        )
    else:
        out, c, y, c_pre, _ = torch.ops.evsnn.egru_train_cpu_fwd(
            gi,
            state.c,
            state.y,
            weight_hh,
            bias_hh,
            theta,
            reset == "output",
            float(zoneout),
            mask,
            kind,
            params,
            gate,
        )
    return out, EGRUState(c, y), EGRUTrace(c_pre)
