"""CuPy backend of the EGRU (SPEC.md §3): persistent event-sparse forward and sparse BPTT kernels.

``egru_scan_cuda`` has exactly the signature and return value of
[`evsnn.functional.egru.egru_scan`][evsnn.functional.egru.egru_scan]. The work is split as follows (``cuda/egru.cu``):

- ``gi = x W_ihᵀ + b_ih`` for all steps: one torch GEMM (autograd gives ``dx``, ``dW_ih``, ``db_ih``).
- Forward: ONE persistent kernel over all T steps, a grid barrier per step. Each block owns a
  slice of units; per sample it compacts the events of ``y_{t−1}`` with warp ballots and reads
  only their columns of ``W_hh`` (time ∝ number of events), then runs the fused gates.
- Backward: ONE persistent reverse-time kernel. ``∂L/∂y_t`` (``W_hhᵀ δ_{t+1}``) is computed only
  for units with ``o_t = 1`` or ``|c_pre − θ| <`` the surrogate's support (event-sparse BPTT;
  an infinite support makes it dense but still exact), then the fused pointwise backward.
  ``dW_hh = Σ_t δh_tᵀ y_{t−1}`` and ``∂L/∂y_0`` are dense torch GEMMs after the kernel.

Deterministic: no float atomics; ∂L/∂θ is accumulated per (sample, unit) in time order and
summed over samples by torch. No host synchronisation in forward or backward.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ...functional.egru import RESETS, EGRUState, EGRUTrace
from ...surrogate import Surrogate, Triangle
from .. import cupy_runtime as rt
from ..compile_marks import assume_constant_result
from ..packed_weights import packed
from ..transforms import refuse_double_backward

__all__ = [
    "egru_scan_cuda",
    "egru_scan_cuda_fwd",
    "egru_scan_cuda_bwd",
    "check_cuda",
    "kernels_available",
    "surrogate_kernel_args",
    "units_per_block",
]

_SOURCE = "egru.cu"
_BUF = 64
_UNITS = (1, 2, 4, 8, 16)
_DEFAULT_SURROGATE = Triangle(0.3)


def surrogate_kernel_args(surrogate: Surrogate, dtype: torch.dtype) -> tuple:
    """``(kind, p0, p1, p2, p3, trunc)`` as kernel arguments in ``dtype`` (packing shared with
    every family: [`evsnn.ops.cupy_runtime.surrogate_kernel_args`][evsnn.ops.cupy_runtime.surrogate_kernel_args]).

    Raises ``ValueError`` when the surrogate has no kernel form (``kernel_spec()`` is ``None``).
    """
    packed = rt.surrogate_kernel_args(surrogate)
    if packed is None:
        raise ValueError(f"surrogate {surrogate!r} has no kernel form (kernel_spec() is None)")
    kind, params, trunc = packed
    return (rt.i32(kind),) + tuple(rt.scalar(v, dtype) for v in params) + (rt.scalar(trunc, dtype),)


def _threads(u: int) -> int:
    """Threads per block: 1024 where the forward's register tile fits 64 registers (U <= 4)."""
    return 1024 if u <= 4 else 512


def _defines(u: int) -> tuple[str, str]:
    return (f"-DEGRU_U={u}", f"-DEGRU_THREADS={_threads(u)}")


def units_per_block(hidden: int, sms: int) -> int | None:
    """Smallest EGRU_U with ``ceil(hidden / U) <= sms`` (one co-resident block per SM), or None."""
    for u in _UNITS:
        if math.ceil(hidden / u) <= sms:
            return u
    return None


@assume_constant_result
def _smem_limit(device_index: int) -> int:
    import cupy

    # 97 = cudaDevAttrMaxSharedMemoryPerBlockOptin (what a block may get after opting in).
    return int(cupy.cuda.runtime.deviceGetAttribute(97, device_index))


