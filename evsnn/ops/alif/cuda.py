"""CuPy backend of the ALIF scan (SPEC.md §2), registered as ``("cupy", "alif")``.

`alif_scan_cuda` has exactly the signature and the return value of
[`evsnn.functional.alif_scan`][evsnn.functional.alif_scan], ``(spikes [T, B, N], ALIFState(v, b, s), ALIFTrace(v, threshold))``,
and computes the same function with two kernels per call (``cuda/alif.cu``):

- feed-forward (``weight_hh=None``): one thread per (sample, neuron) loops over all T steps with
  the state in registers; the backward is one reverse-time kernel of the same shape;
- recurrent: one persistent launch per sequence (grid ≤ number of SMs, a grid barrier per
  step) whose input ``W_hh s_{t−1}`` sums only the columns of spiking units, and whose backward
  computes ``(W_hhᵀ δ)[j]`` only where a unit's pseudo-derivative is nonzero (all units with an
  infinite-support surrogate, few with a truncated one); ``∂L/∂W_hh`` is one GEMM over all steps.
  Where it fits (`smem_plan`), the backward keeps each block's 32 columns of ``W_hh`` in
  shared memory for the whole sequence and serves 4 samples per pass from them
  (``alif_rec_backward_smem``); otherwise every step reads ``W_hh`` from L2 (``alif_rec_backward``).

``α = exp(−1/max(τ_m, 1))`` and ``ρ`` are computed by torch ([`evsnn.functional.alif.decay`][evsnn.functional.alif.decay]),
so gradients reach ``tau_mem``/``tau_adapt`` through autograd exactly as in the reference.
Gradients: current, initial state, τ_m, τ_adp, b0 and β (when tensors that require grad),
``weight_hh``, ``bias_hh``; also through the trace outputs. No host synchronisation; parameter
gradients are per-(sample, neuron) partials reduced by torch (deterministic).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ...functional.alif import ALIFState, ALIFTrace, alif_initial_state, decay
from ...surrogate import MultiGaussian, Surrogate
from .. import cupy_runtime as rt
from ..cupy_runtime import surrogate_kernel_args
from ..packed_weights import packed
from ..transforms import refuse_double_backward

__all__ = [
    "alif_scan_cuda",
    "alif_scan_cuda_fwd",
    "alif_scan_cuda_bwd",
    "check_cuda",
    "kernels_available",
    "surrogate_kernel_args",
    "smem_plan",
    "REC_THREADS",
    "FF_THREADS",
]

SOURCE = "alif.cu"
# Threads per block of the recurrent kernels: must equal ALIF_REC_THREADS of alif.cu.
REC_THREADS = 128
FF_THREADS = 256
# --fmad=false: the kernels repeat the reference's operations in its order, with its roundings.
_DEFINES = ("--fmad=false",)
SM_COLS = 32  # ALIF_SM_COLS of alif.cu: columns of W_hh per block
SM_TILE = 4  # ALIF_SM_TILE of alif.cu: samples per pass

_DEFAULT_SURROGATE = MultiGaussian()


def kernels_available() -> bool:
    """Whether the CuPy kernels can run here (CuPy and a CUDA GPU; the reason otherwise:
    [`evsnn.ops.cupy_runtime.unavailable_reason`][evsnn.ops.cupy_runtime.unavailable_reason])."""
    return rt.unavailable_reason() is None


def check_cuda(
    *, device: torch.device, dtype: torch.dtype | None = None, surrogate: Any = None, **_: Any
) -> str | None:
    """``None`` if the CuPy ALIF kernels can run this call, else the reason."""
    device = torch.device(device)
    if device.type != "cuda":
        reason = rt.unavailable_reason()
        hint = f" ({reason})" if reason else ""
        return (
            f"the CuPy ALIF kernels need CUDA tensors, got a {device.type} tensor{hint}; for a GPU install "
            f'pip install "evsnn[cuda13]" and move the layer to "cuda"'
        )
    reason = rt.unavailable_reason()
    if reason is not None:
        return reason
    return _argument_reason(device, dtype, surrogate)


def _argument_reason(device: torch.device, dtype: torch.dtype | None, surrogate: Any) -> str | None:
    """What the call's own arguments rule out (no probe of the machine): part of `check_cuda`,
    which dispatch runs once per decision, and all that a direct `alif_scan_cuda` re-asks."""
    reason = rt.tensor_reason("the CuPy ALIF kernels", device, dtype)
    if reason is not None:
        return reason
    if surrogate is not None and surrogate_kernel_args(surrogate) is None:
        return f"surrogate {surrogate!r} has no kernel form (kernel_spec() is None); use the torch backend"
    return None


def _per_neuron(name: str, value: float | Tensor, n: int, like: Tensor) -> Tensor:
    """``value`` as a contiguous ``[n]`` tensor (a float, a 0-d/1-element tensor or an ``[n]`` tensor)."""
    if isinstance(value, Tensor):
        if value.dim() == 0 or tuple(value.shape) == (1,):
            return value.reshape(()).expand(n).to(dtype=like.dtype).contiguous()
        if tuple(value.shape) != (n,):
            raise ValueError(f"{name} must be a number or a tensor of shape ({n},), got shape {tuple(value.shape)}")
        if value.device != like.device:
            raise ValueError(f"{name} is on {value.device} but the input current is on {like.device}")
        return value.to(dtype=like.dtype).contiguous()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return torch.full((n,), float(value), dtype=like.dtype, device=like.device)
    raise TypeError(f"{name} must be a float or a tensor, got {type(value).__name__}")


def _grid(units: int, device: torch.device) -> int:
    index = device.index if device.index is not None else torch.cuda.current_device()
    return max(1, min(units, rt.sm_count(index)))


def _smem_limit(index: int) -> int:
    """Largest dynamic shared memory one block may opt into on this device (bytes)."""
    props = torch.cuda.get_device_properties(index)
    limit = getattr(props, "shared_memory_per_block_optin", None)
    if limit is None:
        import cupy

        limit = cupy.cuda.runtime.getDeviceProperties(index)["sharedMemPerBlockOptin"]
    return int(limit)


def smem_plan(B: int, N: int, itemsize: int, blocks: int, smem_limit: int) -> tuple[int, int, int] | None:
    """``(grid, samples_per_block, shared_bytes)`` of ``alif_rec_backward_smem``, or ``None`` if it
    does not fit: every block owns ``SM_COLS`` columns of ``W_hh`` (kept in shared memory for the
    whole sequence) for a contiguous range of samples; ``blocks`` is the most resident blocks."""
    chunks = math.ceil(N / SM_COLS)
    if chunks > blocks:
        return None
    groups = max(1, min(blocks // chunks, math.ceil(B / SM_TILE)))
    spb = math.ceil(B / groups)
    groups = math.ceil(B / spb)  # no empty group
    scalars = N * SM_COLS + N * SM_TILE + (REC_THREADS // 32) * SM_TILE * SM_COLS + 7 * spb * SM_COLS
    shared = scalars * itemsize
    if shared > smem_limit:
        return None
    return chunks * groups, spb, shared


def _transposed(weight_hh: Tensor) -> Tensor:
    """``W_hhᵀ`` contiguous: a spiking unit's outgoing weights are one row."""
    return weight_hh.t().contiguous()


