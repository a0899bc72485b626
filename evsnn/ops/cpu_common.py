"""The ``"cpu_event"`` backend's shared parts: event-sparse recurrence on the CPU in numba kernels.

At each step only the weight rows of *active* units are read and accumulated (SPEC.md §2–§4):

    out[b] = Σ_{k active in sample b} value[b, k] · Wᵀ[k]

with ``Wᵀ`` stored pre-transposed (``[K, N]``, contiguous rows). Active means: a nonzero spike
(ALIF), a nonzero event ``y`` (EGRU), a nonzero delta (delta cells). The elementwise parts stay
dense, exactly as in the reference.

The backend is the numba kernels of each family (the ``cpu`` extra, ``pip install "evsnn[cpu]"``),
the same math as the reference scans of [`evsnn.functional`][evsnn.functional]:

- inference (no tensor needs a gradient): [`EGRURunner`][evsnn.ops.egru.cpu.EGRURunner] & co. (also used by
  [`evsnn.streaming`][evsnn.streaming]) run a whole chunk in one compiled loop that gathers the active
  rows and does the gate math per step with no torch dispatch (``_egru_loop``, ``_delta_loop``);
- training: the fused forward and backward kernels of each family's ``cpu_train`` module. A
  unit takes part in the backward's products whenever a gradient can pass through its output:
  for the delta cells exactly the nonzero deltas (the mask is piecewise constant); for
  EGRU/ALIF the units with an event *or* inside the surrogate's finite support (SPEC §3
  "sparse BPTT"); a surrogate with infinite support makes them dense (still exact).

Without numba the backend cannot run: an explicit ``backend="cpu_event"`` raises, ``"auto"``
runs the reference ([`evsnn.functional`][evsnn.functional]). There is no third path.

This module holds what the families' CPU paths share ([`evsnn.ops.alif.cpu`][evsnn.ops.alif.cpu],
[`evsnn.ops.egru.cpu`][evsnn.ops.egru.cpu], [`evsnn.ops.delta.cpu`][evsnn.ops.delta.cpu]): numba's loading and threads,
input checks, and `check_cpu`, the check the dispatcher runs; when ``"auto"`` picks this
backend is the measured table of [`evsnn.ops.auto`][evsnn.ops.auto].
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..functional.precision import LOW_PRECISION, state_dtype
from ..surrogate import SnnTorchSurrogate, Surrogate
from .auto import auto_reason
from .compile_marks import assume_constant_result

__all__ = ["NUMBA_REASON", "numba_available", "require_numba", "kernel_surrogate_reason", "check_cpu"]

DTYPES = (torch.float32, torch.float64)
_ALIGN = 64
_NP_DTYPES = {torch.float32: np.float32, torch.float64: np.float64, torch.int32: np.int32, torch.int64: np.int64}


def _grad_needed(*tensors: Any) -> bool:
    if not torch.is_grad_enabled():
        return False
    for t in tensors:
        if isinstance(t, Tensor) and t.requires_grad:
            return True
        if isinstance(t, tuple) and any(isinstance(u, Tensor) and u.requires_grad for u in t):
            return True
    return False


def _check_cpu_tensors(name: str, *tensors: Any) -> None:
    for t in tensors:
        if isinstance(t, Tensor) and t.device.type != "cpu":
            raise ValueError(f"the cpu_event backend runs on CPU tensors; {name} got a tensor on {t.device}")


def _full(t: Any) -> Any:
    """A runner's copy of a parameter in its compute dtype: float32 for a bfloat16/float16 one.
    The loops exist in float32/float64 only; a low-precision layer runs them on its rounded
    values upcast (SPEC §6), as [`evsnn.ops.dispatch.run_lowered`][evsnn.ops.dispatch.run_lowered] does for the scans."""
    if isinstance(t, Tensor):
        t = t.detach()
        return t.to(state_dtype(t.dtype)) if t.is_floating_point() else t
    return t


def _upcast_low(x: Tensor, dtype: torch.dtype) -> Tensor:
    """A bfloat16/float16 input upcast to the runner's ``dtype``; any other dtype is left for
    the runner's own checks (a float64 input to a float32 runner is refused, not converted)."""
    return x.to(dtype) if x.dtype in LOW_PRECISION else x


