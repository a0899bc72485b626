"""DeltaGRU's and DeltaLSTM's accelerated scans as ``torch.library`` custom ops (SPEC §4), so that
``torch.compile`` sees one opaque op per call (no graph break) and can trace shapes through its
fake kernel.

``evsnn::delta_gru_scan_cpu`` / ``evsnn::delta_lstm_scan_cpu``: the ``"cpu_event"`` inference scans
(:class:`~evsnn.ops.delta.cpu.DeltaGRURunner`, :class:`~evsnn.ops.delta.cpu.DeltaLSTMRunner`), called
by :mod:`evsnn.ops.delta.cpu`'s scans when no gradient is recorded. The state is flattened to
tensors (custom ops take no NamedTuples), the thresholds come as tensors, and every output is a
fresh tensor (no output aliases an input). Not differentiable: a call that records gradients runs
the training path instead.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...functional.delta import DeltaGRUState, DeltaLSTMState
from ...functional.precision import state_dtype
from .cpu import DeltaGRURunner, DeltaLSTMRunner

__all__ = ["delta_gru_scan_cpu_op", "delta_lstm_scan_cpu_op"]


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
