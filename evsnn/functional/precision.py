"""Which dtype each quantity has (SPEC.md §6): the one home of the precision rule.

Low precision (``torch.autocast`` in bfloat16/float16, or a bfloat16/float16 module):

- matrix products take their operands in the low dtype (``Precision.matmul``); the layers'
  outputs (spikes, EGRU events, the delta cells' ``h`` sequence) are stored in it too;
- membranes, adaptation traces, thresholds, delta memories, accumulators, every threshold
  comparison and the returned state are float32 (``Precision.compute``).

A float64 layer is float64 throughout (autocast leaves float64 alone, as it does in torch).
Without autocast a float32 layer is float32 throughout: every cast here is then skipped.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["LOW_PRECISION", "Precision", "autocast_enabled", "precision_of", "state_dtype", "project"]

LOW_PRECISION = (torch.bfloat16, torch.float16)


class Precision(NamedTuple):
    """``matmul``: dtype of the products' operands and of the stored events/outputs;
    ``compute``: dtype of everything elementwise and of the state."""

    matmul: torch.dtype
    compute: torch.dtype


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a state kept next to tensors of ``dtype`` has: float32 for bfloat16/float16,
    otherwise ``dtype`` itself."""
    return torch.float32 if dtype in LOW_PRECISION else dtype


def autocast_enabled(device_type: str) -> bool:
    """``torch.is_autocast_enabled(device_type)``, ``False`` on the meta device: autocast has no
    meta form (it raises for the device type), and a meta tensor has no values to round."""
    return device_type != "meta" and torch.is_autocast_enabled(device_type)


def precision_of(dtype: torch.dtype, device_type: str) -> Precision:
    """The precision of a layer whose parameters have ``dtype``, on ``device_type``.

    Under ``torch.autocast`` for that device the products run in the autocast dtype (as torch
    autocasts ``matmul``); float64 and non-floating dtypes are left alone, as autocast does.
    """
    matmul = dtype
    if dtype.is_floating_point and dtype != torch.float64 and autocast_enabled(device_type):
        matmul = torch.get_autocast_dtype(device_type)
    return Precision(matmul, state_dtype(matmul))


def project(a: Tensor, weight: Tensor, bias: Tensor | None, p: Precision) -> Tensor:
    """``a @ weightᵀ (+ bias)``: operands cast to ``p.matmul``, the product returned in
    ``p.compute`` and the bias added there (the accumulation side of SPEC §6)."""
    if a.dtype != p.matmul:
        a = a.to(p.matmul)
    if weight.dtype != p.matmul:
        weight = weight.to(p.matmul)
    out = a @ weight.t()
    if out.dtype != p.compute:
        out = out.to(p.compute)
    if bias is not None:
        out = out + (bias if bias.dtype == p.compute else bias.to(p.compute))
    return out
