"""Checks that keep invalid values out of a layer after it was built, without host syncs on
the hot path (issue [3/7] items 3, 8, 10).

- :func:`check_steps`: a sequence needs at least one step; every layer, Stream and readout
  refuses ``T = 0`` with the same ``ValueError`` (``nn.GRU`` refuses it too).
- :func:`check_tensor_state`: a tensor state (the readout's ``m``) of the right shape, dtype
  and device.
- :class:`ParameterChecks`: a mixin for the layers. Assigning a constrained attribute
  (``theta_x = -0.1``, ``tau_mem = tensor([nan])``, ...) is checked in ``__setattr__``;
  ``load_state_dict`` checks the values before copying them in (a pre-hook, so also when the
  layer is loaded as part of a larger model, and a refused state dict changes nothing in the
  layer); :meth:`ParameterChecks.check` checks every parameter and buffer
  on demand (one host sync). What stays unchecked: in-place writes into existing tensors
  (``layer.tau_mem.data.fill_(nan)``, an optimiser step that produces NaN) until ``check()`` is
  called; the forward pass never synchronises to look at parameter values.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from ..functional.checks import check_steps

__all__ = ["check_steps", "check_tensor_state", "check_parameters", "ParameterChecks"]


def check_tensor_state(owner: str, state: Any, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
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
    bad = _violations(name, value).reshape(-1)
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
    named = [
        (name, t) for name, t in list(module.named_parameters()) + list(module.named_buffers()) if t is not None
    ]
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
    ``load_state_dict``; :meth:`check` checks everything on demand (see the module docstring)."""

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