def _layout(hidden: int, batch: int, dtype: torch.dtype, device: torch.device) -> tuple[int, int, bool, int, bool, int]:
    """(U, nblocks, fwd_smem_weights, fwd_shared_bytes, bwd_smem_weights, bwd_shared_bytes)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    u = units_per_block(hidden, rt.sm_count(index))
    if u is None:
        raise ValueError(f"hidden size {hidden} is larger than 16 units × {rt.sm_count(index)} SMs of this GPU")
    nb = math.ceil(hidden / u)
    es = dtype.itemsize
    limit = _smem_limit(index)
    fwd_base = _threads(u) // 32 * _BUF * (es + 4)
    fwd_w = hidden * (3 * u + 1) * es
    fwd_smem = fwd_base + fwd_w <= limit
    bwd_base = batch * u * 4
    bwd_w = u * 3 * hidden * es
    bwd_smem = bwd_base + bwd_w <= limit
    if bwd_base > limit:
        raise ValueError(f"batch {batch} is too large for the EGRU backward kernel's shared list ({bwd_base} bytes)")
    return u, nb, fwd_smem, fwd_base + (fwd_w if fwd_smem else 0), bwd_smem, bwd_base + (bwd_w if bwd_smem else 0)


def kernels_available() -> bool:
    """Whether the CuPy kernels can run here (CuPy and a CUDA GPU; the reason otherwise:
    [`evsnn.ops.cupy_runtime.unavailable_reason`][evsnn.ops.cupy_runtime.unavailable_reason])."""
    return rt.unavailable_reason() is None


def check_cuda(
    *,
    device: torch.device,
    dtype: torch.dtype | None = None,
    surrogate: Surrogate | None = None,
    reset: str = "output",
    zoneout: float = 0.0,
    shape: tuple[int, int, int] | None = None,
    **_: object,
) -> str | None:
    """``None`` if the CuPy EGRU can run this call, else why not."""
    reason = _argument_reason(device, dtype, surrogate, reset, zoneout) or rt.unavailable_reason()
    if reason is not None:
        return reason
    if shape is not None:
        try:
            _layout(int(shape[2]), int(shape[1]), dtype or torch.float32, device)
        except ValueError as exc:
            return str(exc)
    return None


def _argument_reason(
    device: torch.device, dtype: torch.dtype | None, surrogate: Surrogate | None, reset: str, zoneout: float
) -> str | None:
    """What the call's own arguments rule out (no probe of the machine, no layout): part of
    `check_cuda`, which dispatch runs once per decision, and all that a direct
    `egru_scan_cuda` re-asks (a layout that does not fit is refused by the launcher)."""
    reason = rt.tensor_reason("the CuPy EGRU kernels", device, dtype)
    if reason is not None:
        return reason
    if reset not in RESETS:
        return f"reset must be one of {RESETS}, got {reset!r}"
    if zoneout:
        return "zoneout is not implemented in the CuPy EGRU kernels (use backend='torch')"
    sg = _DEFAULT_SURROGATE if surrogate is None else surrogate
    if rt.surrogate_kernel_args(sg) is None:
        return f"surrogate {sg!r} has no kernel form (kernel_spec() is None)"
    return None


def _launch(kernel, grid: int, u: int, args: tuple, device: torch.device, shared_mem: int) -> None:
    rt.launch_persistent(kernel, (grid,), (_threads(u),), args, device=device, shared_mem=shared_mem)


def _pack_forward(weight_hh: Tensor, u: int, nb: int) -> Tensor:
    """``[nb, H, 3U+1]`` with ``[k, j, g·U + v] = W_hh[g·H + k·U + v, j]`` (zero past H)."""
    h = weight_hh.shape[1]
    w = weight_hh.view(3, h, h)
    w = torch.nn.functional.pad(w, (0, 0, 0, nb * u - h))  # [3, nb·U, H]
    w = w.view(3, nb, u, h).permute(1, 3, 0, 2).reshape(nb, h, 3 * u)
    return torch.nn.functional.pad(w, (0, 1)).contiguous()


def _pack_backward(weight_hh: Tensor, u: int, nb: int) -> Tensor:
    """``[nb, U, 3H]`` with ``[k, v, j] = W_hh[j, k·U + v]`` (zero past H)."""
    h = weight_hh.shape[1]
    w = torch.nn.functional.pad(weight_hh, (0, nb * u - h))  # [3H, nb·U]
    return w.view(3 * h, nb, u).permute(1, 2, 0).contiguous()


# The launchers below are the custom ops themselves (torch.library: one opaque op per call for
# torch.compile, whose raw-pointer reads stay inside the op; a fake kernel for its shapes; the
# backward registered as the forward's gradient). Every output is a fresh tensor.


@torch.library.custom_op("evsnn::egru_scan_cuda_fwd", mutates_args=(), device_types="cuda")
def egru_scan_cuda_fwd(
    gi: Tensor,
    c0: Tensor,
    y0: Tensor,
    weight_hh: Tensor,
    bias_hh: Tensor,
    theta: Tensor,
    reset_threshold: bool,
    sg_kind: int,
    sg_params: list[float],
    sg_trunc: float,
    support: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """The persistent forward kernel over ``gi = W_ih x + b_ih [T, B, 3H]`` (contiguous, one dtype
    and device): ``(y [T, B, H], c_T [B, H], save [5, T, B, H])``; ``save[4]`` is ``c_pre``, the
    rest is what the backward reads. The surrogate's kernel form (``sg_*``, ``support``) serves
    the backward."""
    steps, batch, h3 = gi.shape
    hidden = h3 // 3
    device = gi.device
    dtype = gi.dtype
    u, nb, fsm, fbytes, _, _ = _layout(hidden, batch, dtype, device)
    kernel = rt.get_kernel(_SOURCE, "egru_forward", dtype=dtype, device=device, defines=_defines(u))
    out = torch.empty(steps, batch, hidden, dtype=dtype, device=device)
    c_state = c0.clone()
    save = torch.empty(5, steps, batch, hidden, dtype=dtype, device=device)
    barrier = torch.zeros(1, dtype=torch.int32, device=device)
    wpack = packed("egru_forward", _pack_forward, (weight_hh,), u, nb)
    args = (
        rt.ptr(gi),
        rt.ptr(y0),
        rt.ptr(wpack),
        rt.ptr(bias_hh),
        rt.ptr(theta),
        rt.ptr(out),
        rt.ptr(c_state),
        rt.ptr(save),
        rt.ptr(barrier),
        rt.i32(steps),
        rt.i32(batch),
        rt.i32(hidden),
        rt.i32(int(fsm)),
        rt.i32(int(reset_threshold)),
    )
    _launch(kernel, nb, u, args, device, fbytes)
    return out, c_state, save


@egru_scan_cuda_fwd.register_fake
def _(gi, c0, y0, weight_hh, bias_hh, theta, reset_threshold, sg_kind, sg_params, sg_trunc, support):
    steps, batch, h3 = gi.shape
    hidden = h3 // 3
    return gi.new_empty(steps, batch, hidden), c0.new_empty(c0.shape), gi.new_empty(5, steps, batch, hidden)


@torch.library.custom_op("evsnn::egru_scan_cuda_bwd", mutates_args=(), device_types="cuda")
def egru_scan_cuda_bwd(
    grad_out: Tensor,
    grad_c: Tensor,
    save: Tensor,
    c0: Tensor,
    y0: Tensor,
    out: Tensor,
    weight_hh: Tensor,
    theta: Tensor,
    reset_threshold: bool,
    sg_kind: int,
    sg_params: list[float],
    sg_trunc: float,
    support: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The persistent reverse-time kernel, then the dense weight-gradient GEMMs:
    ``(∂gi, ∂c_0, ∂y_0, ∂W_hh, ∂b_hh, ∂θ)``. The surrogate comes as its kernel form
    ([`evsnn.ops.cupy_runtime.surrogate_kernel_args`][evsnn.ops.cupy_runtime.surrogate_kernel_args]) and its support (``inf`` for none)."""
    steps, batch, hidden = out.shape
    device, dtype = out.device, out.dtype
    u, nb, _, _, bsm, bbytes = _layout(hidden, batch, dtype, device)
    gy = grad_out.contiguous()
    dc = grad_c.contiguous().clone()
    dgi = torch.empty(steps, batch, 3 * hidden, dtype=dtype, device=device)
    dgh = torch.empty_like(dgi)
    dp0 = torch.zeros_like(c0)
    dtheta_part = torch.zeros_like(c0)
    dyrec = torch.zeros_like(c0)
    barrier = torch.zeros(1, dtype=torch.int32, device=device)
    wbpack = packed("egru_backward", _pack_backward, (weight_hh,), u, nb)
    kernel = rt.get_kernel(_SOURCE, "egru_backward", dtype=dtype, device=device, defines=_defines(u))
    surrogate = (rt.i32(sg_kind),) + tuple(rt.scalar(v, dtype) for v in sg_params) + (rt.scalar(sg_trunc, dtype),)
    args = (
        (
            rt.ptr(gy),
            rt.ptr(save),
            rt.ptr(c0),
            rt.ptr(wbpack),
            rt.ptr(theta),
            rt.ptr(dgi),
            rt.ptr(dgh),
            rt.ptr(dc),
            rt.ptr(dp0),
            rt.ptr(dtheta_part),
            rt.ptr(dyrec),
            rt.ptr(barrier),
            rt.i32(steps),
            rt.i32(batch),
            rt.i32(hidden),
            rt.i32(int(bsm)),
            rt.i32(int(reset_threshold)),
        )
        + surrogate
        + (rt.scalar(support, dtype),)
    )
    _launch(kernel, nb, u, args, device, bbytes)
    # Dense GEMMs over all steps (cuBLAS): the weight gradient does not skip zero events.
    dgh_flat = dgh.view(steps * batch, 3 * hidden)
    y_prev = torch.cat([y0.unsqueeze(0), out[:-1]]).view(steps * batch, hidden)
    d_weight_hh = dgh_flat.t() @ y_prev
    d_bias_hh = dgh_flat.sum(0)
    d_y0 = dgh[0] @ weight_hh
    if not reset_threshold:
        d_y0 = d_y0 - dp0
    return dgi, dc, d_y0, d_weight_hh, d_bias_hh, dtheta_part.sum(0)


