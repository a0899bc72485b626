"""ALIF's accelerated scans as ``torch.library`` custom ops (SPEC §2), so that ``torch.compile`` sees
one opaque op per call (no graph break) and can trace shapes through its fake kernel.

``evsnn::alif_scan_cpu``: the ``"cpu_event"`` inference scan ([`ALIFRunner`][evsnn.ops.alif.cpu.ALIFRunner]);
[`alif_scan_cpu`][evsnn.ops.alif.cpu.alif_scan_cpu] calls it when no gradient is recorded (``b0``/``beta``
come as tensors). Not differentiable: a call that records gradients runs the training path instead.

``evsnn::alif_train_cpu_fwd`` / ``evsnn::alif_train_cpu_bwd``: the fused numba training kernels of
[`evsnn.ops.alif.cpu_kernels`][evsnn.ops.alif.cpu_kernels] (``"cpu_event"`` in training), the backward registered as the
forward's gradient; [`alif_train_scan`][evsnn.ops.alif.cpu_kernels.alif_train_scan] calls the forward. The spike
lists travel as a fixed-capacity index buffer and offsets, so every shape follows from the sizes.

``evsnn::alif_scan_cuda_fwd`` / ``evsnn::alif_scan_cuda_bwd``: the CuPy forward and backward kernels
([`alif_forward_launch`][evsnn.ops.alif.cuda.alif_forward_launch], [`alif_backward_launch`][evsnn.ops.alif.cuda.alif_backward_launch]),
the backward registered as the forward's gradient; [`alif_scan_cuda`][evsnn.ops.alif.cuda.alif_scan_cuda] calls
the forward. The surrogate travels as its kernel form; absent tensors are empty ones.

States are flattened to tensors (custom ops take no NamedTuples) and every output is a fresh tensor
(no output aliases an input or another output).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...functional.alif import ALIFState
from ...functional.precision import state_dtype
from ..transforms import refuse_double_backward
from .cpu import ALIFRunner
from .cuda import alif_backward_launch, alif_forward_launch

__all__ = ["alif_scan_cpu_op", "alif_train_cpu_fwd", "alif_train_cpu_bwd", "alif_scan_cuda_fwd", "alif_scan_cuda_bwd"]


@torch.library.custom_op("evsnn::alif_scan_cpu", mutates_args=(), device_types="cpu")
def alif_scan_cpu_op(
    current: Tensor,
    v: Tensor,
    b: Tensor,
    s: Tensor,
    tau_mem: Tensor,
    tau_adapt: Tensor,
    b0: Tensor,
    beta: Tensor,
    weight_hh: Tensor | None,
    bias_hh: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """ALIF inference over ``current [T, B, N]`` from the state ``(v, b, s)``; returns
    ``(spikes, v_T, b_T, s_T, v_seq, threshold_seq)`` (sequences ``[T, B, N]``, state ``[B, N]``)."""
    runner = ALIFRunner(tau_mem=tau_mem, tau_adapt=tau_adapt, b0=b0, beta=beta, weight_hh=weight_hh, bias_hh=bias_hh)
    runner.load(ALIFState(v, b, s))
    spikes, vs, thresholds = runner.run(current)
    v_final, b_final, s_final = runner.state()
    return spikes, v_final, b_final, s_final, vs, thresholds


@alif_scan_cpu_op.register_fake
def _(current, v, b, s, tau_mem, tau_adapt, b0, beta, weight_hh, bias_hh):
    # The runner computes in float32 for a bfloat16/float16 current (SPEC §6), else in its dtype.
    dtype = state_dtype(current.dtype)
    seq = current.new_empty(current.shape, dtype=dtype)
    state = [t.new_empty(current.shape[1:], dtype=dtype) for t in (v, b, s)]
    return seq, *state, torch.empty_like(seq), torch.empty_like(seq)


@torch.library.custom_op("evsnn::alif_train_cpu_fwd", mutates_args=(), device_types="cpu")
def alif_train_cpu_fwd(
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
    detach_reset: bool,
    sg_kind: int,
    sg_params: list[float],
    sg_gate: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Fused ALIF training forward over ``current [T, B, N]`` (``alpha, rho, b0, beta [N]``):
    ``(spikes, v_T, b_T, s_T, v_seq, threshold_seq, b_seq, I_seq, idx [B·T·N] int32, off [B·T, 2]
    int64)``, the last four residuals for the backward. The surrogate's kernel form serves the backward."""
    from .cpu_kernels import train_forward

    return train_forward(current, v0, bstate0, s0, alpha, rho, b0, beta, weight_hh, bias_hh)


@alif_train_cpu_fwd.register_fake
def _(current, v0, bstate0, s0, alpha, rho, b0, beta, weight_hh, bias_hh, detach_reset, sg_kind, sg_params, sg_gate):
    steps, batch, n = current.shape
    seqs = [current.new_empty(steps, batch, n) for _ in range(5)]
    state = [current.new_empty(batch, n) for _ in range(3)]
    idx = current.new_empty(batch * steps * n if weight_hh is not None else 0, dtype=torch.int32)
    off = current.new_empty(batch * steps, 2, dtype=torch.int64)
    return seqs[0], *state, *seqs[1:], idx, off


