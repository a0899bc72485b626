"""Input and state validation shared by the layers: clear errors naming what was expected."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..functional.precision import LOW_PRECISION, autocast_enabled, state_dtype

_REAL_DTYPES = "float32, float64, bfloat16 or float16"


def check_size(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return value


def check_positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_nonnegative(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def check_probability(name: str, value: float) -> float:
    value = check_nonnegative(name, value)
    if value >= 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return value


def check_dtypes(layer: str, x: Tensor, weight: Tensor) -> None:
    """Real floating dtypes only; ``x`` in the parameters' dtype, or under ``torch.autocast`` for
    ``x``'s device in float32 or the autocast dtype (autocast casts the products' operands, as
    for ``nn.GRU``; SPEC §6). A float64 layer takes float64 input only."""
    if weight.dtype.is_complex or not weight.dtype.is_floating_point:
        raise TypeError(
            f"{layer} parameters have dtype {weight.dtype}; evsnn layers are real-valued ({_REAL_DTYPES}): "
            "convert the layer with .float(), .double(), .bfloat16() or .half()"
        )
    if x.dtype.is_complex or not x.dtype.is_floating_point:
        raise TypeError(f"{layer} expects a real floating-point input ({_REAL_DTYPES}), got {x.dtype}")
    if x.dtype == weight.dtype:
        return
    device_type = x.device.type
    if weight.dtype != torch.float64 and autocast_enabled(device_type):
        allowed = (torch.float32, torch.get_autocast_dtype(device_type))
        if x.dtype in allowed:
            return
        names = ", ".join(str(d) for d in dict.fromkeys((weight.dtype, *allowed)))
        raise TypeError(
            f"{layer} input has dtype {x.dtype}; under torch.autocast({device_type!r}) the layer with "
            f"{weight.dtype} parameters takes one of {names}"
        )
    hint = ""
    if x.dtype in LOW_PRECISION and weight.dtype == torch.float32:
        hint = f" (run it under torch.autocast({device_type!r}, {x.dtype}) or convert the layer to {x.dtype})"
    raise TypeError(f"{layer} input has dtype {x.dtype} but the layer's parameters are {weight.dtype}{hint}")


def check_input(layer: str, x: Any, rank: int, features: int, weight: Tensor) -> None:
    """``x`` must be a tensor of ``rank`` dims, last dim ``features``, on ``weight``'s device, in a
    dtype :func:`check_dtypes` accepts."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{layer} expects a torch.Tensor input, got {type(x).__name__}")
    if x.dim() != rank:
        shape = "[T, B, input_size] (or [B, T, input_size] with batch_first=True)" if rank == 3 else "[B, input_size]"
        raise ValueError(f"{layer} expects a {rank}-D input {shape}, got shape {tuple(x.shape)}")
    if x.shape[-1] != features:
        raise ValueError(f"{layer} expects input_size={features} features in the last dim, got {x.shape[-1]}")
    check_dtypes(layer, x, weight)
    if x.device != weight.device:
        raise ValueError(f"{layer} input is on {x.device} but the layer's parameters are on {weight.device}")


def check_state(
    layer: str,
    state: Any,
    state_type: type,
    shapes: Sequence[tuple[int, ...]],
    like: Tensor,
) -> NamedTuple:
    """``state`` must be a ``state_type`` (or a plain tuple of its fields) with these shapes, in
    the state dtype of ``like`` (float32 for a low-precision ``like``, SPEC §6)."""
    fields = state_type._fields  # type: ignore[attr-defined]
    expected = state_dtype(like.dtype)
    if not isinstance(state, tuple) or len(state) != len(fields):
        raise TypeError(
            f"{layer} expects state as {state_type.__name__}({', '.join(fields)}) or None, got {type(state).__name__}"
        )
    if not isinstance(state, state_type):
        state = state_type(*state)
    for name, tensor, shape in zip(fields, state, shapes):
        if not isinstance(tensor, Tensor):
            raise TypeError(f"{layer} state field {name!r} must be a tensor, got {type(tensor).__name__}")
        if tuple(tensor.shape) != tuple(shape):
            raise ValueError(f"{layer} state field {name!r} must have shape {tuple(shape)}, got {tuple(tensor.shape)}")
        if tensor.dtype != expected:
            why = " (the state stays float32 under low precision, SPEC §6)" if expected != like.dtype else ""
            raise TypeError(f"{layer} state field {name!r} has dtype {tensor.dtype}, expected {expected}{why}")
        if tensor.device != like.device:
            raise ValueError(f"{layer} state field {name!r} is on {tensor.device}, expected {like.device}")
    return state


def to_time_first(x: Tensor, batch_first: bool) -> Tensor:
    return x.transpose(0, 1) if batch_first else x


def grad_recorded(*tensors: Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
