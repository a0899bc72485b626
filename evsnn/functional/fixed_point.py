"""Fixed-point (Qm.n) rounding with a straight-through gradient, SPEC §4 "training extras".

As the official DeltaRNN code (``quantize_tensor`` of gaochangw/DeltaRNN): ``m`` integer bits
including the sign and ``n`` fraction bits, so the grid is ``k / 2^n`` for the integers
``−2^(m+n−1) ≤ k ≤ 2^(m+n−1) − 1``; values round to the nearest grid point (ties to even, as
``torch.round``) and saturate at the ends. The gradient is the identity inside the range and
zero where the value saturated (the rounding passes the gradient straight through, the
saturation is a clamp).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["quantize_fixed_point", "check_fixed_point"]


class _FixedPointStraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, scale: float, top: float) -> Tensor:  # noqa: D102
        k = torch.round(x * scale)
        inside = (k >= -top) & (k <= top - 1.0)
        ctx.save_for_backward(inside)
        return torch.clamp(k, -top, top - 1.0) / scale

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # noqa: D102
        (inside,) = ctx.saved_tensors
        return grad * inside.to(grad.dtype), None, None


def check_fixed_point(name: str, value: Any) -> tuple[int, int] | None:
    """Validate a Qm.n format ``(int_bits, frac_bits)`` (or ``None``); returns it as ints."""
    if value is None:
        return None
    ok = isinstance(value, (tuple, list)) and len(value) == 2
    ok = ok and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    if not ok or value[0] < 1 or value[1] < 0 or value[0] + value[1] > 53:
        raise ValueError(
            f"{name} must be None or (int_bits, frac_bits) with int_bits >= 1 (sign included), "
            f"frac_bits >= 0 and int_bits + frac_bits <= 53, got {value!r}"
        )
    return int(value[0]), int(value[1])


def quantize_fixed_point(x: Tensor, int_bits: int, frac_bits: int) -> Tensor:
    """Round ``x`` to the signed fixed-point format Q``int_bits``.``frac_bits`` with saturation.

    Args:
        x: any floating tensor.
        int_bits: integer bits, sign included (``≥ 1``): the range is ``[−2^(m−1), 2^(m−1) − 2^−n]``.
        frac_bits: fraction bits (``≥ 0``): the step is ``2^−n``.

    Returns ``round(x·2^n).clamp(−2^(m+n−1), 2^(m+n−1) − 1) / 2^n`` in ``x``'s dtype; the
    gradient passes straight through the rounding (identity) and is zero where ``x`` saturated
    (``round(x·2^n)`` outside the integer range) and where ``x`` is NaN. NaN stays NaN.
    """
    check_fixed_point("fixed_point", (int_bits, frac_bits))
    if not x.is_floating_point():
        raise TypeError(f"quantize_fixed_point expects a floating tensor, got {x.dtype}")
    scale = float(2.0**frac_bits)
    top = float(2.0 ** (int_bits + frac_bits - 1))
    return _FixedPointStraightThrough.apply(x, scale, top)