def _expand_theta(theta: float | Tensor, n: int, name: str, like: Tensor) -> Tensor:
    t = torch.as_tensor(theta, dtype=like.dtype, device=like.device)
    if t.dim() > 1 or (t.dim() == 1 and t.shape[0] not in (1, n)):
        raise ValueError(f"{name} must be a number or a tensor broadcastable to ({n},), got shape {tuple(t.shape)}")
    return t.expand(n)


@functools.cache
def numba_jit() -> Any:
    """``numba.njit(cache=True, nogil=True)``, or ``None`` when numba is not installed (imported on
    first use: ``import evsnn`` stays light). ``cache=True`` keeps the machine code between processes."""
    try:
        import numba
    except ImportError:
        return None
    return numba.njit(cache=True, nogil=True)


@contextlib.contextmanager
def numba_batch_threads(numba: Any, batch: int) -> Iterator[int]:
    """Threads for a fused kernel's batch-parallel loops: torch's intra-op setting (what the user
    chose with ``torch.set_num_threads``), capped by numba's pool and the batch, set on numba's
    pool for the calls inside the ``with``. Numba's OpenMP pool, started by the first parallel
    call of a process, sets the process-wide OpenMP thread count that torch shares: torch's
    setting is put back afterwards, or a ``torch.set_num_threads(1)`` would become 2."""
    before = torch.get_num_threads()
    n = max(1, min(before, numba.config.NUMBA_NUM_THREADS, batch))
    numba.set_num_threads(n)
    try:
        yield n
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


# A compiled graph takes the answer as a constant (it is fixed for the process) instead of tracing
# through the import attempt and its cache.
@assume_constant_result
def numba_available() -> bool:
    """Whether the fused numba loops can run (``pip install numba``, the ``cpu`` extra)."""
    return numba_jit() is not None


NUMBA_REASON = 'its kernels are compiled by numba, which is not installed: pip install "evsnn[cpu]"'


def require_numba(what: str) -> None:
    """Raise ``RuntimeError`` naming the ``cpu`` extra unless numba is installed."""
    if not numba_available():
        raise RuntimeError(f"{what}: the cpu_event backend runs numba kernels only; {NUMBA_REASON}")


def _check_same_dtype(what: str, like: Tensor, *tensors: Tensor) -> None:
    for t in tensors:
        if t.dtype != like.dtype:
            raise TypeError(f"{what}: expected dtype {like.dtype} (the weights'), got {t.dtype}")


def _np(t: Tensor) -> np.ndarray:
    """A numpy view sharing ``t``'s memory (writes go through)."""
    return t.detach().numpy()


