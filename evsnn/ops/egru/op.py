"""EGRU's accelerated scans as ``torch.library`` custom ops (SPEC §3), so that ``torch.compile`` sees
one opaque op per call (no graph break) and can trace shapes through its fake kernel.

``evsnn::egru_scan_cpu``: the ``"cpu_event"`` inference scan (numba loop or torch-op runner of
:class:`~evsnn.ops.egru.cpu.EGRURunner`); :func:`~evsnn.ops.egru.cpu.egru_scan_cpu` calls it when no
gradient is recorded. The state is flattened to tensors (custom ops take no NamedTuples) and every
output is a fresh tensor (no output aliases an input). Not differentiable: a call that records
gradients runs the training path instead.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...functional.egru import EGRUState
from ...functional.precision import state_dtype
from .cpu import EGRURunner

__all__ = ["egru_scan_cpu_op"]


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
