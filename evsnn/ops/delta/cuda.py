"""DeltaGRU / DeltaLSTM with an event-sparse forward and the symmetric sparse BPTT of Chen et al.

SPEC.md §4. One pair of custom ops (`delta_scan_bptt_fwd`, `delta_scan_bptt_bwd`) holds the
math; two engines run its recurrent core:

- ``"cupy"``: the kernels of ``cuda/delta.cu`` (CUDA tensors). The forward is one
  persistent launch over all T steps that reads only the columns of
  ``W_ih``/``W_hh`` whose delta is nonzero; the input deltas are encoded for all steps first by
  one small kernel (they do not depend on h). Blocks hand Δh_t to each other through a grid
  barrier per step (float64) or, in float32, through tagged 64-bit words (value | step), which a
  reader polls: no barrier, no fence (`tagged_exchange`). The backward is one persistent reverse-time launch:
  ``δM_t = gate gradients + δM_{t+1}`` elementwise, then ``W_hhᵀ δM_t`` only for the ACTIVE hidden
  columns (those with ``Δh_t ≠ 0``, the ones the forward read).
- ``"torch"``: the CPU twin (any device), the same recurrences in torch ops. It is what the float64
  tests compare with autograd of the reference, so the backward math below runs in CI without a GPU.

Backward math, per step t in reverse (``λ`` = adjoint carried from step t+1):

    δM_t   = ∂L/∂M_t|gates + λ_M                      (the accumulator's gradient accumulates)
    e_h    = W_hhᵀ δM_t  on columns with Δh_t ≠ 0     (sparse: the forward's active columns)
    ∂L/∂h_{t−1} = (GRU: z ⊙ λ_h) + m^h_t ⊙ (e_h + λ_ĥ),   λ_ĥ ← where(m^h_t, −e_h, λ_ĥ)
    ∂L/∂W_hh = Σ_t δM_tᵀ Δh_t,  ∂L/∂W_ih = Σ_t δM_tᵀ Δx_t,  e_x = W_ihᵀ δM_t on columns with Δx_t ≠ 0

What is sparse and what is not (both engines compute the exact gradient, = autograd of the
reference): in the CuPy engine the forward products and the recurrent ``W_hhᵀ δM`` are sparse
(only active columns are read). The two weight gradients and ``e_x`` are done once after the scan
as dense GEMMs over the zero-filled deltas (cuBLAS, off the sequential path); the elementwise
input-memory recurrence is a vectorised gather. The CPU twin uses dense masked products.

The module runs past 600 lines because it holds both engines and the two launchers, which are
the custom ops themselves with their fake kernels and autograd rule: one place per signature.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ...functional.delta import (
    DeltaGRUState,
    DeltaLSTMState,
    DeltaTrace,
    check_delta_rule,
    delta_accumulator_increment,
    delta_encode,
    delta_gru_gates,
    delta_gru_initial_state,
    delta_lstm_gates,
    delta_lstm_initial_state,
)
from .. import cupy_runtime as rt
from ..packed_weights import packed
from ..transforms import refuse_double_backward

__all__ = [
    "delta_gru_scan_bptt",
    "delta_lstm_scan_bptt",
    "delta_gru_scan_cuda",
    "delta_lstm_scan_cuda",
    "delta_scan_bptt_fwd",
    "delta_scan_bptt_bwd",
    "check_cuda",
    "kernels_available",
    "units_per_block",
    "columns_per_thread",
    "kernel_defines",
    "ENGINES",
]

ENGINES = ("torch", "cupy")
_SOURCE = "delta.cu"
_BLOCK = 512  # DELTA_BLOCK in delta.cu
_UMAX = 128  # DELTA_UMAX in delta.cu
_ENCODE_BLOCK = 256
_INCLUSIVE_AT_ZERO = (
    'delta_rule="inclusive" with a zero threshold fires on zero differences, whose gradient '
    "(dDelta/ds = 1) the sparse backward skips; use a threshold > 0 or the torch reference"
)

# The slots each weight row block feeds (delta_accumulator_increment, the layout's home): the
# backward reads the accumulator gradient back from them. GRU: W_ih rows (r, z, n) feed
# (r, z, nx), W_hh rows (r, z, n) feed (r, z, nh); LSTM: rows (i, f, g, o) feed 0..3 from both sides.
_GRU_IH_SLOTS = (0, 1, 2)
_GRU_HH_SLOTS = (0, 1, 3)
_LSTM_SLOTS = (0, 1, 2, 3)


def _slots(lstm: bool) -> tuple[tuple[int, ...], tuple[int, ...]]:
    return (_LSTM_SLOTS, _LSTM_SLOTS) if lstm else (_GRU_IH_SLOTS, _GRU_HH_SLOTS)


def units_per_block(hidden: int, sm_count: int) -> int:
    """Hidden units per block: the smallest power of two with ``ceil(hidden / U) <= sm_count``
    (one resident block per SM, which the grid barrier needs)."""
    u = 1
    while math.ceil(hidden / u) > sm_count:
        u *= 2
    if u > _UMAX:
        raise ValueError(f"hidden_size {hidden} needs {u} units per block on {sm_count} SMs; at most {_UMAX} supported")
    return u


def _to_unit_major(m: Tensor) -> Tensor:
    """``[B, 4H]`` (slot blocks, the state layout) → ``[B, H, 4]`` (the kernels' layout)."""
    b, g = m.shape
    return m.reshape(b, 4, g // 4).transpose(1, 2).contiguous()


def _to_slot_major(m: Tensor) -> Tensor:
    b, h, _ = m.shape
    return m.transpose(1, 2).reshape(b, 4 * h)


def _pack_weights(w_ih: Tensor, w_hh: Tensor, lstm: bool) -> Tensor:
    """``[I + H, H, 4]``: row k holds the accumulator increment of a unit delta in input k (k < I)
    or hidden unit k − I, i.e. column k of ``W_ih`` or ``W_hh`` in the slot layout, unit-major."""
    hidden, gates, inp = w_hh.shape[1], w_hh.shape[0], w_ih.shape[1]
    rows_x = delta_accumulator_increment(w_ih.t(), w_ih.new_zeros(inp, gates), not lstm)
    rows_h = delta_accumulator_increment(w_hh.new_zeros(hidden, gates), w_hh.t(), not lstm)
    return _to_unit_major(torch.cat([rows_x, rows_h]))


# ----------------------------------------------------------------------------------------------
# Engines: the recurrent core of the forward and backward passes.
# ----------------------------------------------------------------------------------------------


def _forward_torch(lstm, x, xhat0, h0, hhat0, m0u, c0, w_ih, w_hh, theta_x, theta_h, inclusive, keep):
    """CPU twin of ``delta_encode_input`` + ``delta_forward``: the encoder and the gates of
    `evsnn.functional.delta` (SPEC §4) step by step, on the kernels' unit-major accumulators."""
    steps = x.shape[0]
    rule = "inclusive" if inclusive else "strict"
    xhat, h, hhat, m, c = xhat0, h0, hhat0, m0u, c0
    outs, dxs, dhs, ms, cs = [], [], [], [], []
    for t in range(steps):
        dx, xhat = delta_encode(x[t], xhat, theta_x, rule)
        dh, hhat = delta_encode(h, hhat, theta_h, rule)
        m = m + _to_unit_major(delta_accumulator_increment(dx @ w_ih.t(), dh @ w_hh.t(), not lstm))
        if lstm:
            h, c = delta_lstm_gates(_to_slot_major(m), c)
            cs.append(c)
        else:
            h = delta_gru_gates(_to_slot_major(m), h)
        outs.append(h)
        dxs.append(dx)
        dhs.append(dh)
        ms.append(m)
    m_all = torch.stack(ms) if keep else None
    c_all = torch.stack(cs) if lstm else None
    return torch.stack(outs), torch.stack(dxs), torch.stack(dhs), xhat, hhat, m, c, m_all, c_all


def _backward_torch(lstm, g_out, g_dh, m_all, out, h0, c_all, c0, dh, w_hh, lam_h, lam_hh, lam_m, lam_c):
    """CPU twin of ``delta_backward``: returns ``(δM_all, ∂h0, ∂ĥ0, ∂M0, ∂c0)``."""
    steps = out.shape[0]
    _, hh_slots = _slots(lstm)
    dms = [None] * steps
    for t in range(steps - 1, -1, -1):
        lh = lam_h + g_out[t]
        m = m_all[t]
        if lstm:
            c = c_all[t]
            cprev = c_all[t - 1] if t > 0 else c0
            i, f, g, o = (
                torch.sigmoid(m[..., 0]),
                torch.sigmoid(m[..., 1]),
                torch.tanh(m[..., 2]),
                torch.sigmoid(m[..., 3]),
            )
            tc = torch.tanh(c)
            gc = lam_c + lh * o * (1 - tc * tc)
            local = torch.stack(
                [gc * g * i * (1 - i), gc * cprev * f * (1 - f), gc * i * (1 - g * g), lh * tc * o * (1 - o)], -1
            )
            lam_c = gc * f
            direct = torch.zeros_like(lh)
        else:
            hprev = out[t - 1] if t > 0 else h0
            r, z = torch.sigmoid(m[..., 0]), torch.sigmoid(m[..., 1])
            n = torch.tanh(m[..., 2] + r * m[..., 3])
            ga = lh * (1 - z) * (1 - n * n)
            local = torch.stack([ga * m[..., 3] * r * (1 - r), lh * (hprev - n) * z * (1 - z), ga, ga * r], -1)
            direct = lh * z
        lam_m = local + lam_m
        dms[t] = lam_m
        active = dh[t] != 0
        e = _slot_rows(lam_m, hh_slots) @ w_hh
        if g_dh is not None:
            e = e + g_dh[t]
        lam_h = direct + torch.where(active, e + lam_hh, torch.zeros_like(e))
        lam_hh = torch.where(active, -e, lam_hh)
    return torch.stack(dms), lam_h, lam_hh, lam_m, lam_c


def _slot_rows(dm: Tensor, slots: tuple[int, ...]) -> Tensor:
    """``[..., H, 4]`` → ``[..., len(slots)·H]`` in the row order of the weight matrix."""
    sel = dm[..., list(slots)]
    return sel.transpose(-1, -2).reshape(*dm.shape[:-2], len(slots) * dm.shape[-2])


def columns_per_thread(itemsize: int, tile: int) -> int:
    """``DELTA_PER``: the most columns a thread scans per chunk with the forward's static shared
    memory (column list, values of ``tile`` samples, partial sums) under the 48 KB limit."""
    for per in (4, 3, 2, 1):
        shared = (4 + itemsize * tile) * _BLOCK * per + itemsize * 4 * (_BLOCK + _UMAX) + 4 * per * (_BLOCK // 32)
        if shared <= 47 * 1024:
            return per
    raise ValueError(f"no column chunk fits in shared memory for {itemsize}-byte scalars and a {tile}-sample tile")


def tagged_exchange(dtype: torch.dtype) -> bool:
    """Whether the forward exchanges Δh through tagged 64-bit words instead of a grid barrier per step
    (DELTA_TAGGED in delta.cu): float32 only, where value and tag share 64 bits."""
    return dtype == torch.float32


def kernel_defines(lstm: bool, dtype: torch.dtype, tile: int) -> tuple[str, ...]:
    """The ``-D`` options of one compiled variant of ``delta.cu`` (besides ``scalar_t``)."""
    per = columns_per_thread(dtype.itemsize, tile)
    tagged = int(tagged_exchange(dtype))
    return (f"-DDELTA_LSTM={int(lstm)}", f"-DDELTA_BT={tile}", f"-DDELTA_TAGGED={tagged}", f"-DDELTA_PER={per}")


def _kernel(name: str, lstm: bool, dtype: torch.dtype, device: torch.device, tile: int = 1):
    defines = kernel_defines(lstm, dtype, tile)
    return rt.get_kernel(_SOURCE, name, dtype=dtype, device=device, defines=defines)


def _grid(hidden: int, device: torch.device) -> tuple[int, int]:
    index = device.index if device.index is not None else torch.cuda.current_device()
    u = units_per_block(hidden, rt.sm_count(index))
    return u, math.ceil(hidden / u)


def _forward_cupy(lstm, x, xhat0, h0, hhat0, m0u, c0, wp, theta_x, theta_h, inclusive, keep):
    steps, batch, inp = x.shape
    hidden = h0.shape[1]
    dev, dt = x.device, x.dtype
    x = x.contiguous()
    dx = torch.empty_like(x)
    xhat_t = torch.empty(batch, inp, device=dev, dtype=dt)
    n = batch * inp
    # Every tensor whose pointer goes to a kernel is held by a local name until the launch is
    # queued, so the caching allocator cannot hand its memory to the next temporary.
    xhat0 = xhat0.contiguous()
    rt.launch(
        _kernel("delta_encode_input", lstm, dt, dev),
        (math.ceil(n / _ENCODE_BLOCK),),
        (_ENCODE_BLOCK,),
        (
            rt.ptr(x),
            rt.ptr(xhat0),
            rt.ptr(dx),
            rt.ptr(xhat_t),
            rt.i32(steps),
            rt.i32(n),
            rt.scalar(theta_x, dt),
            rt.i32(int(inclusive)),
        ),
        device=dev,
    )
    m_work = m0u.clone(memory_format=torch.contiguous_format)
    h_work = h0.clone(memory_format=torch.contiguous_format)
    hh_work = hhat0.clone(memory_format=torch.contiguous_format)
    c_work = c0.clone(memory_format=torch.contiguous_format) if lstm else None
    out = torch.empty(steps, batch, hidden, device=dev, dtype=dt)
    dh = torch.empty_like(out)
    m_all = torch.empty(steps, batch, hidden, 4, device=dev, dtype=dt) if keep else None
    c_all = torch.empty_like(out) if lstm else None
    counter = torch.zeros(1, device=dev, dtype=torch.int32)
    # Tagged Δh ring (2 slots); zeros carry tag 0, which no step expects.
    xch = torch.zeros(2, batch, hidden, device=dev, dtype=torch.int64) if tagged_exchange(dt) else None
    u, blocks = _grid(hidden, dev)
    # Merging the active columns of 4 samples reads each weight column once per 4 samples.
    tile = 1 if batch == 1 else 4
    args = (
        rt.ptr(dx), rt.ptr(wp), rt.ptr(m_work), rt.ptr(h_work), rt.ptr(hh_work), rt.ptr(c_work), rt.ptr(out),
        rt.ptr(dh), rt.ptr(m_all), rt.ptr(c_all), rt.ptr(counter), rt.ptr(xch),
        rt.i32(steps), rt.i32(batch), rt.i32(inp), rt.i32(hidden), rt.i32(u), rt.scalar(theta_h, dt),
        rt.i32(int(inclusive)),
    )  # fmt: skip
    rt.launch_persistent(_kernel("delta_forward", lstm, dt, dev, tile), (blocks,), (_BLOCK,), args, device=dev)
    return out, dx, dh, xhat_t, hh_work, m_work, c_work, m_all, c_all


def _backward_cupy(lstm, g_out, g_dh, m_all, out, h0, c_all, c0, dh, wph, lam_h, lam_hh, lam_m, lam_c):
    steps, batch, hidden = out.shape
    dev, dt = out.device, out.dtype
    lam_h, lam_hh, lam_m = (t.clone(memory_format=torch.contiguous_format) for t in (lam_h, lam_hh, lam_m))
    lam_c = lam_c.clone(memory_format=torch.contiguous_format) if lstm else None
    dm_all = torch.empty(steps, batch, hidden, 4, device=dev, dtype=dt)
    counter = torch.zeros(1, device=dev, dtype=torch.int32)
    u, blocks = _grid(hidden, dev)
    g_out, h0 = g_out.contiguous(), h0.contiguous()
    g_dh = None if g_dh is None else g_dh.contiguous()
    c0 = None if c0 is None else c0.contiguous()
    args = (
        rt.ptr(g_out), rt.ptr(g_dh), rt.ptr(m_all), rt.ptr(out),
        rt.ptr(h0), rt.ptr(c_all), rt.ptr(c0), rt.ptr(dh),
        rt.ptr(wph), rt.ptr(lam_h), rt.ptr(lam_hh), rt.ptr(lam_m), rt.ptr(lam_c), rt.ptr(dm_all), rt.ptr(counter),
        rt.i32(steps), rt.i32(batch), rt.i32(hidden), rt.i32(u),
    )  # fmt: skip
    rt.launch_persistent(_kernel("delta_backward", lstm, dt, dev), (blocks,), (_BLOCK,), args, device=dev)
    return dm_all, lam_h, lam_hh, lam_m, lam_c


# ----------------------------------------------------------------------------------------------
# Forward and backward (shared by both engines), the bodies of the custom ops.
# ----------------------------------------------------------------------------------------------


def _input_memory_backward(dx: Tensor, e_x: Tensor, g_xhat_t: Tensor) -> tuple[Tensor, Tensor]:
    """Gradients of ``x`` and ``x̂_0`` through the input delta encoder, vectorised over time.

    ``λ_t = ∂L/∂x̂_t`` obeys ``λ_{t−1} = where(m_t, −e_x[t], λ_t)`` from ``λ_{T−1} = ∂L/∂x̂_T``, so
    ``λ_t`` is ``−e_x[s]`` at the first active step ``s > t`` (or ``∂L/∂x̂_T`` if none);
    ``∂L/∂x_t = m_t ⊙ (e_x[t] + λ_t)``. A reversed cumulative minimum of step indices finds ``s``.
    """
    steps = dx.shape[0]
    active = dx != 0
    idx = torch.arange(steps, device=dx.device).view(steps, *([1] * (dx.dim() - 1))).expand_as(dx)
    idx = torch.where(active, idx, torch.full_like(idx, steps))
    idx = torch.cat([idx, torch.full_like(idx[:1], steps)])
    nxt = torch.flip(torch.cummin(torch.flip(idx, (0,)), 0).values, (0,))  # first active step ≥ t
    values = torch.cat([torch.where(active, -e_x, torch.zeros_like(e_x)), g_xhat_t.unsqueeze(0)])
    lam_after = values.gather(0, nxt[1:])  # λ_t for t = 0..T−1
    g_x = torch.where(active, e_x + lam_after, torch.zeros_like(e_x))
    g_xhat0 = values.gather(0, nxt[:1]).squeeze(0)
    return g_x, g_xhat0


# The launchers below are the custom ops themselves (torch.library: one opaque op per call for
# torch.compile, whose raw-pointer reads stay inside the op; a fake kernel for its shapes; the
# backward registered as the forward's gradient). Optional tensors (the GRU's c, the
# accumulators kept for a backward) are empty tensors when absent; every output is a fresh tensor.


@torch.library.custom_op("evsnn::delta_scan_bptt_fwd", mutates_args=())
def delta_scan_bptt_fwd(
    x: Tensor,
    xhat0: Tensor,
    h0: Tensor,
    hhat0: Tensor,
    m0u: Tensor,
    c0: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    theta_x: float,
    theta_h: float,
    inclusive: bool,
    lstm: bool,
    engine: str,
    keep: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The forward of either engine (``"cupy"``: the CUDA kernels; ``"torch"``: their twin in torch
    ops, on any device) over ``x [T, B, I]`` from ``(x̂, h, ĥ, M [B, H, 4], c)``: ``(h [T, B, H],
    x̂_T, ĥ_T, M_T (unit-major), c_T, Δx, Δh, M_all, c_all)``; ``c0``/``c_T``/``c_all`` are empty
    for the GRU, ``M_all`` (the per-step accumulators the backward reads) is empty unless ``keep``
    (a backward may follow)."""
    c0 = c0 if lstm else None
    if engine == "cupy":
        wp = packed("delta", _pack_weights, (w_ih, w_hh), lstm)
        res = _forward_cupy(lstm, x, xhat0, h0, hhat0, m0u, c0, wp, theta_x, theta_h, inclusive, keep)
    else:
        res = _forward_torch(lstm, x, xhat0, h0, hhat0, m0u, c0, w_ih, w_hh, theta_x, theta_h, inclusive, keep)
    out, dx, dh, xhat_t, hhat_t, m_t, c_t, m_all, c_all = res
    empty = out.new_zeros(0)
    return (
        out, xhat_t, hhat_t, m_t, empty if c_t is None else c_t, dx, dh,
        empty.clone() if m_all is None else m_all, empty.clone() if c_all is None else c_all,
    )  # fmt: skip


@delta_scan_bptt_fwd.register_fake
def _(x, xhat0, h0, hhat0, m0u, c0, w_ih, w_hh, theta_x, theta_h, inclusive, lstm, engine, keep):
    steps, batch, n_in = x.shape
    hidden = h0.shape[1]
    seq = x.new_empty(steps, batch, hidden)
    return (
        seq, x.new_empty(batch, n_in), x.new_empty(batch, hidden), x.new_empty(batch, hidden, 4),
        x.new_empty(batch, hidden) if lstm else x.new_empty(0), x.new_empty(steps, batch, n_in), torch.empty_like(seq),
        x.new_empty(steps, batch, hidden, 4) if keep else x.new_empty(0),
        torch.empty_like(seq) if lstm else x.new_empty(0),
    )  # fmt: skip


@torch.library.custom_op("evsnn::delta_scan_bptt_bwd", mutates_args=())
def delta_scan_bptt_bwd(
    g_out: Tensor,
    g_xhat_t: Tensor,
    g_hhat_t: Tensor,
    g_m_t: Tensor,
    g_c_t: Tensor,
    g_dx: Tensor,
    g_dh: Tensor,
    out: Tensor,
    dx: Tensor,
    dh: Tensor,
    m_all: Tensor,
    c_all: Tensor,
    h0: Tensor,
    c0: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    lstm: bool,
    engine: str,
    need_w_ih: bool,
    need_w_hh: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The backward of either engine from the gradients of the forward's outputs (zeros where
    none): ``(∂x, ∂x̂_0, ∂h_0, ∂ĥ_0, ∂M_0 (unit-major), ∂c_0, ∂W_ih, ∂W_hh)``; ``∂c_0`` is empty
    for the GRU and a weight's gradient is empty unless ``need_w_*``."""
    steps, batch, hidden = out.shape
    inp = dx.shape[2]
    c0 = c0 if lstm else None
    c_all = c_all if lstm else None
    lam_c = g_c_t if lstm else None
    lam_h = torch.zeros(batch, hidden, device=out.device, dtype=out.dtype)
    if engine == "cupy":
        core, w_rec = _backward_cupy, packed("delta", _pack_weights, (w_ih, w_hh), lstm)[inp:]
    else:
        core, w_rec = _backward_torch, w_hh
    dm_all, g_h0, g_hhat0, g_m0, g_c0 = core(
        lstm, g_out, g_dh, m_all, out, h0, c_all, c0, dh, w_rec, lam_h, g_hhat_t, g_m_t, lam_c
    )

    ih_slots, hh_slots = _slots(lstm)
    dm_x = _slot_rows(dm_all, ih_slots).reshape(steps * batch, -1)  # [T·B, G·H]
    dm_h = _slot_rows(dm_all, hh_slots).reshape(steps * batch, -1)
    empty = out.new_zeros(0)
    g_w_ih = dm_x.t() @ dx.reshape(steps * batch, inp) if need_w_ih else empty.clone()
    g_w_hh = dm_h.t() @ dh.reshape(steps * batch, hidden) if need_w_hh else empty.clone()
    e_x = (dm_x @ w_ih).reshape(steps, batch, inp) + g_dx
    g_x, g_xhat0 = _input_memory_backward(dx, e_x, g_xhat_t)
    return g_x, g_xhat0, g_h0, g_hhat0, g_m0, (g_c0 if lstm else empty), g_w_ih, g_w_hh


@delta_scan_bptt_bwd.register_fake
def _(g_out, g_xhat_t, g_hhat_t, g_m_t, g_c_t, g_dx, g_dh, out, dx, dh, m_all, c_all, h0, c0, w_ih, w_hh, lstm,
      engine, need_w_ih, need_w_hh):  # fmt: skip
    empty = out.new_empty(0)
    return (
        dx.new_empty(dx.shape), g_xhat_t.new_empty(g_xhat_t.shape), h0.new_empty(h0.shape),
        g_hhat_t.new_empty(g_hhat_t.shape), g_m_t.new_empty(g_m_t.shape), c0.new_empty(c0.shape) if lstm else empty,
        w_ih.new_empty(w_ih.shape) if need_w_ih else out.new_empty(0),
        w_hh.new_empty(w_hh.shape) if need_w_hh else out.new_empty(0),
    )  # fmt: skip


def _setup_bptt(ctx, inputs, output) -> None:
    x, xhat0, h0, hhat0, m0u, c0, w_ih, w_hh, theta_x, theta_h, inclusive, lstm, engine, keep = inputs
    out, xhat_t, hhat_t, m_t, c_t, dx, dh, m_all, c_all = output
    ctx.save_for_backward(out, dx, dh, m_all, c_all, h0, c0, w_ih, w_hh)
    ctx.flags = (lstm, engine)
    # The per-step accumulators and cells are residuals for the backward, not results.
    ctx.mark_non_differentiable(m_all, c_all)


def _backward_bptt(ctx, g_out, g_xhat_t, g_hhat_t, g_m_t, g_c_t, g_dx, g_dh, _g_m_all, _g_c_all):
    out, dx, dh, m_all, c_all, h0, c0, w_ih, w_hh = ctx.saved_tensors
    lstm, engine = ctx.flags
    family = "delta_lstm" if lstm else "delta_gru"
    refuse_double_backward("cupy", family, g_out, g_dx, g_dh, out, dx, dh, h0, c0, w_ih, w_hh)
    steps, batch, hidden = out.shape

    def zeros_if_none(g: Tensor | None, *shape: int) -> Tensor:
        return out.new_zeros(shape) if g is None else g

    grads = torch.ops.evsnn.delta_scan_bptt_bwd(
        zeros_if_none(g_out, steps, batch, hidden),
        zeros_if_none(g_xhat_t, batch, dx.shape[2]),
        zeros_if_none(g_hhat_t, batch, hidden),
        zeros_if_none(g_m_t, batch, hidden, 4),
        zeros_if_none(g_c_t, batch, hidden) if lstm else out.new_zeros(0),
        zeros_if_none(g_dx, *dx.shape),
        zeros_if_none(g_dh, *dh.shape),
        out, dx, dh, m_all, c_all, h0, c0, w_ih, w_hh, lstm, engine,
        ctx.needs_input_grad[6], ctx.needs_input_grad[7],
    )  # fmt: skip
    g_x, g_xhat0, g_h0, g_hhat0, g_m0, g_c0, g_w_ih, g_w_hh = grads
    return (
        g_x, g_xhat0, g_h0, g_hhat0, g_m0, g_c0 if lstm else None,
        g_w_ih if ctx.needs_input_grad[6] else None, g_w_hh if ctx.needs_input_grad[7] else None,
        None, None, None, None, None, None,
    )  # fmt: skip


delta_scan_bptt_fwd.register_autograd(_backward_bptt, setup_context=_setup_bptt)


# ----------------------------------------------------------------------------------------------
# Public scans (the signature of the reference scans, plus the engine).
# ----------------------------------------------------------------------------------------------


def _check_theta(name: str, value: Any) -> float:
    if isinstance(value, Tensor):
        raise TypeError(
            f"{name} must be a Python float for the sparse-BPTT scan (a tensor would need a host sync), got a Tensor"
        )
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _check_args(name, x, weight_ih, weight_hh, gates, engine):
    if engine not in ENGINES:
        raise ValueError(f"{name}: engine must be one of {ENGINES}, got {engine!r}")
    if not isinstance(x, Tensor) or x.dim() != 3:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} expects x of shape [T, B, input_size], got {got}")
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{name} needs at least one step and one sample, got shape {tuple(x.shape)}")
    for wname, w in (("weight_ih", weight_ih), ("weight_hh", weight_hh)):
        if not isinstance(w, Tensor) or w.dim() != 2:
            raise TypeError(f"{name}: {wname} must be a 2-D tensor, got {type(w).__name__}")
        if w.dtype != x.dtype or w.device != x.device:
            raise TypeError(f"{name}: {wname} is {w.dtype} on {w.device} but x is {x.dtype} on {x.device}")
    hidden = weight_hh.shape[1]
    if weight_hh.shape != (gates * hidden, hidden) or weight_ih.shape != (gates * hidden, x.shape[2]):
        raise ValueError(
            f"{name}: weight_ih must be [{gates}H, I] and weight_hh [{gates}H, H] with I = {x.shape[2]}, "
            f"got {tuple(weight_ih.shape)} and {tuple(weight_hh.shape)}"
        )
    if engine == "cupy":
        # Dispatch ran check_cuda when it chose this backend; a direct call is refused only for
        # what its own arguments decide (a missing CuPy or GPU fails at the kernel's compile or
        # launch, a hidden size over the grid at units_per_block).
        reason = _argument_reason(x.device, x.dtype)
        if reason is not None:
            raise ValueError(f"{name}: the cupy engine cannot run this call: {reason}")


def _scan(lstm, x, state, weight_ih, weight_hh, bias_ih, bias_hh, theta_x, theta_h, engine, delta_rule="strict"):
    name = "delta_lstm_scan_bptt" if lstm else "delta_gru_scan_bptt"
    _check_args(name, x, weight_ih, weight_hh, 4 if lstm else 3, engine)
    theta_x = _check_theta("theta_x", theta_x)
    theta_h = _check_theta("theta_h", theta_h)
    inclusive = check_delta_rule(delta_rule) == "inclusive"
    if inclusive and min(theta_x, theta_h) == 0.0:
        raise ValueError(f"{name}: {_INCLUSIVE_AT_ZERO}")
    batch, inp, hidden = x.shape[1], x.shape[2], weight_hh.shape[1]
    if state is None:
        init = delta_lstm_initial_state if lstm else delta_gru_initial_state
        state = init(batch, inp, hidden, bias_ih, bias_hh, x)
    if lstm:
        h0, c0, xhat0, hhat0, m0 = state
    else:
        (h0, xhat0, hhat0, m0), c0 = state, None
    inputs = (x, xhat0, h0, hhat0, m0, c0, weight_ih, weight_hh)
    keep = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)
    out, xhat_t, hhat_t, m_t, c_t, dx, dh, _, _ = torch.ops.evsnn.delta_scan_bptt_fwd(
        x,
        xhat0,
        h0,
        hhat0,
        _to_unit_major(m0),
        x.new_zeros(0) if c0 is None else c0,
        weight_ih,
        weight_hh,
        theta_x,
        theta_h,
        inclusive,
        lstm,
        engine,
        keep,
    )
    m_t = _to_slot_major(m_t)
    trace = DeltaTrace(dx, dh)
    if lstm:
        return out, DeltaLSTMState(out[-1], c_t, xhat_t, hhat_t, m_t), trace
    return out, DeltaGRUState(out[-1], xhat_t, hhat_t, m_t), trace


def delta_gru_scan_bptt(
    x: Tensor,
    state: DeltaGRUState | None,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None,
    bias_hh: Tensor | None,
    *,
    theta_x: float = 0.0,
    theta_h: float = 0.0,
    delta_rule: str = "strict",
    engine: str = "cupy",
) -> tuple[Tensor, DeltaGRUState, DeltaTrace]:
    """[`evsnn.functional.delta_gru_scan`][evsnn.functional.delta_gru_scan] with the symmetric sparse backward (module docstring).

    ``engine="cupy"`` runs the CUDA kernels (CUDA tensors); ``"torch"`` the twin in torch ops."""
    return _scan(False, x, state, weight_ih, weight_hh, bias_ih, bias_hh, theta_x, theta_h, engine, delta_rule)


def delta_lstm_scan_bptt(
    x: Tensor,
    state: DeltaLSTMState | None,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None,
    bias_hh: Tensor | None,
    *,
    theta_x: float = 0.0,
    theta_h: float = 0.0,
    delta_rule: str = "strict",
    engine: str = "cupy",
) -> tuple[Tensor, DeltaLSTMState, DeltaTrace]:
    """[`evsnn.functional.delta_lstm_scan`][evsnn.functional.delta_lstm_scan] with the symmetric sparse backward (module docstring)."""
    return _scan(True, x, state, weight_ih, weight_hh, bias_ih, bias_hh, theta_x, theta_h, engine, delta_rule)


def delta_gru_scan_cuda(
    x, state, weight_ih, weight_hh, bias_ih, bias_hh, *, theta_x=0.0, theta_h=0.0, delta_rule="strict"
):
    """The CuPy backend of ``"delta_gru"`` (the reference scan's signature and return value)."""
    return _scan(False, x, state, weight_ih, weight_hh, bias_ih, bias_hh, theta_x, theta_h, "cupy", delta_rule)


def delta_lstm_scan_cuda(
    x, state, weight_ih, weight_hh, bias_ih, bias_hh, *, theta_x=0.0, theta_h=0.0, delta_rule="strict"
):
    """The CuPy backend of ``"delta_lstm"``."""
    return _scan(True, x, state, weight_ih, weight_hh, bias_ih, bias_hh, theta_x, theta_h, "cupy", delta_rule)


def kernels_available() -> bool:
    """Whether the CuPy kernels can run here (CuPy and a CUDA GPU; the reason otherwise:
    [`evsnn.ops.cupy_runtime.unavailable_reason`][evsnn.ops.cupy_runtime.unavailable_reason])."""
    return rt.unavailable_reason() is None


def check_cuda(*, device: torch.device, dtype: torch.dtype | None = None, **config: Any) -> str | None:
    """``None`` if the CuPy delta kernels can run this call, else why not."""
    reason = _argument_reason(device, dtype) or rt.unavailable_reason()
    if reason is not None:
        return reason
    for key in ("theta_x", "theta_h"):
        value = config.get(key, 0.0)
        if isinstance(value, Tensor):
            return f"{key} must be a Python float for the CuPy delta kernels, got a Tensor"
    if config.get("fixed_point") is not None:
        return f"fixed_point={config['fixed_point']} (Qm.n rounding) is implemented by the torch reference only"
    if (
        config.get("delta_rule", "strict") == "inclusive"
        and min(config.get("theta_x", 0.0), config.get("theta_h", 0.0)) == 0.0
    ):
        return _INCLUSIVE_AT_ZERO
    shape = config.get("shape")
    if shape is not None:
        index = device.index if device.index is not None else torch.cuda.current_device()
        try:
            units_per_block(shape[-1], rt.sm_count(index))
        except ValueError as exc:
            return str(exc)
    return None


def _argument_reason(device: torch.device, dtype: torch.dtype | None) -> str | None:
    """What the tensors' device and dtype rule out (no probe of the machine): part of
    `check_cuda`, which dispatch runs once per decision, and what a direct cupy-engine scan
    re-asks (its thresholds and delta rule are validated by the scan itself)."""
    return rt.tensor_reason("the CuPy delta kernels", device, dtype)
