"""Validation shared by the layers: clear errors naming what was expected and what came.

- Construction arguments (``check_size``, ``check_positive``, ...), inputs
  (``check_input``, ``check_dtypes``) and states (``check_state``,
  ``check_tensor_state``).
- ``ParameterChecks``: a mixin that keeps invalid values out of a layer after it was built,
  without host syncs on the hot path. Assigning a constrained attribute
  (``theta_x = -0.1``, ``tau_mem = tensor([nan])``, ...) is checked in ``__setattr__``;
  ``load_state_dict`` checks the values before copying them in (a pre-hook, so also when the
  layer is loaded as part of a larger model, and a refused state dict changes nothing in the
  layer); ``ParameterChecks.check`` checks every parameter and buffer
  on demand (one host sync). What stays unchecked: in-place writes into existing tensors
  (``layer.tau_mem.data.fill_(nan)``, an optimiser step that produces NaN) until ``check()`` is
  called; the forward pass never synchronises to look at parameter values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

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
    dtype `check_dtypes` accepts."""
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


def check_tensor_state(
    owner: str, state: Any, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> Tensor:
    """``state`` must be a tensor of ``shape``, ``dtype`` and ``device``; returns it."""
    if not isinstance(state, Tensor):
        raise TypeError(f"{owner} state must be a torch.Tensor of shape {shape}, got {type(state).__name__}")
    if tuple(state.shape) != tuple(shape):
        raise ValueError(f"{owner} state must be a tensor of shape {tuple(shape)}, got {tuple(state.shape)}")
    if state.dtype != dtype:
        raise TypeError(f"{owner} state must have dtype {dtype} (the layer's state dtype), got {state.dtype}")
    if state.device != device:
        raise ValueError(f"{owner} state must be on {device} (the layer's device), got {state.device}")
    return state


# Constraints by base name; a stacked layer's ``tau_mem_l1_reverse`` follows ``tau_mem``.
# (description, test on a finite float64 tensor)
_TENSOR_RULES: dict[str, tuple[str, Any]] = {
    "tau_mem": ("finite", None),
    "tau_adapt": ("finite", None),
    "tau": ("finite", None),
    "log_threshold": ("finite", None),
    "b0": ("finite and > 0", lambda t: t > 0),
    "beta": ("finite and >= 0", lambda t: t >= 0),
}
_NUMBER_RULES = ("theta_x", "theta_h")


def _base_name(name: str) -> str:
    for base in _TENSOR_RULES:
        if name == base or name.startswith(base + "_l"):
            return base
    return name


def _violations(name: str, value: Tensor) -> Tensor | None:
    """A boolean tensor, True where ``value`` breaks its rule (None for unconstrained names)."""
    base = _base_name(name)
    if base not in _TENSOR_RULES and base not in ("weight", "bias") and not base.startswith(("weight_", "bias_")):
        return None
    if not value.is_floating_point() or value.is_meta:
        # a meta tensor (torch.device("meta") initialisation) has no values to check; they are
        # checked when they arrive (load_state_dict, assignment)
        return None
    bad = ~torch.isfinite(value.detach())
    rule = _TENSOR_RULES.get(base, (None, None))[1]
    if rule is not None:
        bad = bad | ~rule(value.detach())
    return bad


def _describe(owner: str, name: str, value: Tensor) -> str:
    base = _base_name(name)
    what = _TENSOR_RULES.get(base, ("finite", None))[0]
    flat = value.detach().reshape(-1)
    violations = _violations(name, value)
    assert violations is not None, f"{name} has no rule: only a value that breaks its rule is described"
    bad = violations.reshape(-1)
    index = int(bad.nonzero()[0])
    return f"{owner}.{name} must be {what}, got {flat[index].item()!r} at index {index}"


def _check_number(owner: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{owner}.{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{owner}.{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def check_parameters(module: nn.Module) -> None:
    """Every parameter and buffer of ``module`` finite, ``b0 > 0``, ``beta >= 0``, delta
    thresholds finite and >= 0; ``ValueError`` naming the first offending value. One host
    sync for the whole module."""
    owner = type(module).__name__
    for name in _NUMBER_RULES:
        if name in module.__dict__:
            _check_number(owner, name, module.__dict__[name])
    named = [(name, t) for name, t in list(module.named_parameters()) + list(module.named_buffers()) if t is not None]
    flags = []
    for name, tensor in named:
        bad = _violations(name.rsplit(".", 1)[-1], tensor)
        flags.append(None if bad is None else bad.any())
    live = [f for f in flags if f is not None]
    if not live or not bool(torch.stack([f.to(live[0].device) for f in live]).any()):
        return
    for (name, tensor), flag in zip(named, flags):
        if flag is not None and bool(flag):
            raise ValueError(_describe(owner, name, tensor))


def _before_load(module: nn.Module, state_dict: dict, prefix: str, *_: Any) -> None:
    # Runs for this module's own entries before they are copied in: a refused state dict
    # leaves the module's values as they were.
    own = {**module._parameters, **module._buffers}
    for name in own:
        value = state_dict.get(prefix + name)
        if isinstance(value, Tensor):
            bad = _violations(name, value)
            if bad is not None and bool(bad.any()):
                raise ValueError(_describe(type(module).__name__, name, value) + " (in the loaded state dict)")


class ParameterChecks(nn.Module):
    """Mixin for the layers: constrained attributes are checked when assigned and by
    ``load_state_dict``; `check` checks everything on demand (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.register_load_state_dict_pre_hook(_before_load)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _NUMBER_RULES:
            value = _check_number(type(self).__name__, name, value)
        elif isinstance(value, Tensor) and _base_name(name) in _TENSOR_RULES:
            bad = _violations(name, value)
            if bad is not None and bool(bad.any()):
                raise ValueError(_describe(type(self).__name__, name, value))
        super().__setattr__(name, value)

    def check(self) -> "ParameterChecks":
        """Check every parameter and buffer (finite values, ``b0 > 0``, ``beta >= 0``, delta
        thresholds ``>= 0``); raise ``ValueError`` naming the first invalid one, else return
        ``self``. Costs one host synchronisation: call it after training steps or loading, not
        inside the forward pass."""
        check_parameters(self)
        return self
