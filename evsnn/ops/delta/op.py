"""DeltaGRU's and DeltaLSTM's accelerated scans as ``torch.library`` custom ops (SPEC §4), so that
``torch.compile`` sees one opaque op per call (no graph break) and can trace shapes through its
fake kernel.

``evsnn::delta_gru_scan_cpu`` / ``evsnn::delta_lstm_scan_cpu``: the ``"cpu_event"`` inference scans
([`DeltaGRURunner`][evsnn.ops.delta.cpu.DeltaGRURunner], [`DeltaLSTMRunner`][evsnn.ops.delta.cpu.DeltaLSTMRunner]), called
by [`evsnn.ops.delta.cpu`][evsnn.ops.delta.cpu]'s scans when no gradient is recorded (the thresholds come as tensors).
Not differentiable: a call that records gradients runs the training path instead.

``evsnn::delta_train_cpu_fwd`` / ``evsnn::delta_train_cpu_bwd``: the fused numba training kernels of
[`evsnn.ops.delta.cpu_train`][evsnn.ops.delta.cpu_train] (GRU or LSTM by a flag; ``"cpu_event"`` runs them in training for
both cells), the backward registered as the forward's gradient. The active columns travel in
fixed-capacity buffers (indices, deltas, offsets), so every shape follows from the sizes.

``evsnn::delta_scan_bptt_fwd`` / ``evsnn::delta_scan_bptt_bwd``: the forward and the symmetric sparse
backward of [`evsnn.ops.delta.cuda`][evsnn.ops.delta.cuda] (``engine="cupy"``: the CUDA kernels; ``"torch"``: their
twin in torch ops, on any device), the backward registered as the forward's gradient. Optional
tensors (the GRU's ``c``, the accumulators kept for a backward) are empty tensors when absent.

States are flattened to tensors (custom ops take no NamedTuples) and every output is a fresh tensor
(no output aliases an input or another output).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...functional.delta import DeltaGRUState, DeltaLSTMState
from ...functional.precision import state_dtype
from ..transforms import refuse_double_backward
from .cpu import DeltaGRURunner, DeltaLSTMRunner
from .cuda import delta_backward_impl, delta_forward_impl

__all__ = [
    "delta_gru_scan_cpu_op",
    "delta_lstm_scan_cpu_op",
    "delta_train_cpu_fwd",
    "delta_train_cpu_bwd",
    "delta_scan_bptt_fwd",
    "delta_scan_bptt_bwd",
]


def _trace(deltas: Tensor, n_in: int) -> tuple[Tensor, Tensor]:
    return deltas[..., :n_in].contiguous(), deltas[..., n_in:].contiguous()


@torch.library.custom_op("evsnn::delta_gru_scan_cpu", mutates_args=(), device_types="cpu")
def delta_gru_scan_cpu_op(
    x: Tensor,
    h: Tensor,
    x_hat: Tensor,
    h_hat: Tensor,
    m: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None,
    bias_hh: Tensor | None,
    theta_x: Tensor,
    theta_h: Tensor,
    delta_rule: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """DeltaGRU inference over ``x [T, B, I]`` from ``(h, x̂, ĥ, M)``; returns
    ``(h_seq [T, B, H], h_T, x̂_T, ĥ_T, M_T, Δx [T, B, I], Δh [T, B, H])``."""
    runner = DeltaGRURunner(
        weight_ih, weight_hh, bias_ih, bias_hh, theta_x=theta_x, theta_h=theta_h, delta_rule=delta_rule
    )
    runner.load(DeltaGRUState(h, x_hat, h_hat, m))
    out, deltas = runner.run(x)
    return (out, *runner.state(), *_trace(deltas, weight_ih.shape[1]))


@torch.library.custom_op("evsnn::delta_lstm_scan_cpu", mutates_args=(), device_types="cpu")
def delta_lstm_scan_cpu_op(
    x: Tensor,
    h: Tensor,
    c: Tensor,
    x_hat: Tensor,
    h_hat: Tensor,
    m: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None,
    bias_hh: Tensor | None,
    theta_x: Tensor,
    theta_h: Tensor,
    delta_rule: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """DeltaLSTM inference over ``x [T, B, I]`` from ``(h, c, x̂, ĥ, M)``; returns
    ``(h_seq [T, B, H], h_T, c_T, x̂_T, ĥ_T, M_T, Δx [T, B, I], Δh [T, B, H])``."""
    runner = DeltaLSTMRunner(
        weight_ih, weight_hh, bias_ih, bias_hh, theta_x=theta_x, theta_h=theta_h, delta_rule=delta_rule
    )
    runner.load(DeltaLSTMState(h, c, x_hat, h_hat, m))
    out, deltas = runner.run(x)
    return (out, *runner.state(), *_trace(deltas, weight_ih.shape[1]))


def _fake(x: Tensor, state: tuple[Tensor, ...], weight_ih: Tensor, weight_hh: Tensor) -> tuple[Tensor, ...]:
    # The runners compute in the weights' dtype (float32 for a bfloat16/float16 layer, SPEC §6);
    # the final state has the shapes of the initial one.
    steps, batch, n_in = x.shape
    dtype = state_dtype(weight_ih.dtype)
    out = x.new_empty(steps, batch, weight_hh.shape[1], dtype=dtype)
    final = [t.new_empty(t.shape, dtype=dtype) for t in state]
    return out, *final, x.new_empty(steps, batch, n_in, dtype=dtype), torch.empty_like(out)


@delta_gru_scan_cpu_op.register_fake
def _(x, h, x_hat, h_hat, m, weight_ih, weight_hh, bias_ih, bias_hh, theta_x, theta_h, delta_rule):
    return _fake(x, (h, x_hat, h_hat, m), weight_ih, weight_hh)


@delta_lstm_scan_cpu_op.register_fake
def _(x, h, c, x_hat, h_hat, m, weight_ih, weight_hh, bias_ih, bias_hh, theta_x, theta_h, delta_rule):
    return _fake(x, (h, c, x_hat, h_hat, m), weight_ih, weight_hh)


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
    """Fused delta-cell training forward over ``x [T, B, I]`` (``c0`` ``None`` for the GRU):
    ``(h_seq, h_T, c_T, x̂_T, ĥ_T, M_T, Δx, Δh)`` then the backward's residuals ``(c_seq, gates,
    idx_x, val_x, off_x, idx_h, val_h, off_h)``; the GRU's ``c_T``/``c_seq`` are empty."""
    from .cpu_train import train_forward

    return train_forward(x, h0, c0, x_hat0, h_hat0, m0, weight_ih, weight_hh, theta_x, theta_h, inclusive, gru)


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
    grad_out: Tensor | None,
    grad_h: Tensor | None,
    grad_c: Tensor | None,
    grad_x_hat: Tensor | None,
    grad_h_hat: Tensor | None,
    grad_m: Tensor | None,
    grad_dx: Tensor | None,
    grad_dh: Tensor | None,
    h0: Tensor,
    c0: Tensor | None,
    out: Tensor,
    c_seq: Tensor,
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
    """Fused delta-cell training backward (Chen et al.'s symmetric sparse BPTT): ``(∂x, ∂h_0, ∂c_0,
    ∂x̂_0, ∂ĥ_0, ∂M_0, ∂W_ih, ∂W_hh)`` from the outputs' gradients (``None``: zero) and the
    forward's residuals; ``∂c_0`` is empty for the GRU."""
    from .cpu_train import train_backward

    return train_backward(
        grad_out, grad_h, grad_c, grad_x_hat, grad_h_hat, grad_m, grad_dx, grad_dh, h0, c0, out, c_seq, weight_ih,
        weight_hh, gates, idx_x, val_x, off_x, idx_h, val_h, off_h, gru,
    )  # fmt: skip


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
    """Delta cell forward over ``x [T, B, I]`` from ``(x̂, h, ĥ, M [B, H, 4], c)``: ``(h_seq, x̂_T,
    ĥ_T, M_T, c_T, Δx, Δh, M_all, c_all)`` ([`evsnn.ops.delta.cuda.delta_forward_impl`][evsnn.ops.delta.cuda.delta_forward_impl])."""
    return delta_forward_impl(x, xhat0, h0, hhat0, m0u, c0, w_ih, w_hh, theta_x, theta_h, inclusive, lstm, engine, keep)


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
    """Delta cell backward: ``(∂x, ∂x̂_0, ∂h_0, ∂ĥ_0, ∂M_0, ∂c_0, ∂W_ih, ∂W_hh)``
    ([`evsnn.ops.delta.cuda.delta_backward_impl`][evsnn.ops.delta.cuda.delta_backward_impl])."""
    return delta_backward_impl(
        g_out, g_xhat_t, g_hhat_t, g_m_t, g_c_t, g_dx, g_dh, out, dx, dh, m_all, c_all, h0, c0, w_ih, w_hh,
        lstm, engine, need_w_ih, need_w_hh,
    )  # fmt: skip


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
