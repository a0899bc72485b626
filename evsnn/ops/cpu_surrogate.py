"""The surrogates' pseudo-derivatives ``g(x)`` (SPEC §1, [`evsnn.surrogate`][evsnn.surrogate]) for the fused
numba kernels: one numba home shared by the EGRU and ALIF training kernels (the CUDA kernels
have theirs in ``cuda/common.cuh``).

A surrogate is passed to a kernel as ``(kind, params, gate)`` built by `surrogate_code`
from its ``kernel_spec()``: ``kind`` selects the formula, ``params`` holds its base parameters,
``gate`` is the smallest truncation (``inf`` if none).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

try:  # numba is optional (the ``cpu`` extra); without it the kernels are never compiled
    from numba import njit
except ImportError:  # pragma: no cover

    def njit(*args: Any, **kwargs: Any) -> Any:  # type: ignore[no-redef]
        return lambda fn: fn


__all__ = ["KERNEL_SURROGATES", "pseudo_derivative", "surrogate_args", "surrogate_code"]

# kernel_spec names -> (kind in the kernels, number of base parameters; more are truncations)
KERNEL_SURROGATES = {
    "triangle": (0, 2),
    "multi_gaussian": (1, 4),
    "gaussian": (2, 2),
    "atan": (3, 1),
    "fast_sigmoid": (4, 1),
}
TRIANGLE = KERNEL_SURROGATES["triangle"][0]
_SQRT2PI = math.sqrt(2.0 * math.pi)


def surrogate_args(surrogate: Any) -> tuple[int, list[float], float] | None:
    """``(kind, params, gate)`` of a surrogate whose ``kernel_spec`` the kernels know, else ``None``,
    in plain Python numbers: the form a custom op's schema takes (``int, list[float], float``) and
    that torch.compile traces as constants."""
    spec = surrogate.kernel_spec() if hasattr(surrogate, "kernel_spec") else None
    if spec is None or spec[0] not in KERNEL_SURROGATES or len(spec[1]) < KERNEL_SURROGATES[spec[0]][1]:
        return None
    kind, n_base = KERNEL_SURROGATES[spec[0]]
    params = [float(p) for p in spec[1][:n_base]] + [0.0] * (4 - n_base)
    # Truncations (nested ones too) each let only |x| < ε through: the smallest one decides.
    return kind, params, float(min(spec[1][n_base:], default=math.inf))


def surrogate_code(surrogate: Any) -> tuple[int, np.ndarray, float] | None:
    """`surrogate_args` with ``params`` as the kernels' float64 array."""
    args = surrogate_args(surrogate)
    if args is None:
        return None
    kind, params, gate = args
    return kind, np.asarray(params, dtype=np.float64), gate


@njit(cache=True, nogil=True, inline="always")
def pseudo_derivative(kind, params, gate, x):  # pragma: no cover - numba
    """``g(x)`` as autograd of the reference sees it: a NaN or infinite ``x`` passes nothing
    (``|x| < gate`` is false for them, ``gate = inf`` included), nor an ``x`` outside a truncation."""
    if not abs(x) < gate:
        return 0.0
    if kind == 0:  # triangle(width, peak)
        return params[1] * max(0.0, 1.0 - abs(x) / params[0])
    if kind == 1:  # multi_gaussian(sigma, height, scale, gamma)
        sg, h = params[0], params[1]
        w = params[2] * sg
        return params[3] * (
            (1.0 + h) * math.exp(-0.5 * (x / sg) ** 2) / (sg * _SQRT2PI)
            - h * math.exp(-0.5 * ((x - sg) / w) ** 2) / (w * _SQRT2PI)
            - h * math.exp(-0.5 * ((x + sg) / w) ** 2) / (w * _SQRT2PI)
        )
    if kind == 2:  # gaussian(sigma, scale)
        return params[1] * math.exp(-0.5 * (x / params[0]) ** 2) / (params[0] * _SQRT2PI)
    if kind == 3:  # atan(alpha)
        u = math.pi * params[0] * x / 2.0
        return (params[0] / 2.0) / (1.0 + u * u)
    d = params[0] * abs(x) + 1.0  # fast_sigmoid(slope)
    return 1.0 / (d * d)
