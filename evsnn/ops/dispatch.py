"""One dispatch point for every multi-step op: ``"auto" | "torch" | "cupy" | "cpu_event"``.

Each family (``"alif"``, ``"egru"``, ``"delta_gru"``, ``"delta_lstm"``) has one signature —
that of its reference scan in [`evsnn.functional`][evsnn.functional] — and every backend registered for it
computes the same function. ``"torch"`` is the reference and always works. ``"auto"`` (the
default of every layer) is overridden by the environment variable ``EVSNN_BACKEND``.

A backend registers a `Backend` with a ``check`` function that returns ``None`` when it
can run a call (device, dtype, surrogate, options) and otherwise a sentence saying why not.
``check`` also receives ``auto=True`` when ``"auto"`` is choosing (a backend may decline where it
would be slower) and ``auto=False`` for an explicit request (it must then decline only where it
cannot compute the call). The layers pass ``training`` (whether the call records gradients):
a path can win in inference and lose in training (cpu_event decides each from its own measured
crossover), so "auto" never trades the reference for a slower path.
An explicit request that cannot run raises that sentence; ``"auto"`` moves on to the next
candidate and warns once per process and reason when a GPU tensor ends on the reference.

Low precision (SPEC §6; ``torch.autocast`` or a bfloat16/float16 layer): the reference handles
it itself (`evsnn.functional.precision`). The accelerated kernels exist in float32 and
float64 only, so they are asked whether they can run the call in float32 and, when chosen, run
their float32 kernel on operands rounded to the low dtype (`run_lowered`), with the state
and thresholds in float32 as SPEC §6 asks and the output events returned in the low dtype. That
is announced by one warning per backend, family and dtype, never by a silent switch to the much
slower reference.

Autograd transforms ([`evsnn.ops.transforms`][evsnn.ops.transforms], docs/transforms.md): under `torch.func.grad`,
`jvp` & co. or forward-mode AD only the reference computes the call, so `"auto"` picks it (one
warning per family and transform) and a backend named explicitly raises; the active transform is
part of the decision's key.

The decision is a cached lookup (`resolve`): keyed by the family, the requested backend,
the value of ``EVSNN_BACKEND``, the device, the low-precision dtype in effect and every ``config``
item the checks read (``dtype``, ``training``, ``surrogate``, ... and the ``(B, H)`` of ``shape``:
no check may read the number of steps). A call with the same key runs no check; registering a
backend (or any write to the registry) empties the cache.
"""

from __future__ import annotations

import functools
import inspect
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from ..functional.precision import LOW_PRECISION, autocast_enabled
from .compile_marks import assume_constant_result
from .family import FAMILIES as RECORDS
from .transforms import active_transform

__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "FAMILIES",
    "Backend",
    "BackendUnavailable",
    "register",
    "registered",
    "validate_backend",
    "resolve",
    "lowered_dtype",
    "run_lowered",
]

BACKENDS = ("auto", "torch", "cupy", "cpu_event")
FAMILIES = tuple(RECORDS)
ENV_VAR = "EVSNN_BACKEND"


class BackendUnavailable(RuntimeError):
    """An explicitly requested backend cannot run this call."""


@dataclass(frozen=True)
class Backend:
    name: str
    family: str
    fn: Callable[..., Any]
    check: Callable[..., "str | None"]
    # Higher runs first under "auto" among the backends whose check passes.
    priority: int = 0
    # Whether "auto" may pick it at all (a backend whose speed depends on activity may
    # decline "auto" through its check instead).
    auto: bool = True


class _Registry(dict):
    """The registered backends; any write empties the decision cache (tests replace entries too)."""

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        _CACHE.clear()

    def __delitem__(self, key) -> None:
        super().__delitem__(key)
        _CACHE.clear()


_REGISTRY: dict[tuple[str, str], Backend] = _Registry()
_WARNED: set[str] = set()
# (key of resolve) -> (backend, warnings to give once per process: ((warned key, message), ...))
_CACHE: dict[tuple, tuple[Backend, tuple[tuple[str, str], ...]]] = {}
_CACHE_LIMIT = 1024


def register(backend: Backend) -> None:
    if backend.family not in FAMILIES:
        raise ValueError(f"unknown op family {backend.family!r}; expected one of {FAMILIES}")
    if backend.name not in BACKENDS or backend.name == "auto":
        raise ValueError(f"unknown backend name {backend.name!r}; expected one of {BACKENDS[1:]}")
    _REGISTRY[(backend.family, backend.name)] = backend


def registered(family: str) -> list[str]:
    """The backends registered for ``family`` (the accelerated ones are loaded first)."""
    for name in ("cpu_event", "cupy"):
        _ensure_loaded(name)
    return [name for (fam, name) in _REGISTRY if fam == family]


