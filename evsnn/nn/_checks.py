"""Input and state validation shared by the layers: clear errors naming what was expected."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor


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


def check_input(layer: str, x: Any, rank: int, features: int, weight: Tensor) -> None:
    """``x`` must be a tensor of ``rank`` dims, last dim ``features``, same dtype/device as ``weight``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{layer} expects a torch.Tensor input, got {type(x).__name__}")
    if x.dim() != rank:
        shape = "[T, B, input_size] (or [B, T, input_size] with batch_first=True)" if rank == 3 else "[B, input_size]"
        raise ValueError(f"{layer} expects a {rank}-D input {shape}, got shape {tuple(x.shape)}")
    if x.shape[-1] != features:
        raise ValueError(f"{layer} expects input_size={features} features in the last dim, got {x.shape[-1]}")
    if x.dtype != weight.dtype:
        raise TypeError(f"{layer} input has dtype {x.dtype} but the layer's parameters are {weight.dtype}")
    if x.device != weight.device:
        raise ValueError(f"{layer} input is on {x.device} but the layer's parameters are on {weight.device}")


def check_state(
    layer: str,
    state: Any,
    state_type: type,
    shapes: Sequence[tuple[int, ...]],
    like: Tensor,
) -> NamedTuple:
    """``state`` must be a ``state_type`` (or a plain tuple of its fields) with these shapes."""
    fields = state_type._fields  # type: ignore[attr-defined]
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
        if tensor.dtype != like.dtype:
            raise TypeError(f"{layer} state field {name!r} has dtype {tensor.dtype}, expected {like.dtype}")
        if tensor.device != like.device:
            raise ValueError(f"{layer} state field {name!r} is on {tensor.device}, expected {like.device}")
    return state


def to_time_first(x: Tensor, batch_first: bool) -> Tensor:
    return x.transpose(0, 1) if batch_first else x


def grad_recorded(*tensors: Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
