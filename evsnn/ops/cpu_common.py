"""The ``"cpu_event"`` backend's shared parts: event-sparse propagation on the CPU.

At each step only the weight rows of *active* units are read and accumulated (SPEC.md §2–§4):

    out[b] = Σ_{k active in sample b} value[b, k] · Wᵀ[k]          (``event_matmul``)

with ``Wᵀ`` stored pre-transposed (``[K, N]``, contiguous rows) and the sum done by one
``torch.nn.functional.embedding_bag`` call per step: a weighted sum of the gathered rows that
never materialises them and keeps each sample's own active set (no union over the batch).
Active means: a nonzero spike (ALIF), a nonzero event ``y`` (EGRU), a nonzero delta (delta
cells). The elementwise parts stay dense, exactly as in the reference.

Two paths, the same math as the reference scans of [`evsnn.functional`][evsnn.functional]:

- inference (no tensor needs a gradient): [`EGRURunner`][evsnn.ops.egru.cpu.EGRURunner] & co. (also used by
  [`evsnn.streaming`][evsnn.streaming]). With numba installed (the ``cpu`` extra) they run a whole chunk in
  one compiled loop that gathers the active rows and does the gate math per step with no torch
  dispatch (``_egru_loop``, ``_delta_loop``); without it, or with
  ``EVSNN_CPU_KERNEL=torch``, a loop of in-place torch ops with one ``embedding_bag`` per step;
- training: the same event-sparse forward written with differentiable torch ops, so autograd
  gives the exact gradient. A unit must take part in the product whenever a gradient can pass
  through its output: for the delta cells that is exactly the nonzero deltas (the mask is
  piecewise constant); for EGRU/ALIF it is the units with an event *or* inside the surrogate's
  finite support (SPEC §3 "sparse BPTT"); a surrogate with infinite support makes the product
  dense in training (still exact).

This module holds what the four families' CPU paths share ([`evsnn.ops.alif.cpu`][evsnn.ops.alif.cpu],
[`evsnn.ops.egru.cpu`][evsnn.ops.egru.cpu], [`evsnn.ops.delta.cpu`][evsnn.ops.delta.cpu]): the sparse product, the numba/torch
kernel choice, input checks, and `check_cpu`, the check the dispatcher runs; when ``"auto"``
picks this backend is the measured table of [`evsnn.ops.auto`][evsnn.ops.auto].
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..functional.precision import LOW_PRECISION, state_dtype
from ..surrogate import SnnTorchSurrogate, Surrogate
from .auto import auto_reason
from .compile_marks import assume_constant_result

__all__ = ["KERNELS", "KERNEL_ENV_VAR", "numba_available", "event_matmul", "check_cpu"]

DTYPES = (torch.float32, torch.float64)


# --------------------------------------------------------------------------------------------
# The one sparse primitive
# --------------------------------------------------------------------------------------------


def event_matmul(values: Tensor, table: Tensor, active: Tensor | None = None) -> Tensor:
    """``out[b] = Σ_{k: active[b, k]} values[b, k] · table[k]`` for ``values [B, K]``, ``table [K, N]``.

    ``active`` defaults to ``values != 0``; passing a superset of the nonzeros gives the same
    value and lets autograd return ``∂L/∂values`` on that superset (the rest gets 0).
    Equals ``values @ table`` wherever ``values`` is zero outside ``active``. Differentiable in
    ``values`` and ``table``. Work scales with the number of active entries, not with ``K``.
    """
    batch, k = values.shape
    flat_values = values.reshape(-1)
    sel = flat_values != 0 if active is None else active.reshape(-1)
    flat = torch.nonzero(sel).squeeze(1)
    if batch == 1:
        idx, offsets = flat, flat.new_zeros(1)
    else:
        idx = flat.remainder(k)
        # Entries are sorted by sample, so each sample's bag starts at the first index ≥ b·K.
        offsets = torch.searchsorted(flat, torch.arange(batch, device=flat.device) * k)
    return F.embedding_bag(idx, table, offsets, mode="sum", per_sample_weights=flat_values[flat])


class _RowBag:
    """``event_matmul`` for a fixed table and batch, minus the per-call bookkeeping.

    ``__call__(values, active)`` takes the boolean set of active entries the caller already
    has (an EGRU unit fired, a delta passed its threshold) instead of testing ``values != 0``;
    the caller guarantees ``values`` is zero outside ``active``.
    """

    def __init__(self, table: Tensor, batch: int):
        self.table = table
        self.batch = batch
        self.k = table.shape[0]
        self.offsets = torch.zeros(1, dtype=torch.long, device=table.device)
        self.starts = torch.arange(batch, device=table.device) * self.k

    def __call__(self, values: Tensor, active: Tensor, weighted: bool = True) -> Tensor:
        flat = torch.nonzero(active.reshape(-1)).squeeze(1)
        if self.batch == 1:
            idx, offsets = flat, self.offsets
        else:
            idx = flat.remainder(self.k)
            offsets = torch.searchsorted(flat, self.starts)
        weights = values.reshape(-1)[flat] if weighted else None
        return F.embedding_bag(idx, self.table, offsets, mode="sum", per_sample_weights=weights)


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


KERNELS = ("auto", "numba", "torch")


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


KERNEL_ENV_VAR = "EVSNN_CPU_KERNEL"


def _pick_kernel(kernel: str) -> str:
    """``"auto"`` → the environment variable ``EVSNN_CPU_KERNEL`` if set, else ``"numba"`` when
    installed, else ``"torch"``; an explicit choice is honoured or refused with the reason."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if kernel == "auto":
        env = os.environ.get(KERNEL_ENV_VAR)
        if env:
            if env not in KERNELS:
                raise ValueError(f"environment variable {KERNEL_ENV_VAR}={env!r} is not one of {KERNELS}")
            return _pick_kernel(env)
        return "numba" if numba_available() else "torch"
    if kernel == "numba" and not numba_available():
        raise ValueError("kernel='numba' needs numba: pip install numba (or evsnn[cpu])")
    return kernel