@torch.library.custom_op("evsnn::alif_train_cpu_bwd", mutates_args=(), device_types="cpu")
def alif_train_cpu_bwd(
    grad_spikes: Tensor | None,
    grad_v: Tensor | None,
    grad_b: Tensor | None,
    grad_s: Tensor | None,
    grad_v_seq: Tensor | None,
    grad_threshold_seq: Tensor | None,
    v0: Tensor,
    bstate0: Tensor,
    s0: Tensor,
    alpha: Tensor,
    rho: Tensor,
    beta: Tensor,
    weight_hh: Tensor | None,
    spikes: Tensor,
    v_seq: Tensor,
    threshold_seq: Tensor,
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
    """Fused ALIF training backward: ``(∂current, ∂v_0, ∂b_0, ∂s_0, ∂α, ∂ρ, ∂b0, ∂β, ∂W_hh, ∂b_hh)``
    from the outputs' gradients (``None``: zero) and the forward's results (``∂W_hh`` is ``[0, 0]``
    without ``weight_hh``). ``need_s0``: form ``∂L/∂s_0`` for every unit."""
    from .cpu_kernels import train_backward

    return train_backward(
        grad_spikes, grad_v, grad_b, grad_s, grad_v_seq, grad_threshold_seq, v0, bstate0, s0, alpha, rho, beta,
        weight_hh, spikes, v_seq, threshold_seq, b_seq, i_seq, idx, off, detach_reset, need_s0, sg_kind, sg_params,
        sg_gate,
    )  # fmt: skip


@alif_train_cpu_bwd.register_fake
def _(g_s, g_v, g_b, g_sT, g_vs, g_thr, v0, bstate0, s0, alpha, rho, beta, weight_hh, spikes, *rest):
    steps, batch, n = spikes.shape
    w = (n, n) if weight_hh is not None else (0, 0)
    return (
        spikes.new_empty(steps, batch, n), *(spikes.new_empty(batch, n) for _ in range(3)),
        *(spikes.new_empty(n) for _ in range(4)), spikes.new_empty(w), spikes.new_empty(n),
    )  # fmt: skip


def _setup_train(ctx, inputs, output) -> None:
    current, v0, bstate0, s0, alpha, rho, b0, beta, weight_hh, bias_hh, detach_reset, *surrogate = inputs
    spikes, _, _, _, v_seq, thr_seq, b_seq, i_seq, idx, off = output
    ctx.save_for_backward(v0, bstate0, s0, alpha, rho, beta, weight_hh, spikes, v_seq, thr_seq, b_seq, i_seq, idx, off)
    ctx.detach_reset = detach_reset
    ctx.surrogate = surrogate
    ctx.has_bias = bias_hh is not None
    ctx.mark_non_differentiable(b_seq, i_seq, idx, off)


def _backward_train(ctx, g_s, g_vT, g_bT, g_sT, g_v, g_thr, *_residuals):
    v0, bstate0, s0, alpha, rho, beta, weight_hh, *saved = ctx.saved_tensors
    refuse_double_backward("cpu_event", "alif", g_s, g_vT, g_bT, g_sT, g_v, g_thr, alpha, rho, beta, weight_hh, *saved)
    grads = torch.ops.evsnn.alif_train_cpu_bwd(
        g_s, g_vT, g_bT, g_sT, g_v, g_thr, v0, bstate0, s0, alpha, rho, beta, weight_hh, *saved,
        ctx.detach_reset, bool(ctx.needs_input_grad[3]), *ctx.surrogate,
    )  # fmt: skip
    *state_grads, g_w, g_bias = grads
    return (*state_grads, g_w if weight_hh is not None else None, g_bias if ctx.has_bias else None,
            None, None, None, None)  # fmt: skip


alif_train_cpu_fwd.register_autograd(_backward_train, setup_context=_setup_train)


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
    """ALIF forward kernel over ``current [T, B, N]``: ``(spikes, v, threshold, v_T, b_T, s_T,
    b_trace, inputs)``, the last two residuals for the backward (empty unless ``needs_grad``)."""
    return alif_forward_launch(current, v0, bstate0, s0, alpha, rho, b0, beta, weight_hh, bias_hh, needs_grad)


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
    """ALIF backward kernel: ``(∂current, ∂v_0, ∂b_0, ∂s_0, ∂α, ∂ρ, ∂b0, ∂β, ∂W_hh, ∂b_hh)`` from
    the gradients of the forward's six results (empty where absent)."""
    return alif_backward_launch(
        grads, inputs, spikes, v_trace, b_trace, v0, bstate0, s0, alpha, rho, b0, beta, weight_hh,
        sg_kind, sg_params, sg_trunc, need_w, need_bias,
    )  # fmt: skip


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
