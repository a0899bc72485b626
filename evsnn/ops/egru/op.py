"""EGRU's accelerated scans as ``torch.library`` custom ops (SPEC §3), so that ``torch.compile`` sees
one opaque op per call (no graph break) and can trace shapes through its fake kernel.

``evsnn::egru_scan_cpu``: the ``"cpu_event"`` inference scan (numba loop or torch-op runner of
[`EGRURunner`][evsnn.ops.egru.cpu.EGRURunner]); [`egru_scan_cpu`][evsnn.ops.egru.cpu.egru_scan_cpu] calls it when no
gradient is recorded. Not differentiable: a call that records gradients runs the training path.

``evsnn::egru_train_cpu_fwd`` / ``evsnn::egru_train_cpu_bwd``: the fused numba training kernels of
[`evsnn.ops.egru.cpu_train`][evsnn.ops.egru.cpu_train] (``"cpu_event"`` in training), the backward registered as the
forward's gradient; [`egru_train_scan`][evsnn.ops.egru.cpu_train.egru_train_scan] calls the forward. The
backward finds the events again in the saved ``y``, so every saved tensor has a static shape.

``evsnn::egru_scan_cuda_fwd`` / ``evsnn::egru_scan_cuda_bwd``: the CuPy forward and backward kernels
([`egru_forward_launch`][evsnn.ops.egru.cuda.egru_forward_launch], [`egru_backward_launch`][evsnn.ops.egru.cuda.egru_backward_launch]),
the backward registered as the forward's gradient; [`egru_scan_cuda`][evsnn.ops.egru.cuda.egru_scan_cuda] calls
the forward. The surrogate travels as its kernel form (kind, parameters, truncation, support).

States are flattened to tensors (custom ops take no NamedTuples) and every output is a fresh tensor
(no output aliases an input or another output).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...functional.egru import EGRUState
from ...functional.precision import state_dtype
from ..transforms import refuse_double_backward
from .cpu import EGRURunner
from .cuda import egru_backward_launch, egru_forward_launch

__all__ = ["egru_scan_cpu_op", "egru_train_cpu_fwd", "egru_train_cpu_bwd", "egru_scan_cuda_fwd", "egru_scan_cuda_bwd"]


@torch.library.custom_op("evsnn::egru_scan_cpu", mutates_args=(), device_types="cpu")
def egru_scan_cpu_op(
    x: Tensor,
    c: Tensor,
    y: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None,
    bias_hh: Tensor | None,
    threshold: Tensor,
    reset: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """EGRU inference over ``x [T, B, I]`` from the state ``(c, y)``; returns
    ``(y_seq [T, B, H], c_T [B, H], y_T [B, H], c_pre [T, B, H])``."""
    runner = EGRURunner(weight_ih, weight_hh, bias_ih, bias_hh, threshold, reset=reset)
    runner.load(EGRUState(c, y))
    y_seq, c_pre = runner.run(x)
    c_final, y_final = runner.state()
    return y_seq, c_final, y_final, c_pre


@egru_scan_cpu_op.register_fake
def _(x, c, y, weight_ih, weight_hh, bias_ih, bias_hh, threshold, reset):
    # The runner computes in the weights' dtype (float32 for a bfloat16/float16 layer, SPEC §6).
    steps, batch = x.shape[:2]
    hidden = weight_hh.shape[1]
    dtype = state_dtype(weight_ih.dtype)
    seq = x.new_empty(steps, batch, hidden, dtype=dtype)
    return seq, c.new_empty(batch, hidden, dtype=dtype), y.new_empty(batch, hidden, dtype=dtype), torch.empty_like(seq)


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
    """Fused EGRU training forward over ``gi = W_ih x + b_ih [T, B, 3H]``: ``(y [T, B, H], c_T
    [B, H], y_T [B, H], c_pre [T, B, H], gates [4, T, B, H])``. ``zo_mask``: bool zoneout masks
    ``[T, B, H]`` (training) or empty; the surrogate's kernel form serves the backward."""
    from .cpu_train import train_forward  # numba loads on the training path only

    return train_forward(gi, c0, y0, weight_hh, bias_hh, theta, reset_output, zo_p, zo_mask)