def _check_same_dtype(what: str, like: Tensor, *tensors: Tensor) -> None:
    for t in tensors:
        if t.dtype != like.dtype:
            raise TypeError(f"{what}: expected dtype {like.dtype} (the weights'), got {t.dtype}")


def _np(t: Tensor) -> np.ndarray:
    """A numpy view sharing ``t``'s memory (writes go through)."""
    return t.detach().numpy()


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

    ``auto=False`` (an explicit ``backend="cpu_event"``) only checks that it *can* run: CPU,
    float32/float64, an evsnn surrogate, no zoneout (but in EGRU training on the fused kernel).
    Otherwise (``auto=True``, or ``None`` when the dispatcher does not say which) it also
    declines where the measured crossover (`auto_reason`, the family record's regions) says the
    dense reference is faster for ``family`` (bound at registration) in training or inference.
    ``training``: whether the call records gradients (the layers pass it); a caller that does not
    say (``None``, e.g. [`evsnn.streaming.Stream`][evsnn.streaming.Stream], which runs in inference mode) gets the
    inference rule.
    """
    if torch.device(device).type != "cpu":
        return f"it runs on CPU tensors only, got device {device}"
    if dtype is not None and dtype not in DTYPES:
        return f"it supports float32 and float64, got {dtype}"
    if surrogate is not None:
        reason = _surrogate_reason(surrogate)
        if reason is not None:
            return reason
    if zoneout and not (family == "egru" and training and numba_available() and _pick_kernel("auto") == "numba"):
        # Only EGRU training on the fused numba kernel (evsnn.ops.egru.cpu_train) implements it.
        return f"zoneout={zoneout} is implemented by the event path only in EGRU training on the fused numba kernel"
    if fixed_point is not None:
        return f"fixed_point={fixed_point} (Qm.n rounding) is implemented by the torch reference only"
    if auto is not False:
        if shape is None:
            return "no shape (T, B, H) given to choose by the measured crossover"
        _, batch, hidden = shape
        return auto_reason(family, bool(training), batch, hidden)
    return None
