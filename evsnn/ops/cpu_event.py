"""The ``"cpu_event"`` backend: event-sparse propagation on the CPU for all four families.

At each step only the weight rows of *active* units are read and accumulated (SPEC.md §2–§4):

    out[b] = Σ_{k active in sample b} value[b, k] · Wᵀ[k]          (``event_matmul``)

with ``Wᵀ`` stored pre-transposed (``[K, N]``, contiguous rows) and the sum done by one
``torch.nn.functional.embedding_bag`` call per step: a weighted sum of the gathered rows that
never materialises them and keeps each sample's own active set (no union over the batch).
Active means: a nonzero spike (ALIF), a nonzero event ``y`` (EGRU), a nonzero delta (delta
cells). The elementwise parts stay dense, exactly as in the reference.

Two paths, the same math as the reference scans of :mod:`evsnn.functional`:

- inference (no tensor needs a gradient): :class:`EGRURunner` & co. (also used by
  :mod:`evsnn.streaming`). With numba installed (the ``cpu`` extra) they run a whole chunk in
  one compiled loop that gathers the active rows and does the gate math per step with no torch
  dispatch (:func:`_egru_loop`, :func:`_delta_loop`); without it, or with
  ``EVSNN_CPU_KERNEL=torch``, a loop of in-place torch ops with one ``embedding_bag`` per step;
- training: the same event-sparse forward written with differentiable torch ops, so autograd
  gives the exact gradient. A unit must take part in the product whenever a gradient can pass
  through its output: for the delta cells that is exactly the nonzero deltas (the mask is
  piecewise constant); for EGRU/ALIF it is the units with an event *or* inside the surrogate's
  finite support (SPEC §3 "sparse BPTT"); a surrogate with infinite support makes the product
  dense in training (still exact).

``"auto"`` picks this backend only for CPU tensors with the batch/hidden sizes where it was
measured to beat the dense reference, in training and in inference separately (:data:`AUTO_RULES`,
:func:`auto_reason`; "CPU backend choice" in docs/benchmarks.md); ``backend="cpu_event"`` runs it
on any CPU shape.
"""

from __future__ import annotations

import functools
import os
from types import SimpleNamespace
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..functional.alif import ALIFState, ALIFTrace, alif_dynamics, alif_initial_state, decay
from ..functional.checks import check_steps
from ..functional.delta import (
    DeltaGRUState,
    DeltaLSTMState,
    DeltaTrace,
    check_delta_rule,
    delta_gru_gates,
    delta_gru_initial_state,
    delta_lstm_gates,
    delta_lstm_initial_state,
)
from ..functional.egru import RESETS, EGRUState, EGRUTrace, egru_initial_state, egru_pointwise
from ..functional.precision import LOW_PRECISION, state_dtype
from ..surrogate import MultiGaussian, SnnTorchSurrogate, Surrogate, Triangle
from .dispatch import Backend, register

__all__ = [
    "AUTO_MAX_BATCH",
    "AUTO_MIN_HIDDEN",
    "AUTO_RULES",
    "AutoRule",
    "auto_reason",
    "KERNELS",
    "KERNEL_ENV_VAR",
    "numba_available",
    "event_matmul",
    "check",
    "alif_event_scan",
    "egru_event_scan",
    "delta_gru_event_scan",
    "delta_lstm_event_scan",
    "ALIFRunner",
    "EGRURunner",
    "DeltaGRURunner",
    "DeltaLSTMRunner",
]

# Inference crossover measured with ``benchmarks/cpu_streaming.py --crossover`` (docs/benchmarks.md,
# CPU section; 2 threads, T = 100, EGRU at 10-28 % activity): the event path ties or beats the dense
# reference for every B in {1, 4, 8, 16, 32} once H >= 128 (1.0-3.6x); at H = 64 it is a tie
# (0.94-1.22x), so "auto" declines there. Batches above 32 were not measured, so "auto" declines.
AUTO_MAX_BATCH = 32
AUTO_MIN_HIDDEN = 128


class AutoRule(NamedTuple):
    """One region where ``"auto"`` picks cpu_event: ``min_batch <= batch <= max_batch`` and
    ``hidden >= min_hidden``."""

    min_batch: int
    max_batch: int
    min_hidden: int


# (family, training) -> the regions where the event path measured faster than the dense
# reference (an empty tuple: never), from ``benchmarks/cpu_crossover.py`` (docs/benchmarks.md,
# "CPU backend choice"; reference time / event time, one thread, 10 % activity, T = 50, and the
# 2-thread inference table of the CPU streaming section). Unmeasured shapes stay on the
# reference. Training is decided apart from inference: the event path's training forward for
# EGRU and ALIF is a loop of differentiable torch ops, which the reference beat at every
# measured shape; the DeltaGRU trains with the fused kernel of :mod:`evsnn.ops.cpu_train` (1.7-11x
# the reference from H = 128), the DeltaLSTM's torch-op loop wins only from H = 1024 and B >= 2.
_INFERENCE = (AutoRule(1, 16, AUTO_MIN_HIDDEN), AutoRule(17, AUTO_MAX_BATCH, 256))
AUTO_RULES: dict[tuple[str, bool], tuple[AutoRule, ...]] = {
    ("egru", False): _INFERENCE,
    ("delta_gru", False): _INFERENCE,
    ("delta_lstm", False): _INFERENCE,
    ("alif", False): _INFERENCE,
    ("egru", True): (),
    ("delta_gru", True): (AutoRule(1, AUTO_MAX_BATCH, AUTO_MIN_HIDDEN),),
    ("delta_lstm", True): (AutoRule(2, AUTO_MAX_BATCH, 1024),),
    ("alif", True): (),
}