@egru_scan_cuda_bwd.register_fake
def _(grad_out, grad_c, save, c0, y0, out, weight_hh, theta, reset_threshold, sg_kind, sg_params, sg_trunc, support):
    steps, batch, hidden = out.shape
    return (
        out.new_empty(steps, batch, 3 * hidden),
        c0.new_empty(c0.shape),
        y0.new_empty(y0.shape),
        weight_hh.new_empty(weight_hh.shape),
        weight_hh.new_empty(3 * hidden),
        theta.new_empty(theta.shape),
    )


def _setup_fwd(ctx, inputs, output) -> None:
    gi, c0, y0, weight_hh, bias_hh, theta, *flags = inputs
    out, _, save = output
    ctx.save_for_backward(save, c0, y0, out, weight_hh, theta)
    ctx.flags = flags  # reset_threshold and the surrogate's kernel form
    ctx.mark_non_differentiable(save)  # c_pre (save[4]) passes no gradient, as in every EGRU kernel


def _backward_fwd(ctx, grad_out, grad_c, _grad_save):
    save, c0, y0, out, weight_hh, theta = ctx.saved_tensors
    refuse_double_backward("cupy", "egru", grad_out, grad_c, c0, y0, out, weight_hh, theta)
    grad_out = torch.zeros_like(out) if grad_out is None else grad_out
    grad_c = torch.zeros_like(c0) if grad_c is None else grad_c
    grads = torch.ops.evsnn.egru_scan_cuda_bwd(grad_out, grad_c, save, c0, y0, out, weight_hh, theta, *ctx.flags)
    return (*grads, None, None, None, None, None)