def validate_backend(name: object) -> str:
    """Return ``name`` if it is a known backend, else raise ``ValueError``/``TypeError``."""
    if not isinstance(name, str):
        raise TypeError(f"backend must be a string, one of {BACKENDS}, got {type(name).__name__}")
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected one of {BACKENDS}")
    return name


_INSTALL_HINT = {
    "cupy": 'the CuPy backend needs a CUDA GPU and CuPy: pip install "evsnn[cuda13]" (or "evsnn[cuda12]")',
}


_LOADED: set[str] = set()
# The accelerated backends, in the order "auto" and `registered` load them.
_ACCELERATED_BACKENDS = ("cupy", "cpu_event")


# Run, not traced, by torch.compile (importlib is opaque to it: a first request inside a compiled
# model would otherwise break the graph); its result, None, is the constant it assumes.
@assume_constant_result
def _ensure_loaded(name: str) -> None:
    # An accelerated backend's modules (named by the family records; they import nothing from this
    # module, so there is no import cycle) are imported and registered on first request; importing
    # is cheap (CuPy and numba are imported lazily inside them). Done once per process. The
    # cpu_event check decides "auto" per family, so it is bound to its family; the CuPy checks
    # need no family.
    if name in _LOADED or name not in _ACCELERATED_BACKENDS:
        return
    _LOADED.add(name)
    for record in RECORDS.values():
        if name not in record.scans:
            continue
        check_fn = record.check(name)
        if name == "cpu_event":
            check_fn = functools.partial(check_fn, family=record.name)
        register(Backend(name, record.name, record.scan(name), check_fn, priority=10, auto=True))


def _requested(requested: str) -> str:
    requested = validate_backend(requested)
    if requested == "auto":
        env = os.environ.get(ENV_VAR)
        if env:
            if env not in BACKENDS:
                raise ValueError(f"environment variable {ENV_VAR}={env!r} is not one of {BACKENDS}")
            return env
    return requested


def lowered_dtype(device_type: str, dtype: torch.dtype | None) -> torch.dtype | None:
    """The low dtype a call with input/parameter ``dtype`` runs its products in (SPEC §6):
    the autocast dtype when autocast is on for ``device_type`` (float64 excepted), else
    ``dtype`` itself if it is bfloat16/float16, else ``None`` (full precision)."""
    if dtype is None or dtype == torch.float64 or not dtype.is_floating_point:
        return None
    if autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return dtype if dtype in LOW_PRECISION else None


def resolve(family: str, requested: str, device: torch.device, **config: Any) -> Backend:
    """Pick the backend for one call. ``config`` is passed to every candidate's ``check``.

    Under low precision (`lowered_dtype`) accelerated backends are checked for float32
    and the one chosen is returned wrapped by `run_lowered`. The decision is cached by
    what it depends on (module docstring); an unchanged call runs no check."""
    device = torch.device(device)
    low = lowered_dtype(device.type, config.get("dtype"))
    env = os.environ.get(ENV_VAR) if requested == "auto" else None
    transform = active_transform()
    # Traced by torch.compile, the decision is made once per compilation and the cache is left
    # alone: Dynamo would guard on the cache's keys, and a later compilation, made while the cache
    # holds other decisions, builds guards that index keys no longer where they were.
    key = None if torch.compiler.is_compiling() else _cache_key(family, requested, env, device, low, config)
    if key is not None:
        key = (*key, transform)
    try:
        entry = _CACHE.get(key) if key is not None else None
    except TypeError:  # an unhashable config value: decided afresh
        key = entry = None
    if entry is None:
        entry = _decide(family, requested, device, low, config, transform)
        if key is not None:
            if len(_CACHE) >= _CACHE_LIMIT:
                _CACHE.clear()
            _CACHE[key] = entry
    backend, notes = entry
    for warned, message in notes:
        if warned not in _WARNED:
            _WARNED.add(warned)
            warnings.warn(message, RuntimeWarning, stacklevel=3)
    return backend


def _cache_key(
    family: str, requested: str, env: str | None, device: torch.device, low: torch.dtype | None, config: dict[str, Any]
) -> tuple | None:
    """The decision's key, or ``None`` when a config value cannot key it (a tensor threshold):
    such a call is decided afresh (as one whose key is unhashable)."""
    items = []
    for name in sorted(config):
        value = config[name]
        if name == "shape" and value is not None:
            value = tuple(int(v) for v in value[1:])  # (B, H): the checks do not depend on T
        elif isinstance(value, torch.Tensor):
            return None
        items.append((name, value))
    return (family, requested, env, device, low, tuple(items))