def auto_reason(family: str | None, training: bool, batch: int, hidden: int) -> str | None:
    """``None`` when ``"auto"`` should run ``family`` on cpu_event for a ``[T, batch, hidden]``
    call, else why not, read from the measured table :data:`AUTO_RULES` (pure: no timing)."""
    mode = "training" if training else "inference"
    rules = AUTO_RULES.get((family, bool(training)))
    if rules is None:
        return f"no measured crossover for family {family!r} in {mode}"
    if not rules:
        return f"in {mode} the dense reference was faster at every measured shape (docs/benchmarks.md)"
    if any(r.min_batch <= batch <= r.max_batch and hidden >= r.min_hidden for r in rules):
        return None
    measured = "; ".join(f"B {r.min_batch}-{r.max_batch} with H >= {r.min_hidden}" for r in rules)
    return (
        f"batch {batch}, hidden {hidden} is outside where it beat the dense reference in {mode} ({measured}; "
        "measured crossover, docs/benchmarks.md)"
    )


_DTYPES = (torch.float32, torch.float64)
_EGRU_SURROGATE = Triangle(0.3)
_ALIF_SURROGATE = MultiGaussian()


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
    values upcast (SPEC §6), as :func:`evsnn.ops.dispatch.run_lowered` does for the scans."""
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


# --------------------------------------------------------------------------------------------
# Fused inference loops (numba)
# --------------------------------------------------------------------------------------------
# At B = 1 a torch op costs a few µs of dispatch whatever its size, and one recurrent step of
# the torch-op runners below needs ~15 of them (≈ 75 µs at any activity, against ≈ 350-600 µs
# for a whole ``nn.GRU`` step at H = 1024). These plain-Python loops, compiled once by numba,
# run *all* steps of a chunk in one call: the gather of active rows and the gate math are
# fused, nothing is allocated per step, and the cost per step is the active rows read plus
# O(H) pointwise work. They compute the same equations as the reference scans, in the same
# dtype (intermediate scalars in float64, stored in the array dtype).


def _egru_loop(gi, table, bias_hh, theta, c, y, out_y, out_c, reset_output):  # pragma: no cover - numba
    """EGRU (SPEC §3) over ``gi [T, B, 3H]`` (``W_ih x + b_ih``). ``table = W_hhᵀ [H, 3H]``.

    Per step: ``gh = b_hh + Σ_{k: y_k ≠ 0} y_k · table[k]`` (only rows of units with an event),
    gates, ``c_pre``; ``c``/``y`` ``[B, H]`` are the state, updated in place; ``out_y``/``out_c``
    ``[T, B, H]`` receive ``y_t`` and ``c_pre_t``.
    """
    steps, batch, h3 = gi.shape
    h = h3 // 3
    acc = np.empty(h3, dtype=gi.dtype)
    idx = np.empty(h, dtype=np.int64)
    for b in range(batch):
        n_act = 0
        for k in range(h):
            if y[b, k] != 0:
                idx[n_act] = k
                n_act += 1
        for t in range(steps):
            for j in range(h3):
                acc[j] = bias_hh[j]
            for a in range(n_act):
                k = idx[a]
                w = y[b, k]
                row = table[k]
                for j in range(h3):
                    acc[j] += w * row[j]
            n_act = 0
            for j in range(h):
                r = 1.0 / (1.0 + np.exp(-(gi[t, b, j] + acc[j])))
                z = 1.0 / (1.0 + np.exp(-(gi[t, b, h + j] + acc[h + j])))
                n = np.tanh(gi[t, b, 2 * h + j] + r * acc[2 * h + j])
                c_pre = z * c[b, j] + (1.0 - z) * n
                if reset_output:
                    c_pre -= y[b, j]
                out_c[t, b, j] = c_pre
                # θ > 0, so a unit that fired has y = c_pre ≠ 0: it is an active row next step.
                if c_pre > theta[j]:
                    idx[n_act] = j
                    n_act += 1
                    y[b, j] = c_pre
                    c[b, j] = c_pre if reset_output else c_pre - theta[j]
                else:
                    # y = o·c_pre with o = 0, as in the reference: NaN for a NaN or −inf c_pre,
                    # which then reaches every unit through the product, like the dense W_hh y.
                    y_j = 0.0 * c_pre
                    y[b, j] = y_j
                    if y_j != 0.0:
                        idx[n_act] = j
                        n_act += 1
                    c[b, j] = c_pre
                out_y[t, b, j] = y[b, j]


def _delta_encode_loop(x, x_hat, theta, delta, inclusive):  # pragma: no cover - numba
    """``Δ_t = (x_t − x̂)·1[|x_t − x̂| > Θ]`` (``≥`` when ``inclusive``), ``x̂ += Δ_t`` over
    ``x [T, B, I]`` (SPEC §4)."""
    steps, batch, n = x.shape
    for b in range(batch):
        for t in range(steps):
            for i in range(n):
                d = x[t, b, i] - x_hat[b, i]
                # "not ≤" / "not <" also pass a NaN difference on, as the reference's Δ = diff·0
                # does; d != 0 drops the zero deltas the inclusive rule admits at Θ = 0.
                if (not abs(d) < theta[i] and d != 0) if inclusive else not abs(d) <= theta[i]:
                    delta[t, b, i] = d
                    x_hat[b, i] += d
                else:
                    delta[t, b, i] = 0.0


def _delta_loop(gx, wx, dx, wh, theta_h, h, h_hat, m, c, out_h, out_dh, gru, inclusive):  # pragma: no cover - numba
    """DeltaGRU (``gru``) or DeltaLSTM (SPEC §4) over ``T`` steps whose input deltas ``dx``
    ``[T, B, I]`` are already encoded.

    ``gx [T, B, G·H]`` holds ``W_ih Δx_t`` when precomputed (one GEMM per chunk); with
    ``gx.shape[0] == 0`` the rows of ``wx = W_ihᵀ`` of nonzero ``Δx`` are gathered instead.
    Per step: ``Δh`` of ``h_{t−1}`` against ``ĥ`` (threshold ``theta_h``), ``M += W_ih Δx_t +
    W_hh Δh`` reading only rows ``wh = W_hhᵀ [H, G·H]`` of nonzero ``Δh``, gates, ``h_t``.
    GRU accumulators ``M [B, 4H]`` are ``(r, z, nx, nh)``: input rows feed ``r, z, nx``, hidden
    rows ``r, z, nh``. ``h, ĥ, M, c`` are the state, updated in place.
    """
    steps, batch, n_in = dx.shape
    hs = h.shape[1]
    x_cols = wx.shape[1]
    precomputed = gx.shape[0] > 0
    idx = np.empty(hs, dtype=np.int64)
    for b in range(batch):
        for t in range(steps):
            n_act = 0
            for k in range(hs):
                d = h[b, k] - h_hat[b, k]
                if (not abs(d) < theta_h[k] and d != 0) if inclusive else not abs(d) <= theta_h[k]:
                    out_dh[t, b, k] = d
                    h_hat[b, k] += d
                    idx[n_act] = k
                    n_act += 1
                else:
                    out_dh[t, b, k] = 0.0
            if precomputed:
                for j in range(x_cols):
                    m[b, j] += gx[t, b, j]
            else:
                for i in range(n_in):
                    d = dx[t, b, i]
                    if d != 0:
                        row = wx[i]
                        for j in range(x_cols):
                            m[b, j] += d * row[j]
            for a in range(n_act):
                k = idx[a]
                d = out_dh[t, b, k]
                row = wh[k]
                if gru:
                    for j in range(2 * hs):
                        m[b, j] += d * row[j]
                    for j in range(hs):
                        m[b, 3 * hs + j] += d * row[2 * hs + j]
                else:
                    for j in range(4 * hs):
                        m[b, j] += d * row[j]
            for j in range(hs):
                if gru:
                    r = 1.0 / (1.0 + np.exp(-m[b, j]))
                    z = 1.0 / (1.0 + np.exp(-m[b, hs + j]))
                    n = np.tanh(m[b, 2 * hs + j] + r * m[b, 3 * hs + j])
                    h[b, j] = (1.0 - z) * n + z * h[b, j]
                else:
                    gate_i = 1.0 / (1.0 + np.exp(-m[b, j]))
                    gate_f = 1.0 / (1.0 + np.exp(-m[b, hs + j]))
                    gate_o = 1.0 / (1.0 + np.exp(-m[b, 3 * hs + j]))
                    c[b, j] = gate_f * c[b, j] + gate_i * np.tanh(m[b, 2 * hs + j])
                    h[b, j] = gate_o * np.tanh(c[b, j])
                out_h[t, b, j] = h[b, j]


KERNELS = ("auto", "numba", "torch")


@functools.cache
def _numba_kernels() -> SimpleNamespace | None:
    """The compiled loops, or ``None`` when numba is not installed (imported on first use:
    ``import evsnn`` stays light). ``cache=True`` keeps the machine code between processes."""
    try:
        import numba
    except ImportError:
        return None
    jit = numba.njit(cache=True, nogil=True)
    return SimpleNamespace(egru=jit(_egru_loop), encode=jit(_delta_encode_loop), delta=jit(_delta_loop))


def numba_available() -> bool:
    """Whether the fused numba loops can run (``pip install numba``, the ``cpu`` extra)."""
    return _numba_kernels() is not None


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


# --------------------------------------------------------------------------------------------
# EGRU (SPEC §3)
# --------------------------------------------------------------------------------------------


class EGRURunner:
    """Inference-only EGRU stepper: weights prepared once, state in preallocated buffers.

    ``step(gi)`` takes the input projection ``gi = W_ih x_t + b_ih`` (``[B, 3H]``) and returns
    ``(y_t, c_pre_t)``; the recurrent product reads only the rows of ``W_hhᵀ`` of units with an
    event ``y_{t−1} ≠ 0``. ``kernel``: ``"numba"`` runs the fused loop :func:`_egru_loop` (one
    call per step or chunk), ``"torch"`` a loop of torch ops, ``"auto"`` numba when installed;
    :attr:`kernel` says which runs.
    """

    def __init__(
        self,
        weight_ih: Tensor,
        weight_hh: Tensor,
        bias_ih: Tensor | None,
        bias_hh: Tensor | None,
        threshold: Tensor,
        *,
        reset: str = "output",
        kernel: str = "auto",
    ):
        if reset not in RESETS:
            raise ValueError(f"reset must be one of {RESETS}, got {reset!r}")
        self.kernel = _pick_kernel(kernel)
        with torch.no_grad():
            h = weight_hh.shape[1]
            self.hidden = h
            self.reset_mode = reset
            self.weight_ih = _full(weight_ih)
            self.bias_ih = _full(bias_ih)
            self.table = _full(weight_hh).t().contiguous()  # [H, 3H]: a unit's outgoing weights are one row
            self.bias_hh = _full(bias_hh)
            self.threshold = _full(threshold).clone()
            if self.kernel == "numba":
                zeros = self.table.new_zeros(3 * h)
                self._np_args = (
                    _np(self.table),
                    _np(zeros if self.bias_hh is None else self.bias_hh.contiguous()),
                    _np(self.threshold.expand(h).contiguous()),
                )
        self.c: Tensor | None = None
        self.y: Tensor | None = None

    def load(self, state: EGRUState) -> None:
        self.c = state.c.detach().clone(memory_format=torch.contiguous_format)
        self.y = state.y.detach().clone(memory_format=torch.contiguous_format)
        if self.kernel == "numba":
            _check_same_dtype("EGRU state", self.table, self.c, self.y)
            # The fused loop updates c and y in place: their numpy views stay valid.
            self._np_state = (_np(self.c), _np(self.y))
            return
        self.active = self.y != 0
        self.bag = _RowBag(self.table, self.y.shape[0])

    def _fused(self, gi: Tensor, out: Tensor, c_pre: Tensor) -> None:
        _check_same_dtype("EGRU input", self.table, gi)
        table, bias_hh, theta = self._np_args
        c, y = self._np_state
        _numba_kernels().egru(
            _np(gi.contiguous()), table, bias_hh, theta, c, y, _np(out), _np(c_pre), self.reset_mode == "output"
        )

    def state(self) -> EGRUState:
        return EGRUState(self.c.clone(), self.y.clone())

    def project(self, x: Tensor) -> Tensor:
        """``W_ih x + b_ih`` over the last dim of ``x``."""
        x = _upcast_low(x, self.weight_ih.dtype)  # a low-precision layer's input, upcast like its weights
        if self.bias_ih is None:
            return x @ self.weight_ih.t()
        return F.linear(x, self.weight_ih, self.bias_ih)

    def step(self, gi: Tensor, out: Tensor | None = None, c_pre_out: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One step from ``gi [B, 3H]``; writes into ``out``/``c_pre_out`` when given (rows of
        the scan's output buffers, never overwritten later, so the state can point at them)."""
        if self.kernel == "numba":
            out = gi.new_empty(gi.shape[0], self.hidden) if out is None else out
            c_pre_out = gi.new_empty(gi.shape[0], self.hidden) if c_pre_out is None else c_pre_out
            self._fused(gi.unsqueeze(0), out.unsqueeze(0), c_pre_out.unsqueeze(0))
            return out, c_pre_out
        gh = self.bag(self.y, self.active)
        if self.bias_hh is not None:
            gh = gh + self.bias_hh
        # No graph is recorded here, so any surrogate's forward is the Heaviside step.
        y, (c, _), c_pre = egru_pointwise(
            gi, gh, EGRUState(self.c, self.y), self.threshold, self.reset_mode, _EGRU_SURROGATE
        )
        if out is not None:
            y = out.copy_(y)
        if c_pre_out is not None:
            c_pre = c_pre_out.copy_(c_pre)
        self.c, self.y = c, y
        # θ > 0, so a unit that fired has y = c_pre ≠ 0: the events are next step's active set.
        self.active = y != 0
        return y, c_pre

    def run(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """All steps of ``x [T, B, I]``; returns ``(y [T, B, H], c_pre [T, B, H])``."""
        steps, batch = x.shape[:2]
        gi_all = self.project(x)
        out = gi_all.new_empty(steps, batch, self.hidden)
        c_pre = gi_all.new_empty(steps, batch, self.hidden)
        if self.kernel == "numba":
            self._fused(gi_all, out, c_pre)
            return out, c_pre
        for t in range(steps):
            self.step(gi_all[t], out[t], c_pre[t])
        return out, c_pre


def _egru_autograd(x, state, weight_ih, weight_hh, bias_ih, bias_hh, threshold, reset, surrogate):
    gi_all = x @ weight_ih.t()
    if bias_ih is not None:
        gi_all = gi_all + bias_ih
    table = weight_hh.t().contiguous()
    support = surrogate.support
    c_prev, y_prev = state
    # y_0 supplied with a gradient needs ∂L/∂y_0 for every unit: the first product stays dense.
    dense = support is None or y_prev.requires_grad
    active = None
    ys, c_pres = [], []
    for t in range(x.shape[0]):
        gh = y_prev @ weight_hh.t() if dense else event_matmul(y_prev, table, active)
        if bias_hh is not None:
            gh = gh + bias_hh
        y, (c, _), c_pre = egru_pointwise(gi_all[t], gh, EGRUState(c_prev, y_prev), threshold, reset, surrogate)
        if support is not None:
            dense = False
            # A unit passes gradient through y_t if it fired or sits inside the support
            # (|c − θ| < ε); "≤" keeps the boundary, a harmless superset.
            with torch.no_grad():
                active = (y != 0) | ((c_pre - threshold).abs() <= support)
        ys.append(y)
        c_pres.append(c_pre)
        c_prev, y_prev = c, y
    return torch.stack(ys), EGRUState(c_prev, y_prev), EGRUTrace(torch.stack(c_pres))


def egru_event_scan(
    x: Tensor,
    state: EGRUState | None,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None,
    bias_hh: Tensor | None,
    threshold: Tensor,
    *,
    reset: str = "output",
    surrogate: Surrogate = _EGRU_SURROGATE,
    zoneout: float = 0.0,
    training: bool = False,
) -> tuple[Tensor, EGRUState, EGRUTrace]:
    """Event-sparse EGRU over ``x [T, B, I]``; same signature and result as
    :func:`evsnn.functional.egru_scan` (SPEC §3). Zoneout is not supported (``ValueError``)."""
    if reset not in RESETS:
        raise ValueError(f"reset must be one of {RESETS}, got {reset!r}")
    if zoneout != 0.0:
        raise ValueError(f"the cpu_event EGRU does not implement zoneout, got zoneout={zoneout}")
    _check_surrogate(surrogate)
    _check_cpu_tensors("egru", x, weight_ih, weight_hh, threshold)
    check_steps("the cpu_event egru scan", x)
    if state is None:
        state = egru_initial_state(x.shape[1], weight_hh.shape[1], x)
    params = (x, state, weight_ih, weight_hh, bias_ih, bias_hh, threshold)
    if _grad_needed(*params):
        return _egru_autograd(*params, reset, surrogate)
    with torch.no_grad():
        runner = EGRURunner(weight_ih, weight_hh, bias_ih, bias_hh, threshold, reset=reset)
        runner.load(state)
        y, c_pre = runner.run(x)
        return y, runner.state(), EGRUTrace(c_pre)


# --------------------------------------------------------------------------------------------
# ALIF (SPEC §2)
# --------------------------------------------------------------------------------------------


class ALIFRunner:
    """Inference-only ALIF stepper. ``step(current)`` takes ``I_t = W_in x_t + b_in``
    (``[B, N]``) and returns ``(s_t, v_t, B_t)``; the recurrent input ``W_rec s_{t−1}`` reads
    only the rows of spiking units."""

    def __init__(
        self,
        *,
        tau_mem: Tensor,
        tau_adapt: Tensor,
        b0: float | Tensor = 0.01,
        beta: float | Tensor = 1.8,
        weight_hh: Tensor | None = None,
        bias_hh: Tensor | None = None,
    ):
        with torch.no_grad():
            self.alpha = decay(_full(tau_mem))
            self.rho = decay(_full(tau_adapt))
            self.one_minus_alpha = 1.0 - self.alpha
            self.one_minus_rho = 1.0 - self.rho
            self.b0 = _full(b0)
            self.beta = _full(beta)
            self.table = None if weight_hh is None else _full(weight_hh).t().contiguous()
            self.bias_hh = _full(bias_hh)
        self.v: Tensor | None = None
        self.b: Tensor | None = None
        self.s: Tensor | None = None

    def load(self, state: ALIFState) -> None:
        self.v, self.b, self.s = (t.detach().clone() for t in state)
        self.active = self.s != 0
        # A supplied s_0 may hold any values; spikes made here are exactly 0/1 and need no weights.
        self.binary = False
        if self.table is not None:
            self.bag = _RowBag(self.table, self.s.shape[0])

    def state(self) -> ALIFState:
        return ALIFState(self.v.clone(), self.b.clone(), self.s.clone())

    def step(
        self,
        current: Tensor,
        out: Tensor | None = None,
        v_out: Tensor | None = None,
        thr_out: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One step from ``I_t [B, N]``; returns ``(s_t, v_t, B_t)``, written into the given
        buffers (rows of the scan's outputs, never overwritten later)."""
        current = _upcast_low(current, self.alpha.dtype)  # a low-precision layer's current (SPEC §6)
        s = self.s
        if self.table is not None:
            rec = self.bag(s, self.active, weighted=not self.binary)
            if self.bias_hh is not None:
                rec += self.bias_hh
            current = current + rec
        b = self.rho * self.b
        b.addcmul_(self.one_minus_rho, s)
        thr = torch.mul(self.beta, b, out=thr_out)
        thr += self.b0
        v = torch.mul(self.alpha, self.v, out=v_out)
        v.addcmul_(self.one_minus_alpha, current).sub_(thr * s)
        fired = v > thr  # ⇔ v − B > 0 for finite floats: the strict Heaviside of SPEC §1
        spikes = fired.to(v.dtype) if out is None else out.copy_(fired)
        self.b, self.v, self.s = b, v, spikes
        self.active = fired
        self.binary = True
        return spikes, v, thr

    def run(self, current: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        current = _upcast_low(current, self.alpha.dtype)
        out = torch.empty_like(current)
        vs = torch.empty_like(current)
        thrs = torch.empty_like(current)
        for t in range(current.shape[0]):
            self.step(current[t], out[t], vs[t], thrs[t])
        return out, vs, thrs


def _alif_autograd(current, state, tau_mem, tau_adapt, b0, beta, surrogate, weight_hh, bias_hh):
    alpha = decay(tau_mem)
    rho = decay(tau_adapt)
    s = state.s
    support = surrogate.support
    table = None if weight_hh is None else weight_hh.t().contiguous()
    dense = support is None or s.requires_grad
    active = None
    spikes, vs, thresholds = [], [], []
    for t in range(current.shape[0]):
        i_t = current[t]
        if weight_hh is not None:
            rec = s @ weight_hh.t() if dense else event_matmul(s, table, active)
            if bias_hh is not None:
                rec = rec + bias_hh
            i_t = i_t + rec
        s, state, threshold = alif_dynamics(i_t, state, alpha, rho, b0, beta, surrogate)
        if support is not None:
            dense = False
            with torch.no_grad():
                active = (s != 0) | ((state.v - threshold).abs() <= support)
        spikes.append(s)
        vs.append(state.v)
        thresholds.append(threshold)
    return torch.stack(spikes), state, ALIFTrace(torch.stack(vs), torch.stack(thresholds))


def alif_event_scan(
    current: Tensor,
    state: ALIFState | None,
    *,
    tau_mem: Tensor,
    tau_adapt: Tensor,
    b0: float | Tensor = 0.01,
    beta: float | Tensor = 1.8,
    surrogate: Surrogate = _ALIF_SURROGATE,
    weight_hh: Tensor | None = None,
    bias_hh: Tensor | None = None,
) -> tuple[Tensor, ALIFState, ALIFTrace]:
    """Event-sparse ALIF over ``current [T, B, N]``; same signature and result as
    :func:`evsnn.functional.alif_scan` (SPEC §2)."""
    _check_surrogate(surrogate)
    _check_cpu_tensors("alif", current, tau_mem, tau_adapt, weight_hh)
    check_steps("the cpu_event alif scan", current)
    if state is None:
        state = alif_initial_state(current[0], b0)
    params = (current, state, tau_mem, tau_adapt, b0, beta)
    if _grad_needed(*params, weight_hh, bias_hh):
        return _alif_autograd(current, state, tau_mem, tau_adapt, b0, beta, surrogate, weight_hh, bias_hh)
    with torch.no_grad():
        runner = ALIFRunner(tau_mem=tau_mem, tau_adapt=tau_adapt, b0=b0, beta=beta, weight_hh=weight_hh, bias_hh=bias_hh)
        runner.load(state)
        spikes, vs, thrs = runner.run(current)
        return spikes, runner.state(), ALIFTrace(vs, thrs)


# --------------------------------------------------------------------------------------------
# Delta GRU / LSTM (SPEC §4)
# --------------------------------------------------------------------------------------------


def _delta_increment(gx: Tensor, gh: Tensor, gru: bool) -> Tensor:
    """Increments of the accumulators ``M [B, 4H]`` from ``gx = W_ih Δx`` and ``gh = W_hh Δh``.

    DeltaGRU: the input feeds ``(r, z, nx)`` and not ``nh``; the hidden state feeds
    ``(r, z, nh)`` and not ``nx`` (SPEC §4), exactly the reference's concatenation. The two
    products stay separate (no zero blocks in one table): a NaN or inf delta times a zero
    block would give NaN where the reference adds nothing.
    """
    if not gru:
        return gx + gh
    h = gh.shape[-1] // 3
    return torch.cat([gx[:, : 2 * h] + gh[:, : 2 * h], gx[:, 2 * h :], gh[:, 2 * h :]], dim=-1)


def _joint_delta_table(table_x: Tensor, table_h: Tensor, gru: bool) -> Tensor:
    """``[W_ih; W_hh]ᵀ`` as one table ``[I + H, 4H]`` whose rows give the accumulator increments
    of ``[Δx; Δh]`` in one product (SPEC §4), laid out by :func:`_delta_increment`. For the GRU
    each block has a zero part, so one product is exact for finite deltas only."""
    rows_x = _delta_increment(table_x, table_h.new_zeros(table_x.shape[0], table_h.shape[1]), gru)
    rows_h = _delta_increment(table_x.new_zeros(table_h.shape[0], table_x.shape[1]), table_h, gru)
    return torch.cat([rows_x, rows_h], dim=0)


class _DeltaRunner:
    """Inference-only delta-cell stepper shared by DeltaGRU and DeltaLSTM.

    Input and hidden are encoded together as ``s = [x_t; h_{t−1}]`` against the memory
    ``ŝ = [x̂; ĥ]`` and thresholds ``[Θ_x; Θ_h]``; row gathers of ``W_ihᵀ`` and ``W_hhᵀ`` over
    the nonzero deltas update the accumulators ``M`` (``kernel="torch"``).

    With ``kernel="numba"`` (the default where numba is installed) :meth:`run` encodes a block
    of up to :attr:`block` steps' input deltas first (they depend on ``x`` only), turns them into
    ``W_ih Δx_t`` with one dense GEMM for the block (``Δx`` is often denser than ``Δh``, and one
    batched GEMM beats per-step row gathers of it), then runs the fused loop
    :func:`_delta_loop`, which reads only the rows of ``W_hhᵀ`` of nonzero ``Δh``.
    :meth:`step` gathers the rows of nonzero ``Δx`` instead. The sums are grouped differently
    from the reference's, so results agree to rounding.
    """

    block = 256  # steps per GEMM block: bounds the [block, B, G·H] buffer, keeps it in cache

    gru = True

    def __init__(
        self,
        weight_ih: Tensor,
        weight_hh: Tensor,
        bias_ih: Tensor | None,
        bias_hh: Tensor | None,
        *,
        theta_x: float | Tensor = 0.0,
        theta_h: float | Tensor = 0.0,
        delta_rule: str = "strict",
        kernel: str = "auto",
    ):
        self.kernel = _pick_kernel(kernel)
        self.inclusive = check_delta_rule(delta_rule) == "inclusive"
        with torch.no_grad():
            self.input_size = weight_ih.shape[1]
            self.hidden = weight_hh.shape[1]
            self.wx = _full(weight_ih).t().contiguous()  # [I, G·H]: one input's weights per row
            self.wh = _full(weight_hh).t().contiguous()  # [H, G·H]
            self.bias_ih = _full(bias_ih)
            self.bias_hh = _full(bias_hh)
            like = self.wx
            self.theta = torch.cat(
                [
                    _expand_theta(theta_x, self.input_size, "theta_x", like),
                    _expand_theta(theta_h, self.hidden, "theta_h", like),
                ]
            )
            if self.kernel == "numba":
                self._np_args = (
                    _np(self.wx),
                    _np(self.wh),
                    _np(self.theta[: self.input_size].contiguous()),
                    _np(self.theta[self.input_size :].contiguous()),
                )
        self.s_hat: Tensor | None = None
        self.m: Tensor | None = None
        self.h: Tensor | None = None
        self.c: Tensor | None = None

    def _load_common(self, h: Tensor, x_hat: Tensor, h_hat: Tensor, m: Tensor) -> None:
        self.h = h.detach().clone()
        self.s_hat = torch.cat([x_hat.detach(), h_hat.detach()], dim=-1)
        self.m = m.detach().clone(memory_format=torch.contiguous_format)
        self.zero = self.h.new_zeros(())
        self.bag_x = _RowBag(self.wx, self.h.shape[0])
        self.bag_h = _RowBag(self.wh, self.h.shape[0])

    def _encode(self, s: Tensor, delta_out: Tensor | None) -> Tensor:
        """``Δ = (s − ŝ)·1[|s − ŝ| > Θ]`` (``≥`` for the inclusive rule), ``ŝ += Δ``,
        ``M += table-rows of the nonzero Δ``."""
        diff = s - self.s_hat
        passed = _passed(diff, self.theta, self.inclusive, grad=False)
        delta = torch.where(passed, diff, self.zero, out=delta_out)
        self.s_hat += delta
        n_in = self.input_size
        gx = self.bag_x(delta[:, :n_in], passed[:, :n_in])
        gh = self.bag_h(delta[:, n_in:], passed[:, n_in:])
        self.m += _delta_increment(gx, gh, self.gru)
        return delta

    def _fused(self, x: Tensor, gemm: bool, out: Tensor, dx: Tensor, dh: Tensor) -> None:
        """Steps of ``x [t, B, I]`` through the numba loops; writes ``h``, ``Δx``, ``Δh``."""
        _check_same_dtype("delta cell input", self.wx, x)
        kernels = _numba_kernels()
        wx, wh, theta_x, theta_h = self._np_args
        n_in = self.input_size
        s_hat = _np(self.s_hat)  # x̂ and ĥ are views into it: updated in place
        x_hat, h_hat = s_hat[:, :n_in], s_hat[:, n_in:]
        dx_np = _np(dx)
        kernels.encode(_np(x.contiguous()), x_hat, theta_x, dx_np, self.inclusive)
        if gemm:
            gx = _np(torch.matmul(dx, self.wx))
        else:
            gx = np.empty((0, x.shape[1], self.wx.shape[1]), dtype=dx_np.dtype)
        c = self._c_dummy if self.c is None else _np(self.c)
        kernels.delta(
            gx, wx, dx_np, wh, theta_h, _np(self.h), h_hat, _np(self.m), c, _np(out), _np(dh), self.gru, self.inclusive
        )

    def _load_fused(self) -> None:
        if self.kernel != "numba":
            return
        _check_same_dtype("delta cell state", self.wx, self.h, self.s_hat, self.m)
        self.h = self.h.contiguous()
        self._c_dummy = np.empty((1, 1), dtype=_np(self.h).dtype)
        self._dh_step = self.h.new_empty(1, *self.h.shape)

    def run(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """All steps of ``x [T, B, I]``; returns ``(h [T, B, H], deltas [T, B, I + H])``."""
        x = _upcast_low(x, self.wx.dtype)  # a low-precision layer's input (SPEC §6)
        steps, batch = x.shape[:2]
        if self.kernel == "numba":
            n_in = self.input_size
            out = x.new_empty(steps, batch, self.hidden)
            dx = x.new_empty(steps, batch, n_in)
            dh = x.new_empty(steps, batch, self.hidden)
            for start in range(0, steps, self.block):
                part = slice(start, start + self.block)
                self._fused(x[part], True, out[part], dx[part], dh[part])
            return out, torch.cat([dx, dh], dim=-1)
        s_all = x.new_empty(steps, batch, self.input_size + self.hidden)
        s_all[..., : self.input_size] = x
        out = x.new_empty(steps, batch, self.hidden)
        deltas = torch.empty_like(s_all)
        for t in range(steps):
            s_all[t, :, self.input_size :] = self.h
            self._step_encoded(s_all[t], out[t], deltas[t])
        return out, deltas

    def step(self, x: Tensor) -> Tensor:
        """One step on ``x [B, I]``; returns ``h_t``."""
        x = _upcast_low(x, self.wx.dtype)
        if self.kernel == "numba":
            out = x.new_empty(1, x.shape[0], self.hidden)
            self._fused(x.unsqueeze(0), False, out, x.new_empty(1, *x.shape), self._dh_step)
            return out[0]
        s = torch.cat([x, self.h], dim=-1)
        return self._step_encoded(s, None, None)

    def _step_encoded(self, s, out, delta_out):  # pragma: no cover - overridden
        raise NotImplementedError


class DeltaGRURunner(_DeltaRunner):
    """Inference-only DeltaGRU stepper (SPEC §4); ``step(x_t) -> h_t``."""

    gru = True

    def initial_state(self, batch: int, like: Tensor) -> DeltaGRUState:
        return delta_gru_initial_state(batch, self.input_size, self.hidden, self.bias_ih, self.bias_hh, like)

    def load(self, state: DeltaGRUState) -> None:
        self._load_common(state.h, state.x_hat, state.h_hat, state.m)
        self._load_fused()

    def state(self) -> DeltaGRUState:
        i = self.input_size
        return DeltaGRUState(self.h.clone(), self.s_hat[:, :i].clone(), self.s_hat[:, i:].clone(), self.m.clone())

    def _step_encoded(self, s: Tensor, out: Tensor | None, delta_out: Tensor | None) -> Tensor:
        self._encode(s, delta_out)
        h_new = delta_gru_gates(self.m, self.h)
        if out is not None:
            h_new = out.copy_(h_new)
        self.h = h_new
        return h_new


class DeltaLSTMRunner(_DeltaRunner):
    """Inference-only DeltaLSTM stepper (SPEC §4); ``step(x_t) -> h_t``."""

    gru = False

    def initial_state(self, batch: int, like: Tensor) -> DeltaLSTMState:
        return delta_lstm_initial_state(batch, self.input_size, self.hidden, self.bias_ih, self.bias_hh, like)

    def load(self, state: DeltaLSTMState) -> None:
        self._load_common(state.h, state.x_hat, state.h_hat, state.m)
        self.c = state.c.detach().clone(memory_format=torch.contiguous_format)
        self._load_fused()

    def state(self) -> DeltaLSTMState:
        i = self.input_size
        return DeltaLSTMState(
            self.h.clone(), self.c.clone(), self.s_hat[:, :i].clone(), self.s_hat[:, i:].clone(), self.m.clone()
        )

    def _step_encoded(self, s: Tensor, out: Tensor | None, delta_out: Tensor | None) -> Tensor:
        self._encode(s, delta_out)
        h_new, self.c = delta_lstm_gates(self.m, self.c)
        if out is not None:
            h_new = out.copy_(h_new)
        self.h = h_new
        return h_new


def _passed(diff: Tensor, theta: Tensor, inclusive: bool, grad: bool) -> Tensor:
    """The reference's mask: ``|diff| > Θ`` (strict) or ``|diff| ≥ Θ`` (inclusive), written as
    "not ≤" / "not <" so that a NaN difference passes on too, as the reference's
    ``Δ = NaN·0 = NaN`` does. The rows of W it selects are the only ones the product and its
    gradient need (SPEC §4). Without a gradient (``grad=False``) the inclusive rule also drops
    ``diff = 0`` (admitted at Θ = 0): its Δ is 0 either way, but with a gradient the mask is
    what passes ``∂Δ/∂s = 1``, so it must stay the reference's."""
    mag = diff.detach().abs()
    if inclusive:
        mask = ~(mag < theta)
        return mask if grad else mask & (diff != 0)
    return ~(mag <= theta)


def _delta_autograd(x, state, weight_ih, weight_hh, theta_x, theta_h, gru: bool, inclusive: bool):
    steps = x.shape[0]
    n_in, hs = weight_ih.shape[1], weight_hh.shape[1]
    table_x, table_h = weight_ih.t().contiguous(), weight_hh.t().contiguous()
    table = _joint_delta_table(table_x, table_h, gru)
    theta = torch.cat(
        [_expand_theta(theta_x, n_in, "theta_x", table_x), _expand_theta(theta_h, hs, "theta_h", table_x)]
    ).detach()
    if gru:
        h, x_hat, h_hat, m = state
        c = None
    else:
        h, c, x_hat, h_hat, m = state
    s_hat = torch.cat([x_hat, h_hat], dim=-1)
    hs_out, deltas = [], []
    for t in range(steps):
        s = torch.cat([x[t], h], dim=-1)
        diff = s - s_hat
        mask = _passed(diff, theta, inclusive, grad=True)
        delta = diff * mask.to(diff.dtype)
        s_hat = s_hat + delta
        # The mask is piecewise constant: ∂Δ/∂s is zero off the mask, so the nonzero deltas
        # are exactly the rows whose gradient is needed (SPEC §4, no approximation).
        if gru and not bool(torch.isfinite(delta.detach()).all()):
            # The GRU's joint table has zero blocks; NaN/inf times zero would give NaN where
            # the reference adds nothing, so such a step takes the two products apart.
            gx = event_matmul(delta[:, :n_in], table_x, mask[:, :n_in])
            gh = event_matmul(delta[:, n_in:], table_h, mask[:, n_in:])
            m = m + _delta_increment(gx, gh, gru)
        else:
            m = m + event_matmul(delta, table, mask)
        if gru:
            h = delta_gru_gates(m, h)
        else:
            h, c = delta_lstm_gates(m, c)
        hs_out.append(h)
        deltas.append(delta)
    delta_all = torch.stack(deltas)
    trace = DeltaTrace(delta_all[..., :n_in], delta_all[..., n_in:])
    x_hat, h_hat = s_hat[..., :n_in], s_hat[..., n_in:]
    final = DeltaGRUState(h, x_hat, h_hat, m) if gru else DeltaLSTMState(h, c, x_hat, h_hat, m)
    return torch.stack(hs_out), final, trace


def _delta_scan(x, state, weight_ih, weight_hh, bias_ih, bias_hh, theta_x, theta_h, gru: bool, delta_rule: str):
    family = "delta_gru" if gru else "delta_lstm"
    inclusive = check_delta_rule(delta_rule) == "inclusive"
    _check_cpu_tensors(family, x, weight_ih, weight_hh)
    check_steps(f"the cpu_event {family} scan", x)
    runner_type = DeltaGRURunner if gru else DeltaLSTMRunner
    if state is None:
        init = delta_gru_initial_state if gru else delta_lstm_initial_state
        state = init(x.shape[1], weight_ih.shape[1], weight_hh.shape[1], bias_ih, bias_hh, x)
    if _grad_needed(x, state, weight_ih, weight_hh, bias_ih, bias_hh, theta_x, theta_h):
        if gru and _pick_kernel("auto") == "numba":
            # The fused event-sparse forward and backward, measured faster than the torch-op loop
            # below at H = 1024, B = 32 (docs/benchmarks.md, "CPU training of the delta cells").
            # The DeltaLSTM's fused kernel is exact too but was not measured faster: not used.
            from . import cpu_train

            return cpu_train.delta_gru_train_scan(
                x, state, weight_ih, weight_hh, bias_ih, bias_hh, theta_x=theta_x, theta_h=theta_h, delta_rule=delta_rule
            )
        return _delta_autograd(x, state, weight_ih, weight_hh, theta_x, theta_h, gru, inclusive)
    with torch.no_grad():
        runner = runner_type(
            weight_ih, weight_hh, bias_ih, bias_hh, theta_x=theta_x, theta_h=theta_h, delta_rule=delta_rule
        )
        runner.load(state)
        out, deltas = runner.run(x)
        n_in = weight_ih.shape[1]
        trace = DeltaTrace(deltas[..., :n_in].contiguous(), deltas[..., n_in:].contiguous())
        return out, runner.state(), trace


def delta_gru_event_scan(
    x: Tensor,
    state: DeltaGRUState | None,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None,
    bias_hh: Tensor | None,
    *,
    theta_x: float | Tensor = 0.0,
    theta_h: float | Tensor = 0.0,
    delta_rule: str = "strict",
) -> tuple[Tensor, DeltaGRUState, DeltaTrace]:
    """Event-sparse DeltaGRU over ``x [T, B, I]``; same signature and result as
    :func:`evsnn.functional.delta_gru_scan` (SPEC §4)."""
    return _delta_scan(x, state, weight_ih, weight_hh, bias_ih, bias_hh, theta_x, theta_h, gru=True, delta_rule=delta_rule)


def delta_lstm_event_scan(
    x: Tensor,
    state: DeltaLSTMState | None,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None,
    bias_hh: Tensor | None,
    *,
    theta_x: float | Tensor = 0.0,
    theta_h: float | Tensor = 0.0,
    delta_rule: str = "strict",
) -> tuple[Tensor, DeltaLSTMState, DeltaTrace]:
    """Event-sparse DeltaLSTM over ``x [T, B, I]``; same signature and result as
    :func:`evsnn.functional.delta_lstm_scan` (SPEC §4)."""
    return _delta_scan(x, state, weight_ih, weight_hh, bias_ih, bias_hh, theta_x, theta_h, gru=False, delta_rule=delta_rule)


# --------------------------------------------------------------------------------------------
# The check that decides explicit requests and "auto"
# --------------------------------------------------------------------------------------------


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


def check(
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
    float32/float64, an evsnn surrogate, no zoneout. Otherwise (``auto=True``, or ``None``
    when the dispatcher does not say which) it also declines where the measured crossover
    (:func:`auto_reason`, :data:`AUTO_RULES`) says the dense reference is faster for
    ``family`` (bound at registration) in training or inference. ``training``: whether the
    call records gradients (the layers pass it); a caller that does not say (``None``, e.g.
    :class:`evsnn.streaming.Stream`, which runs in inference mode) gets the inference rule.
    """
    if torch.device(device).type != "cpu":
        return f"it runs on CPU tensors only, got device {device}"
    if dtype is not None and dtype not in _DTYPES:
        return f"it supports float32 and float64, got {dtype}"
    if surrogate is not None:
        reason = _surrogate_reason(surrogate)
        if reason is not None:
            return reason
    if zoneout:
        return f"zoneout={zoneout} is not implemented by the event path"
    if fixed_point is not None:
        return f"fixed_point={fixed_point} (Qm.n rounding) is implemented by the torch reference only"
    if auto is not False:
        if shape is None:
            return "no shape (T, B, H) given to choose by the measured crossover"
        _, batch, hidden = shape
        return auto_reason(family, bool(training), batch, hidden)
    return None


_FNS = {
    "alif": alif_event_scan,
    "egru": egru_event_scan,
    "delta_gru": delta_gru_event_scan,
    "delta_lstm": delta_lstm_event_scan,
}

for _family, _fn in _FNS.items():
    register(Backend("cpu_event", _family, _fn, functools.partial(check, family=_family), priority=10, auto=True))