def cpu_empty(shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """An uninitialised CPU tensor in memory from numpy's allocator, for a kernel's large output:
    numpy advises huge pages for a large block, so the first write into it costs a fraction of
    the page faults of a fresh ``torch.empty`` (a 13 MB buffer: under 1 ms instead of about 5)."""
    return _aligned(np.empty, shape, dtype)


def cpu_zeros(shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """A zero-filled `cpu_empty`, from ``calloc``: the pages a kernel never writes are never touched."""
    return _aligned(np.zeros, shape, dtype)


def _aligned(alloc: Any, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    # A large numpy block starts 16 bytes into a page; the kernels' SIMD loads need the 64 bytes
    # of torch's own alignment (a misaligned row costs a split cache line on every other load:
    # the ALIF backward kernel ran about 15 % slower).
    np_dtype = np.dtype(_NP_DTYPES[dtype])
    nbytes = int(np.prod(shape, dtype=np.int64)) * np_dtype.itemsize
    raw = alloc(nbytes + _ALIGN, dtype=np.uint8)
    start = -raw.ctypes.data % _ALIGN
    return torch.from_numpy(raw[start : start + nbytes].view(np_dtype).reshape(shape))


def flat_storage(t: Tensor) -> tuple[Tensor, Tensor]:
    """``t`` as the 1-D span of storage its elements occupy and its element strides (``int64``):
    ``t[i, j, k] = flat[i·s₀ + j·s₁ + k·s₂]``. An expanded tensor (stride 0, the gradient of a
    sum or a mean) stays as small as its storage instead of being copied out to full size."""
    strides = torch.tensor(t.stride(), dtype=torch.int64)
    if t.numel() == 0:
        return t.new_empty(0), strides
    # torch strides are non-negative: the last element sits at Σ (nᵢ − 1)·sᵢ.
    span = 1 + sum((n - 1) * s for n, s in zip(t.shape, t.stride()))
    return t.as_strided((span,), (1,)), strides


def _surrogate_reason(surrogate: Any) -> str | None:
    if isinstance(surrogate, SnnTorchSurrogate):
        return "a snntorch surrogate has no known support or primitive; use an evsnn.surrogate instead"
    if not isinstance(surrogate, Surrogate):
        return f"surrogate must be an evsnn.surrogate.Surrogate, got {type(surrogate).__name__}"
    return None


def _check_surrogate(surrogate: Any) -> None:
    reason = _surrogate_reason(surrogate)
    if reason is not None:
        raise TypeError(f"cpu_event backend: {reason}")


def kernel_surrogate_reason(surrogate: Any) -> str | None:
    """``None`` when the numba kernels evaluate ``surrogate``'s pseudo-derivative themselves
    (its ``kernel_spec`` is one they know), else a sentence saying which surrogates they know."""
    from .cpu_surrogate import KERNEL_SURROGATES, surrogate_args  # its numba forms load with it

    reason = _surrogate_reason(surrogate)
    if reason is None and surrogate_args(surrogate) is not None:
        return None
    known = ", ".join(KERNEL_SURROGATES)
    what = reason or f"{type(surrogate).__name__} has no kernel_spec the cpu_event kernels know"
    return (
        f"{what}; the cpu_event training kernels evaluate the surrogates of evsnn.surrogate that have one "
        f"({known}, and their truncations); backend='torch' (the reference) trains with any surrogate"
    )


def check_cpu(
    *,
    device: torch.device | str,
    dtype: torch.dtype | None = None,
    shape: tuple[int, int, int] | None = None,
    surrogate: Any = None,
    zoneout: float = 0.0,
    fixed_point: tuple[int, int] | None = None,
    auto: bool | None = None,
    family: str | None = None,
    training: bool | None = None,
    **config: Any,
) -> str | None:
    """``None`` when the cpu_event path can run a call, else the reason.

    ``auto=False`` (an explicit ``backend="cpu_event"``) only checks that it *can* run: numba
    installed (its kernels are numba's), CPU, float32/float64, an evsnn surrogate (in ALIF
    training one with a kernel form: `kernel_surrogate_reason`), no zoneout (but in EGRU
    training). Otherwise (``auto=True``, or ``None`` when the dispatcher does not say which) it
    also declines where the measured crossover (`auto_reason`, the family record's regions) says
    the dense reference is faster for ``family`` (bound at registration) in training or
    inference: ``"auto"`` then runs the reference. ``training``: whether the call records
    gradients (the layers pass it); a caller that does not say (``None``, e.g.
    [`evsnn.streaming.Stream`][evsnn.streaming.Stream], which runs in inference mode) gets the inference rule.
    """
    if torch.device(device).type != "cpu":
        return f"it runs on CPU tensors only, got device {device}"
    if not numba_available():
        return NUMBA_REASON
    if dtype is not None and dtype not in DTYPES:
        return f"it supports float32 and float64, got {dtype}"
    if surrogate is not None:
        # EGRU's kernels take any evsnn surrogate (autograd of the surrogate gives the pseudo-
        # derivative of one without a kernel form); ALIF's evaluate it inside the kernel only.
        reason = kernel_surrogate_reason(surrogate) if family == "alif" and training else _surrogate_reason(surrogate)
        if reason is not None:
            return reason
    if zoneout and not (family == "egru" and training):
        # Only the EGRU training kernel (evsnn.ops.egru.cpu_train) implements it.
        return f"zoneout={zoneout} is implemented by the event path only in EGRU training"
    if fixed_point is not None:
        return f"fixed_point={fixed_point} (Qm.n rounding) is implemented by the torch reference only"
    if auto is not False:
        if shape is None:
            return "no shape (T, B, H) given to choose by the measured crossover"
        _, batch, hidden = shape
        return auto_reason(family, bool(training), batch, hidden)
    return None
