"""ALIF's accelerated scans as ``torch.library`` custom ops (SPEC §2), so that ``torch.compile`` sees
one opaque op per call (no graph break) and can trace shapes through its fake kernel.

``evsnn::alif_scan_cpu``: the ``"cpu_event"`` inference scan (:class:`~evsnn.ops.alif.cpu.ALIFRunner`);
:func:`~evsnn.ops.alif.cpu.alif_scan_cpu` calls it when no gradient is recorded (``b0``/``beta``
come as tensors). Not differentiable: a call that records gradients runs the training path instead.

``evsnn::alif_scan_cuda_fwd`` / ``evsnn::alif_scan_cuda_bwd``: the CuPy forward and backward kernels
(:func:`~evsnn.ops.alif.cuda.alif_forward_launch`, :func:`~evsnn.ops.alif.cuda.alif_backward_launch`),
the backward registered as the forward's gradient; :func:`~evsnn.ops.alif.cuda.alif_scan_cuda` calls
the forward. The surrogate travels as its kernel form; absent tensors are empty ones.

States are flattened to tensors (custom ops take no NamedTuples) and every output is a fresh tensor
(no output aliases an input or another output).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...functional.alif import ALIFState
from ...functional.precision import state_dtype
from .cpu import ALIFRunner
from .cuda import alif_backward_launch, alif_forward_launch

__all__ = ["alif_scan_cpu_op", "alif_scan_cuda_fwd", "alif_scan_cuda_bwd"]


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
    spikes = saved[1]
    empty = spikes.new_empty(0)
    grads = [empty if g is None else g for g in (g_spikes, g_vtrace, g_thr, g_vT, g_bT, g_sT)]
    need = ctx.needs_input_grad
    result = torch.ops.evsnn.alif_scan_cuda_bwd(grads, *saved, *ctx.surrogate, need[8], need[9])
    return (*(g if n else None for g, n in zip(result, need[:10])), None, None, None, None)


alif_scan_cuda_fwd.register_autograd(_backward_alif, setup_context=_setup_alif)
