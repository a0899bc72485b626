"""EGRU on the ``"cpu_event"`` backend (SPEC §3): the inference runner (a numba loop) and the scan,
which trains with the fused kernels of [`evsnn.ops.egru.cpu_train`][evsnn.ops.egru.cpu_train]; same results as
[`evsnn.functional.egru_scan`][evsnn.functional.egru_scan]."""

from __future__ import annotations

import functools
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ...functional.checks import check_steps
from ...functional.egru import RESETS, EGRUState, EGRUTrace, egru_initial_state
from ...functional.precision import state_dtype
from ...surrogate import Surrogate, Triangle
from ..cpu_common import (
    _check_cpu_tensors,
    _check_same_dtype,
    _check_surrogate,
    _full,
    _grad_needed,
    _np,
    _upcast_low,
    check_cpu,
    numba_jit,
    require_numba,
)
from ..cpu_vecmath import install, sigmoid, tanh

__all__ = ["EGRURunner", "egru_scan_cpu", "egru_scan_cpu_op", "check_cpu", "kernels_available"]

# --------------------------------------------------------------------------------------------
# Fused inference loops (numba)
# --------------------------------------------------------------------------------------------
# At B = 1 a torch op costs a few µs of dispatch whatever its size, and one recurrent step
# written in torch ops needs ~15 of them (≈ 75 µs at any activity, against ≈ 350-600 µs for a
# whole ``nn.GRU`` step at H = 1024). These plain-Python loops, compiled once by numba,
# run *all* steps of a chunk in one call: the gather of active rows and the gate math are
# fused, nothing is allocated per step, and the cost per step is the active rows read plus
# O(H) pointwise work. They compute the same equations as the reference scans, in the arrays'
# dtype, the gate math as one branch-free loop over the units that compiles to SIMD code (with
# the vectorisable sigmoid and tanh of evsnn.ops.cpu_vecmath).


def _egru_loop(
    gi, x, wx, bias_ih, table, bias_hh, theta, c, y, out_y, out_c, acc, idx, reset_output
):  # pragma: no cover - numba
    """EGRU (SPEC §3) over ``T`` steps. ``table = W_hhᵀ [H, 3H]``.

    The input gates come precomputed, ``gi [T, B, 3H] = W_ih x + b_ih`` (one GEMM per chunk), or
    with ``gi.shape[0] == 0`` are formed here from ``x [T, B, I]``, ``wx = W_ihᵀ [I, 3H]`` and
    ``bias_ih [3H]`` (the step path: one call per step, no torch op). Per step: ``gh = b_hh +
    Σ_{k: y_k ≠ 0} y_k · table[k]`` (only rows of units with an event), gates, ``c_pre``;
    ``c``/``y`` ``[B, H]`` are the state, updated in place; ``out_y``/``out_c`` ``[T, B, H]``
    receive ``y_t`` and ``c_pre_t``. ``acc [2, 3H]`` and ``idx [H]`` (int64) are scratch.
    """
    h = table.shape[0]
    h3 = 3 * h
    one = np.ones(1, dtype=table.dtype)[0]
    zero = np.zeros(1, dtype=table.dtype)[0]
    project = gi.shape[0] == 0
    # acc_h = W_hh y + b_hh, acc_x = W_ih x + b_ih (two rows: the products index from 0 and vectorise)
    acc_h, acc_x = acc[0], acc[1]
    steps, batch = (x.shape[0], x.shape[1]) if project else (gi.shape[0], gi.shape[1])
    for b in range(batch):
        n_act = 0
        for k in range(h):
            if y[b, k] != 0:
                idx[n_act] = k
                n_act += 1
        for t in range(steps):
            for j in range(h3):
                acc_h[j] = bias_hh[j]
            if project:
                for j in range(h3):
                    acc_x[j] = bias_ih[j]
                # every input column is read: a zero x_i times a NaN/inf weight is NaN, as in W_ih x
                for i in range(x.shape[2]):
                    w = x[t, b, i]
                    row = wx[i]
                    for j in range(h3):
                        acc_x[j] += w * row[j]
            else:
                for j in range(h3):
                    acc_x[j] = gi[t, b, j]
            for a in range(n_act):
                k = idx[a]
                w = y[b, k]
                row = table[k]
                for j in range(h3):
                    acc_h[j] += w * row[j]
            for j in range(h):
                r = sigmoid(acc_x[j] + acc_h[j])
                z = sigmoid(acc_x[h + j] + acc_h[h + j])
                n = tanh(acc_x[2 * h + j] + r * acc_h[2 * h + j])
                c_pre = z * c[b, j] + (one - z) * n
                if reset_output:
                    c_pre -= y[b, j]
                out_c[t, b, j] = c_pre
                th = theta[j]
                fire = c_pre > th
                # y = o·c_pre: with o = 0 that is 0, or NaN for a NaN or −inf c_pre, which then
                # reaches every unit through the product, like the dense W_hh y.
                y_j = c_pre if fire else zero * c_pre
                y[b, j] = y_j
                out_y[t, b, j] = y_j
                c[b, j] = c_pre - th if (fire and not reset_output) else c_pre
            # The units whose y_t ≠ 0 (θ > 0: every unit that fired, and NaN) are next step's rows.
            n_act = 0
            for j in range(h):
                if y[b, j] != 0.0:
                    idx[n_act] = j
                    n_act += 1