egru_scan_cuda_fwd.register_autograd(_backward_fwd, setup_context=_setup_fwd)


def _same(name: str, t: Tensor, like: Tensor, shape: tuple[int, ...]) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    if t.device != like.device or t.dtype != like.dtype:
        raise ValueError(f"{name} must be on {like.device} with dtype {like.dtype}, got {t.device} / {t.dtype}")
    return t.contiguous()


def egru_scan_cuda(
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
    """EGRU over ``x`` ``[T, B, I]`` with the CuPy kernels; same contract as ``egru_scan``."""
    if not isinstance(x, Tensor) or x.dim() != 3:
        raise ValueError(f"x must be a [T, B, I] tensor, got {type(x).__name__} {getattr(x, 'shape', '')}")
    steps, batch, _ = x.shape
    if steps < 1 or batch < 1:
        raise ValueError(f"x needs at least one step and one sample, got shape {tuple(x.shape)}")
    hidden = weight_hh.shape[1]
    # Dispatch ran check_cuda when it chose this backend; a direct call is refused only for what
    # its own arguments decide (a missing CuPy or GPU fails at the kernel's compile or launch).
    reason = _argument_reason(x.device, x.dtype, surrogate, reset, zoneout)
    if reason is not None:
        raise ValueError(f"the CuPy EGRU cannot run this call: {reason}")
    weight_hh = _same("weight_hh", weight_hh, x, (3 * hidden, hidden))
    threshold = _same("threshold", threshold, x, (hidden,))
    if state is None:
        c0 = x.new_zeros(batch, hidden)
        y0 = c0
    else:
        c0 = _same("state.c", state.c, x, (batch, hidden))
        y0 = _same("state.y", state.y, x, (batch, hidden))
    gi = x @ weight_ih.t()
    if bias_ih is not None:
        gi = gi + bias_ih
    b_hh = x.new_zeros(3 * hidden) if bias_hh is None else _same("bias_hh", bias_hh, x, (3 * hidden,))
    kind, params, trunc = rt.surrogate_kernel_args(surrogate)
    support = math.inf if surrogate.support is None else float(surrogate.support)
    out, c_final, save = torch.ops.evsnn.egru_scan_cuda_fwd(
        gi.contiguous(), c0, y0, weight_hh, b_hh, threshold, reset == "threshold", kind, list(params), trunc, support
    )
    return out, EGRUState(c_final, out[-1]), EGRUTrace(save[4])
