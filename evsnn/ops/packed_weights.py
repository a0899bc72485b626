"""Packed weight layouts of the CuPy kernels, cached per parameter version.

A kernel reads its weights in a layout of its own (a transpose, per-block tiles, per-slot
columns). Packing is a full copy of the weights, so it is done once per parameter *version*: the
packed tensor is reused while the weights are the same tensors with the same ``_version`` (every
in-place change, an optimiser step or ``load_state_dict`` included, bumps it), the same data
pointer, dtype, device and shape, and the same layout arguments. An in-place change repacks.

The cache holds one packed tensor per (packing, first weight), keyed weakly: it goes with the
parameter. The packed tensor is read-only for the kernels (they never write their weights) and is
not part of any autograd graph (packing runs without gradient tracking).

Writes through ``param.data`` bypass the version counter (that is what ``.data`` is for): after
such a write, call `clear`.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.utils.weak import WeakIdKeyDictionary

__all__ = ["packed", "clear"]

# first weight (by identity: a tensor's == is elementwise) -> {packing name: (key, other weights
# (weak), packed tensor)}
_CACHE = WeakIdKeyDictionary()


def _key(weights: tuple[Tensor, ...], layout: tuple[Any, ...]) -> tuple | None:
    try:
        state = tuple((w._version, w.data_ptr(), w.dtype, w.device, tuple(w.shape)) for w in weights)
    except RuntimeError:  # an inference tensor has no version counter: nothing to key on
        return None
    return state, layout


def packed(name: str, pack: Callable[..., Tensor], weights: tuple[Tensor, ...], *layout: Any) -> Tensor:
    """``pack(*weights, *layout)``, computed once per version of ``weights`` (module docstring).

    Args:
        name: the packing's name (one cache slot per name and first weight).
        pack: the packing function; it must depend on nothing but its arguments.
        weights: the weight tensors, keyed by identity and version.
        layout: hashable layout arguments (block sizes, flags), part of the key.
    """
    key = _key(weights, layout)
    if key is None or torch.compiler.is_compiling():
        with torch.no_grad():
            return pack(*weights, *layout)
    first, others = weights[0], weights[1:]
    slots = _CACHE.get(first)
    entry = None if slots is None else slots.get(name)
    if entry is not None:
        old_key, old_refs, value = entry
        if old_key == key and all(ref() is w for ref, w in zip(old_refs, others)):
            return value
    with torch.no_grad():
        value = pack(*weights, *layout)
    if slots is None:
        slots = _CACHE.setdefault(first, {})
    slots[name] = (key, tuple(weakref.ref(w) for w in others), value)
    return value


def clear() -> None:
    """Forget every packed tensor (after a write through ``param.data``, which keeps ``_version``)."""
    _CACHE.clear()