def _decide(
    family: str,
    requested: str,
    device: torch.device,
    low: torch.dtype | None,
    config: dict[str, Any],
    transform: str | None = None,
) -> tuple[Backend, tuple[tuple[str, str], ...]]:
    if low is None:
        return _resolve(family, requested, device, config, transform)
    backend, notes = _resolve(family, requested, device, {**config, "dtype": torch.float32}, transform)
    if backend.name == "torch":
        return backend, notes
    message = (
        f"evsnn: the {backend.name} {family} kernels have no {low} form; running them in float32 on "
        f"operands rounded to {low} (state and thresholds float32, outputs {low}; SPEC §6)"
    )
    lowered = replace(backend, fn=functools.partial(run_lowered, backend.fn, family, low, device.type))
    return lowered, notes + ((f"lowered:{backend.name}:{family}:{low}", message),)


def _resolve(
    family: str, requested: str, device: torch.device, config: dict[str, Any], transform: str | None = None
) -> tuple[Backend, tuple[tuple[str, str], ...]]:
    name = _requested(requested)
    if name != "auto":
        _ensure_loaded(name)
        backend = _REGISTRY.get((family, name))
        if backend is None:
            hint = _INSTALL_HINT.get(name, "")
            raise BackendUnavailable(f"backend {name!r} is not available for {family}" + (f": {hint}" if hint else ""))
        reason = backend.check(device=device, auto=False, **config)
        if reason is not None:
            hint = _INSTALL_HINT.get(name, "")
            if hint and "pip install" not in reason:
                reason = f"{reason} ({hint})"
            raise BackendUnavailable(f"backend {name!r} cannot run this {family} call: {reason}")
        if transform is not None and name != "torch":
            raise BackendUnavailable(
                f"backend {name!r} cannot run this {family} call under {transform}: its kernels have a "
                "first-order backward only, no rule for this transform; backend='torch' (the reference) runs it, "
                "and so does backend='auto', which picks the reference under this transform"
            )
        return backend, ()
    for candidate in _ACCELERATED_BACKENDS:
        _ensure_loaded(candidate)
    candidates = sorted(
        (b for (fam, _), b in _REGISTRY.items() if fam == family and b.auto and b.name != "torch"),
        key=lambda b: -b.priority,
    )
    reasons = []
    for backend in candidates:
        reason = backend.check(device=device, auto=True, **config)
        if reason is None and transform is not None:
            message = (
                f"evsnn: running {family} on the PyTorch reference under {transform}: the {backend.name} "
                "kernels that backend='auto' picks for this call have a first-order backward only "
                "(docs/transforms.md); backend='torch' chooses the reference explicitly"
            )
            return _REGISTRY[(family, "torch")], ((f"transform:{family}:{transform}", message),)
        if reason is None:
            return backend, ()
        reasons.append(f"{backend.name}: {reason}")
    notes: tuple[tuple[str, str], ...] = ()
    if device.type == "cuda":
        why = "; ".join(reasons) or _INSTALL_HINT["cupy"]
        message = f"evsnn: running {family} on the PyTorch reference for a CUDA tensor ({why})"
        notes = ((f"{family}:{';'.join(reasons)}", message),)
    return _REGISTRY[(family, "torch")], notes


def _upcast(value: Any, compute: torch.dtype) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(compute) if value.is_floating_point() and value.dtype != compute else value
    if isinstance(value, tuple) and value and all(isinstance(v, torch.Tensor) for v in value):
        return type(value)(*(_upcast(v, compute) for v in value))
    return value


@functools.cache
def _signature(family: str) -> inspect.Signature:
    return inspect.signature(_REGISTRY[(family, "torch")].fn)


def run_lowered(fn: Callable[..., Any], family: str, low: torch.dtype, device_type: str, *args: Any, **kwargs: Any):
    """Run a float32 backend ``fn`` of ``family`` for a call in the low dtype ``low`` (SPEC §6).

    The products' operands (the family's `Family.product_operands`) are rounded to ``low`` and then upcast,
    so the kernel multiplies exactly the low-precision values and accumulates in float32 (as a
    tensor-core product does); everything else is upcast to float32; autocast is switched off
    inside so that the kernel's own products stay float32. Returns the backend's
    ``(out, state, trace)`` with ``out`` in ``low`` and the state float32.
    """
    bound = _signature(family).bind(*args, **kwargs)
    rounded = RECORDS[family].product_operands
    for name, value in bound.arguments.items():
        if name in rounded and isinstance(value, torch.Tensor) and value.dtype != low:
            value = value.to(low)
        bound.arguments[name] = _upcast(value, torch.float32)
    if autocast_enabled(device_type):
        with torch.autocast(device_type, enabled=False):
            out, state, trace = fn(*bound.args, **bound.kwargs)
    else:
        out, state, trace = fn(*bound.args, **bound.kwargs)
    return out.to(low), state, trace


def _always(**_: Any) -> None:
    return None


def _register_reference() -> None:
    for record in RECORDS.values():
        register(Backend("torch", record.name, record.reference, _always, priority=-100))


_register_reference()