@egru_train_cpu_fwd.register_fake
def _(gi, c0, y0, weight_hh, bias_hh, theta, reset_output, zo_p, zo_mask, sg_kind, sg_params, sg_gate):
    steps, batch, h3 = gi.shape
    hidden = h3 // 3
    seq = gi.new_empty(steps, batch, hidden)
    state = gi.new_empty(batch, hidden)
    return seq, state, torch.empty_like(state), torch.empty_like(seq), gi.new_empty(4, steps, batch, hidden)


@torch.library.custom_op("evsnn::egru_train_cpu_bwd", mutates_args=(), device_types="cpu")
def egru_train_cpu_bwd(
    grad_out: Tensor,
    grad_c: Tensor,
    grad_y: Tensor,
    grad_c_pre: Tensor,
    c0: Tensor,
    y0: Tensor,
    weight_hh: Tensor,
    theta: Tensor,
    out: Tensor,
    c_pre: Tensor,
    gates: Tensor,
    zo_mask: Tensor,
    reset_output: bool,
    zo_p: float,
    need_y0: bool,
    sg_kind: int,
    sg_params: list[float],
    sg_gate: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Fused EGRU training backward: ``(∂gi, ∂c_0, ∂y_0, ∂W_hh, ∂b_hh, ∂θ)`` from the gradients of
    ``y``, ``c_T``, ``y_T`` and ``c_pre`` and the forward's outputs. ``need_y0``: form ``∂L/∂y_0``
    for every unit (else only what reaches the parameters)."""
    from .cpu_train import train_backward

    return train_backward(
        grad_out, grad_c, grad_y, grad_c_pre, c0, y0, weight_hh, theta, out, c_pre, gates, zo_mask,
        reset_output, zo_p, need_y0, sg_kind, sg_params, sg_gate,
    )  # fmt: skip


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
    ctx.mark_non_differentiable(gates)


def _backward_train(ctx, grad_out, grad_c, grad_y, grad_c_pre, _grad_gates):
    c0, y0, weight_hh, theta, out, c_pre, gates, zo_mask = ctx.saved_tensors
    grads = (grad_out, grad_c, grad_y, grad_c_pre)
    refuse_double_backward("cpu_event", "egru", *grads, c0, y0, weight_hh, theta, out, c_pre)
    grad_out, grad_c_pre = (torch.zeros_like(out) if g is None else g for g in (grad_out, grad_c_pre))
    grad_c, grad_y = (torch.zeros_like(c0) if g is None else g for g in (grad_c, grad_y))
    g_gi, g_c0, g_y0, g_w, g_bias, g_theta = torch.ops.evsnn.egru_train_cpu_bwd(
        grad_out, grad_c, grad_y, grad_c_pre, c0, y0, weight_hh, theta, out, c_pre, gates, zo_mask,
        *ctx.flags, bool(ctx.needs_input_grad[2]), *ctx.surrogate,
    )  # fmt: skip
    return g_gi, g_c0, g_y0, g_w, g_bias if ctx.has_bias else None, g_theta, None, None, None, None, None, None


egru_train_cpu_fwd.register_autograd(_backward_train, setup_context=_setup_train)


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
    """EGRU forward kernel over ``gi = W_ih x + b_ih [T, B, 3H]``: ``(y [T, B, H], c_T [B, H],
    save [5, T, B, H])`` with ``save[4] = c_pre``. The surrogate arguments serve the backward."""
    return egru_forward_launch(gi, c0, y0, weight_hh, bias_hh, theta, reset_threshold)


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
    """EGRU backward kernel: ``(∂gi, ∂c_0, ∂y_0, ∂W_hh, ∂b_hh, ∂θ)`` from the output and final-state
    gradients and the forward's ``save``."""
    return egru_backward_launch(
        grad_out, grad_c, save, c0, y0, out, weight_hh, theta, reset_threshold, sg_kind, sg_params, sg_trunc, support
    )


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