def _g(t: Tensor) -> Tensor | None:
    # An absent gradient comes as an empty tensor and goes to the kernel as a null pointer.
    return None if t.numel() == 0 else t.contiguous()


# The launchers below are the custom ops themselves (torch.library: one opaque op per call for
# torch.compile, whose raw-pointer reads stay inside the op; a fake kernel for its shapes; the
# backward registered as the forward's gradient). Every output is a fresh tensor.


@torch.library.custom_op("evsnn::alif_scan_cuda_fwd", mutates_args=(), device_types="cuda")
def alif_scan_cuda_fwd(
    current: Tensor,
    v0: Tensor,
    bstate0: Tensor,
    s0: Tensor,
    alpha: Tensor,
    rho: Tensor,
    b0: Tensor,
    beta: Tensor,
    weight_hh: Tensor | None,
    bias_hh: Tensor | None,
    needs_grad: bool,
    sg_kind: int,
    sg_params: list[float],
    sg_trunc: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The feed-forward or recurrent forward kernel over ``current [T, B, N]``: ``(spikes, v,
    threshold, v_T, b_T, s_T, b_trace, inputs)``; ``b_trace`` (and, recurrent, ``inputs``: the
    total input current of each step) are residuals for the backward, empty unless ``needs_grad``.
    The surrogate's kernel form (``sg_*``) serves the backward."""
    T, B, N = current.shape
    dev, dtype = current.device, current.dtype
    spikes = torch.empty_like(current)
    v_trace = torch.empty_like(current)
    thr_trace = torch.empty_like(current)
    b_trace = torch.empty_like(current) if needs_grad else None
    v_out, b_out, s_out = (torch.empty_like(v0) for _ in range(3))
    common = (rt.ptr(v0), rt.ptr(bstate0), rt.ptr(s0), rt.ptr(alpha), rt.ptr(rho), rt.ptr(b0), rt.ptr(beta))
    inputs = None
    if weight_hh is None:
        kernel = rt.get_kernel(SOURCE, "alif_ff_forward", dtype=dtype, device=dev, defines=_DEFINES)
        grid = (math.ceil(B * N / FF_THREADS),)
        args = (rt.ptr(current),) + common + (
            rt.ptr(spikes), rt.ptr(v_trace), rt.ptr(b_trace), rt.ptr(thr_trace),
            rt.ptr(v_out), rt.ptr(b_out), rt.ptr(s_out), rt.i32(T), rt.i32(B), rt.i32(N),
        )  # fmt: skip
        rt.launch(kernel, grid, (FF_THREADS,), args, device=dev)
    else:
        wt = packed("alif_transposed", _transposed, (weight_hh,))
        inputs = torch.empty_like(current) if needs_grad else None
        counter = torch.zeros(1, dtype=torch.int32, device=dev)
        kernel = rt.get_kernel(SOURCE, "alif_rec_forward", dtype=dtype, device=dev, defines=_DEFINES)
        grid = (_grid(B * math.ceil(N / REC_THREADS), dev),)
        args = (rt.ptr(current),) + common + (
            rt.ptr(wt), rt.ptr(bias_hh), rt.ptr(spikes), rt.ptr(v_trace), rt.ptr(b_trace), rt.ptr(thr_trace),
            rt.ptr(v_out), rt.ptr(b_out), rt.ptr(s_out), rt.ptr(inputs), rt.ptr(counter),
            rt.i32(T), rt.i32(B), rt.i32(N),
        )  # fmt: skip
        rt.launch_persistent(kernel, grid, (REC_THREADS,), args, device=dev)
    empty = current.new_empty(0)
    return (
        spikes, v_trace, thr_trace, v_out, b_out, s_out,
        empty if b_trace is None else b_trace, empty.clone() if inputs is None else inputs,
    )  # fmt: skip


@alif_scan_cuda_fwd.register_fake
def _(current, v0, bstate0, s0, alpha, rho, b0, beta, weight_hh, bias_hh, needs_grad, sg_kind, sg_params, sg_trunc):
    seqs = [torch.empty_like(current) for _ in range(3)]
    states = [v0.new_empty(v0.shape) for _ in range(3)]
    b_trace = torch.empty_like(current) if needs_grad else current.new_empty(0)
    inputs = torch.empty_like(current) if needs_grad and weight_hh is not None else current.new_empty(0)
    return (*seqs, *states, b_trace, inputs)


@torch.library.custom_op("evsnn::alif_scan_cuda_bwd", mutates_args=(), device_types="cuda")
def alif_scan_cuda_bwd(
    grads: list[Tensor],
    inputs: Tensor,
    spikes: Tensor,
    v_trace: Tensor,
    b_trace: Tensor,
    v0: Tensor,
    bstate0: Tensor,
    s0: Tensor,
    alpha: Tensor,
    rho: Tensor,
    b0: Tensor,
    beta: Tensor,
    weight_hh: Tensor | None,
    sg_kind: int,
    sg_params: list[float],
    sg_trunc: float,
    need_w: bool,
    need_bias: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The backward kernel from the gradients of ``(spikes, v, threshold, v_T, b_T, s_T)`` (empty
    where absent) and the forward's residuals (``inputs``: the input currents, of every step when
    recurrent): ``(∂current, ∂v_0, ∂b_0, ∂s_0, ∂α, ∂ρ, ∂b0, ∂β, ∂W_hh, ∂b_hh)``, the last two
    empty unless asked for."""
    T, B, N = spikes.shape
    dev, dtype = spikes.device, spikes.dtype
    wt = None if weight_hh is None else packed("alif_transposed", _transposed, (weight_hh,))
    w = weight_hh
    g_current = torch.empty_like(spikes)
    g_v0, g_bstate0, g_s0 = (torch.empty_like(v0) for _ in range(3))
    partials = [torch.empty_like(v0) for _ in range(4)]
    grads_in = tuple(_g(g) for g in grads)
    sg_args = (rt.i32(sg_kind),) + tuple(rt.scalar(p, dtype) for p in (*sg_params, sg_trunc))
    head = (rt.ptr(inputs), rt.ptr(spikes), rt.ptr(v_trace), rt.ptr(b_trace), rt.ptr(v0), rt.ptr(bstate0),
            rt.ptr(s0), rt.ptr(alpha), rt.ptr(rho), rt.ptr(b0), rt.ptr(beta))  # fmt: skip
    tail = (rt.ptr(g_current), rt.ptr(g_v0), rt.ptr(g_bstate0), rt.ptr(g_s0)) + tuple(rt.ptr(p) for p in partials)
    if wt is None:
        kernel = rt.get_kernel(SOURCE, "alif_ff_backward", dtype=dtype, device=dev, defines=_DEFINES)
        args = head + tuple(rt.ptr(g) for g in grads_in) + sg_args + tail + (rt.i32(T), rt.i32(B), rt.i32(N))
        rt.launch(kernel, (math.ceil(B * N / FF_THREADS),), (FF_THREADS,), args, device=dev)
    else:
        counter = torch.zeros(1, dtype=torch.int32, device=dev)
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        # W_hh resident in shared memory (alif_rec_backward_smem) wherever its plan fits; else
        # alif_rec_backward reads it from global memory every step.
        plan = smem_plan(B, N, spikes.element_size(), _grid(B * N, dev), _smem_limit(index))
        if plan is not None:
            grid, spb, shared = plan
            kernel = rt.get_kernel(SOURCE, "alif_rec_backward_smem", dtype=dtype, device=dev, defines=_DEFINES)
            args = head + (rt.ptr(w),) + tuple(rt.ptr(g) for g in grads_in) + sg_args + tail + (
                rt.ptr(counter), rt.i32(T), rt.i32(B), rt.i32(N), rt.i32(spb),
            )  # fmt: skip
            rt.launch_persistent(kernel, (grid,), (REC_THREADS,), args, device=dev, shared_mem=shared)
        else:
            kernel = rt.get_kernel(SOURCE, "alif_rec_backward", dtype=dtype, device=dev, defines=_DEFINES)
            args = head + (rt.ptr(wt), rt.ptr(w)) + tuple(rt.ptr(g) for g in grads_in) + sg_args + tail + (
                rt.ptr(counter), rt.i32(T), rt.i32(B), rt.i32(N),
            )  # fmt: skip
            rt.launch_persistent(
                kernel, (_grid(B * math.ceil(N / REC_THREADS), dev),), (REC_THREADS,), args, device=dev
            )
    p_alpha, p_rho, p_b0, p_beta = partials
    empty = spikes.new_empty(0)
    g_w, g_bias = empty, empty.clone()
    if wt is not None and need_w:
        # dW[n, j] = sum_{t, b} dI_t[b, n] s_{t-1}[b, j]: one GEMM over steps 1..T-1, one for s0.
        g_w = g_current[1:].reshape(-1, N).t() @ spikes[:-1].reshape(-1, N) + g_current[0].t() @ s0
    if wt is not None and need_bias:
        g_bias = g_current.sum(dim=(0, 1))
    return (g_current, g_v0, g_bstate0, g_s0, p_alpha.sum(0), p_rho.sum(0), p_b0.sum(0), p_beta.sum(0), g_w, g_bias)


@alif_scan_cuda_bwd.register_fake
def _(grads, inputs, spikes, v_trace, b_trace, v0, bstate0, s0, alpha, rho, b0, beta, weight_hh, sg_kind, sg_params,
      sg_trunc, need_w, need_bias):  # fmt: skip
    recurrent = weight_hh is not None
    per_neuron = [v0.new_empty(v0.shape[1:]) for _ in range(4)]
    g_w = weight_hh.new_empty(weight_hh.shape) if recurrent and need_w else spikes.new_empty(0)
    g_bias = spikes.new_empty(spikes.shape[2]) if recurrent and need_bias else spikes.new_empty(0)
    return (torch.empty_like(spikes), *(v0.new_empty(v0.shape) for _ in range(3)), *per_neuron, g_w, g_bias)


def _setup_alif(ctx, inputs, output) -> None:
    current, v0, bstate0, s0, alpha, rho, b0, beta, weight_hh, bias_hh, _, sg_kind, sg_params, sg_trunc = inputs
    spikes, v_trace, _, _, _, _, b_trace, rec_inputs = output
    # The feed-forward backward reads the input current itself; the recurrent one the total current.
    currents = current if weight_hh is None else rec_inputs
    ctx.save_for_backward(currents, spikes, v_trace, b_trace, v0, bstate0, s0, alpha, rho, b0, beta, weight_hh)
    ctx.surrogate = (sg_kind, sg_params, sg_trunc)
    ctx.mark_non_differentiable(b_trace, rec_inputs)
    ctx.set_materialize_grads(False)  # an absent gradient reaches the kernel as a null pointer


def _backward_alif(ctx, g_spikes, g_vtrace, g_thr, g_vT, g_bT, g_sT, _g_btrace, _g_inputs):
    saved = ctx.saved_tensors
    refuse_double_backward("cupy", "alif", g_spikes, g_vtrace, g_thr, g_vT, g_bT, g_sT, *saved)
    spikes = saved[1]
    empty = spikes.new_empty(0)
    grads = [empty if g is None else g for g in (g_spikes, g_vtrace, g_thr, g_vT, g_bT, g_sT)]
    need = ctx.needs_input_grad
    result = torch.ops.evsnn.alif_scan_cuda_bwd(grads, *saved, *ctx.surrogate, need[8], need[9])
    return (*(g if n else None for g, n in zip(result, need[:10])), None, None, None, None)


alif_scan_cuda_fwd.register_autograd(_backward_alif, setup_context=_setup_alif)


def _check_tensor(name: str, t: Any, shape: tuple[int, ...], like: Tensor) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a tensor of shape {shape}, got {type(t).__name__}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    if t.device != like.device or t.dtype != like.dtype:
        raise ValueError(f"{name} must be a {like.dtype} tensor on {like.device}, got {t.dtype} on {t.device}")
    return t.contiguous()


def alif_scan_cuda(
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
    """[`evsnn.functional.alif_scan`][evsnn.functional.alif_scan] on the GPU (same arguments, same results; SPEC §2).

    ``current`` ``[T, B, N]`` (CUDA, float32/float64); with ``weight_hh`` ``[N, N]`` the layer is
    recurrent: ``I_t = current_t + W_hh s_{t−1} + b_hh``.
    """
    if not isinstance(current, Tensor) or current.dim() != 3:
        got = tuple(current.shape) if isinstance(current, Tensor) else type(current).__name__
        raise ValueError(f"current must be a [T, B, N] tensor, got {got}")
    # Dispatch ran check_cuda when it chose this backend; a direct call is refused only for what
    # its own arguments decide (a missing CuPy or GPU fails at the kernel's compile or launch).
    reason = _argument_reason(current.device, current.dtype, surrogate)
    if reason is not None:
        raise ValueError(f"alif_scan_cuda cannot run: {reason}")
    T, B, N = current.shape
    if T == 0 or B == 0 or N == 0:
        raise ValueError(f"current must have T, B, N >= 1, got shape {tuple(current.shape)}")
    if not isinstance(tau_mem, Tensor) or not isinstance(tau_adapt, Tensor):
        raise TypeError(
            f"tau_mem and tau_adapt must be tensors, got {type(tau_mem).__name__} and {type(tau_adapt).__name__}"
        )
    # α and ρ by torch, exactly as the reference computes them: τ's gradient goes through autograd.
    alpha = _per_neuron("tau_mem", decay(tau_mem), N, current)
    rho = _per_neuron("tau_adapt", decay(tau_adapt), N, current)
    b0_n = _per_neuron("b0", b0, N, current)
    beta_n = _per_neuron("beta", beta, N, current)
    if state is None:
        state = alif_initial_state(current[0], b0)
    if not isinstance(state, tuple) or len(state) != 3:
        raise TypeError(f"state must be an ALIFState(v, b, s) or None, got {type(state).__name__}")
    v0, bstate0, s0 = (_check_tensor(f"state.{k}", x, (B, N), current) for k, x in zip("vbs", state))
    if weight_hh is not None:
        weight_hh = _check_tensor("weight_hh", weight_hh, (N, N), current)
        if bias_hh is not None:
            bias_hh = _check_tensor("bias_hh", bias_hh, (N,), current)
    else:
        bias_hh = None  # the reference uses bias_hh only with weight_hh
    sg = surrogate_kernel_args(surrogate)
    inputs = (current, v0, bstate0, s0, alpha, rho, b0_n, beta_n, weight_hh, bias_hh)
    needs_grad = torch.is_grad_enabled() and any(isinstance(t, Tensor) and t.requires_grad for t in inputs)
    kind, params, trunc = sg
    spikes, v_trace, thr_trace, v_out, b_out, s_out, _, _ = torch.ops.evsnn.alif_scan_cuda_fwd(
        current.contiguous(),
        v0,
        bstate0,
        s0,
        alpha,
        rho,
        b0_n,
        beta_n,
        weight_hh,
        bias_hh,
        needs_grad,
        kind,
        list(params),
        trunc,
    )
    return spikes, ALIFState(v_out, b_out, s_out), ALIFTrace(v_trace, thr_trace)