@functools.cache
def _kernels() -> SimpleNamespace | None:
    """The compiled loop, or ``None`` without numba (compiled on first use)."""
    if numba_jit() is None:
        return None
    import numba

    install()  # the vectorisable sigmoid/tanh the loops call

    # Numpy's error model (no branch guards a division) and no reassociation where the
    # vectorisable exp is inlined: the gate loop over the units compiles to SIMD code.
    jit = numba.njit(cache=True, nogil=True, fastmath={"contract"}, error_model="numpy")
    return SimpleNamespace(egru=jit(_egru_loop))


def kernels_available() -> bool:
    """Whether the numba inference loop can run (numba installed: the ``cpu`` extra)."""
    return _kernels() is not None


_EGRU_SURROGATE = Triangle(0.3)


class EGRURunner:
    """Inference-only EGRU stepper: weights prepared once, state in preallocated buffers.

    ``step(gi)`` takes the input projection ``gi = W_ih x_t + b_ih`` (``[B, 3H]``) and returns
    ``(y_t, c_pre_t)``; the recurrent product reads only the rows of ``W_hhᵀ`` of units with an
    event ``y_{t−1} ≠ 0``. `step_input` takes ``x_t`` itself (the streaming step). Runs the
    fused loop `_egru_loop` (one call per step or chunk); needs numba.
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
    ):
        if reset not in RESETS:
            raise ValueError(f"reset must be one of {RESETS}, got {reset!r}")
        require_numba("EGRURunner")
        with torch.no_grad():
            h = weight_hh.shape[1]
            self.hidden = h
            self.reset_mode = reset
            self.weight_ih = _full(weight_ih)
            self.bias_ih = _full(bias_ih)
            self.table = _full(weight_hh).t().contiguous()  # [H, 3H]: a unit's outgoing weights are one row
            self.bias_hh = _full(bias_hh)
            self.threshold = _full(threshold).clone()
            zeros = self.table.new_zeros(3 * h)
            self._np_args = (
                _np(self.table),
                _np(zeros if self.bias_hh is None else self.bias_hh.contiguous()),
                _np(self.threshold.expand(h).contiguous()),
            )
            # W_ihᵀ and b_ih for the projection inside the loop (step_input), made on its first
            # call: a chunk (the scans' path) projects with one GEMM instead
            self._np_input: tuple[np.ndarray, np.ndarray] | None = None
            self._no_input = (np.empty((0, 3 * h), dtype=_np(zeros).dtype), _np(zeros))
            self._np_scratch = (np.empty((2, 3 * h), dtype=_np(zeros).dtype), np.empty(h, dtype=np.int64))
            self._no_gi = np.empty((0, 1, 3 * h), dtype=_np(zeros).dtype)
            self._kernel = _kernels().egru
        self.c: Tensor | None = None
        self.y: Tensor | None = None

    @classmethod
    def from_scan_arguments(
        cls,
        weight_ih: Tensor,
        weight_hh: Tensor,
        bias_ih: Tensor | None,
        bias_hh: Tensor | None,
        threshold: Tensor,
        *,
        reset: str = "output",
        **_: object,
    ) -> "EGRURunner":
        """A runner for what the EGRU scans take after ``(x, state)`` (the streaming runner of
        the family record; the surrogate is of no use without gradients, and dispatch does not
        pick this backend for zoneout in inference)."""
        return cls(weight_ih, weight_hh, bias_ih, bias_hh, threshold, reset=reset)

    def stream_step(self, x: Tensor) -> Tensor:
        """The events ``y_t`` of one step on ``x_t [B, I]``."""
        return self.step_input(x)

    def stream_chunk(self, x: Tensor) -> Tensor:
        """The events of all steps of ``x [T, B, I]``."""
        return self.run(x)[0]

    def load(self, state: EGRUState) -> None:
        self.c = state.c.detach().clone(memory_format=torch.contiguous_format)
        self.y = state.y.detach().clone(memory_format=torch.contiguous_format)
        _check_same_dtype("EGRU state", self.table, self.c, self.y)
        # The fused loop updates c and y in place: their numpy views stay valid.
        self._np_state = (_np(self.c), _np(self.y))
        self._c_pre_step = np.empty((1, *self.c.shape), dtype=self._np_state[0].dtype)

    def _fused(self, gi: Tensor, out: Tensor, c_pre: Tensor) -> None:
        _check_same_dtype("EGRU input", self.table, gi)
        table, bias_hh, theta = self._np_args
        c, y = self._np_state
        wx, bias_ih = self._no_input
        self._kernel(
            _np(gi.contiguous()), self._no_gi, wx, bias_ih, table, bias_hh, theta, c, y, _np(out), _np(c_pre),
            *self._np_scratch, self.reset_mode == "output",
        )  # fmt: skip

    def step_input(self, x: Tensor) -> Tensor:
        """One step from the layer's input ``x [B, I]``; returns ``y_t`` (a new tensor).

        One call of `_egru_loop`, projection included (``W_ih x_t`` from ``W_ihᵀ`` held
        here): no torch op and no allocation besides ``y_t``."""
        x = _upcast_low(x, self.weight_ih.dtype)
        _check_same_dtype("EGRU input", self.table, x)
        # numpy in and out: a torch op costs µs of dispatch at B = 1, the whole step ~100 µs
        batch = x.shape[0]
        x_np = (x.detach() if x.requires_grad else x).contiguous().numpy().reshape(1, batch, -1)
        out = np.empty((1, batch, self.hidden), dtype=x_np.dtype)
        table, bias_hh, theta = self._np_args
        c, y = self._np_state
        if self._np_input is None:
            bias_ih = self._no_input[1] if self.bias_ih is None else _np(self.bias_ih.contiguous())
            self._np_input = (_np(self.weight_ih.t().contiguous()), bias_ih)
        wx, bias_ih = self._np_input
        self._kernel(
            self._no_gi, x_np, wx, bias_ih, table, bias_hh, theta, c, y, out, self._c_pre_step, *self._np_scratch,
            self.reset_mode == "output",
        )  # fmt: skip
        return torch.from_numpy(out[0])

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
        out = gi.new_empty(gi.shape[0], self.hidden) if out is None else out
        c_pre_out = gi.new_empty(gi.shape[0], self.hidden) if c_pre_out is None else c_pre_out
        self._fused(gi.unsqueeze(0), out.unsqueeze(0), c_pre_out.unsqueeze(0))
        return out, c_pre_out

    def run(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """All steps of ``x [T, B, I]``; returns ``(y [T, B, H], c_pre [T, B, H])``."""
        steps, batch = x.shape[:2]
        gi_all = self.project(x)
        out = gi_all.new_empty(steps, batch, self.hidden)
        c_pre = gi_all.new_empty(steps, batch, self.hidden)
        self._fused(gi_all, out, c_pre)
        return out, c_pre


@torch.library.custom_op("evsnn::egru_scan_cpu", mutates_args=(), device_types="cpu")
def egru_scan_cpu_op(
    x: Tensor,
    c: Tensor,
    y: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None,
    bias_hh: Tensor | None,
    threshold: Tensor,
    reset: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """EGRU inference over ``x [T, B, I]`` from the state ``(c, y)`` ([`EGRURunner`][evsnn.ops.egru.cpu.EGRURunner]);
    returns ``(y_seq [T, B, H], c_T [B, H], y_T [B, H], c_pre [T, B, H])``. A custom op
    (torch.compile sees one opaque op, shapes from its fake kernel); not differentiable: a call
    that records gradients trains through [`evsnn.ops.egru.cpu_train`][evsnn.ops.egru.cpu_train]."""
    runner = EGRURunner(weight_ih, weight_hh, bias_ih, bias_hh, threshold, reset=reset)
    runner.load(EGRUState(c, y))
    y_seq, c_pre = runner.run(x)
    c_final, y_final = runner.state()
    return y_seq, c_final, y_final, c_pre


@egru_scan_cpu_op.register_fake
def _(x, c, y, weight_ih, weight_hh, bias_ih, bias_hh, threshold, reset):
    # The runner computes in the weights' dtype (float32 for a bfloat16/float16 layer, SPEC §6).
    steps, batch = x.shape[:2]
    hidden = weight_hh.shape[1]
    dtype = state_dtype(weight_ih.dtype)
    seq = x.new_empty(steps, batch, hidden, dtype=dtype)
    return seq, c.new_empty(batch, hidden, dtype=dtype), y.new_empty(batch, hidden, dtype=dtype), torch.empty_like(seq)


def egru_scan_cpu(
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
    [`evsnn.functional.egru_scan`][evsnn.functional.egru_scan] (SPEC §3). Training runs the fused numba kernels of
    [`evsnn.ops.egru.cpu_train`][evsnn.ops.egru.cpu_train] (zoneout included); inference refuses zoneout
    (``ValueError``)."""
    if reset not in RESETS:
        raise ValueError(f"reset must be one of {RESETS}, got {reset!r}")
    _check_surrogate(surrogate)
    require_numba("the cpu_event egru scan")
    _check_cpu_tensors("egru", x, weight_ih, weight_hh, threshold)
    check_steps("the cpu_event egru scan", x)
    if state is None:
        state = egru_initial_state(x.shape[1], weight_hh.shape[1], x)
    params = (x, state, weight_ih, weight_hh, bias_ih, bias_hh, threshold)
    if _grad_needed(*params):
        from .cpu_train import egru_train_scan  # numba's training kernels load on this path only

        return egru_train_scan(*params, reset=reset, surrogate=surrogate, zoneout=zoneout, training=training)
    if zoneout != 0.0:
        raise ValueError(f"the cpu_event EGRU implements zoneout only in training, got zoneout={zoneout}")
    # Called through torch.ops: Dynamo keeps an op overload opaque (it would trace into the Python
    # function).
    y, c, y_final, c_pre = torch.ops.evsnn.egru_scan_cpu(
        x, *state, weight_ih, weight_hh, bias_ih, bias_hh, threshold, reset
    )
    return y, EGRUState(c, y_final), EGRUTrace(c_pre)


def _training_traced(*, surrogate: Surrogate = _EGRU_SURROGATE, zoneout: float = 0.0, **_: object) -> bool:
    """Whether `egru_scan_cpu` trains through its custom ops (torch.compile traces them), not
    through the autograd node of a surrogate without kernel form (which breaks the graph)."""
    from ..cpu_surrogate import surrogate_args  # imports numba: on this path only

    return surrogate_args(surrogate) is not None and 0.0 <= zoneout < 1.0


egru_scan_cpu.traced_training = _training_traced
