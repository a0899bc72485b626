"""DeltaGRU and DeltaLSTM on the ``"cpu_event"`` backend (SPEC §4): the inference runners (numba loops or
torch ops) and the event-sparse differentiable scans (both cells train with the fused kernels of
[`evsnn.ops.delta.cpu_train`][evsnn.ops.delta.cpu_train] when numba is there); same results as `evsnn.functional.delta`."""

from __future__ import annotations

import functools
from types import SimpleNamespace

import numpy as np
import torch
from torch import Tensor

from ...functional.checks import check_steps
from ...functional.delta import (
    DeltaGRUState,
    DeltaLSTMState,
    DeltaTrace,
    check_delta_rule,
    delta_accumulator_increment,
    delta_gru_gates,
    delta_gru_initial_state,
    delta_lstm_gates,
    delta_lstm_initial_state,
)
from ...functional.precision import state_dtype
from ..compile_marks import compile_opaque
from ..cpu_common import (
    _check_cpu_tensors,
    _check_same_dtype,
    _expand_theta,
    _full,
    _grad_needed,
    _np,
    _pick_kernel,
    _RowBag,
    _upcast_low,
    check_cpu,
    event_matmul,
    numba_jit,
)
from ..cpu_vecmath import install, sigmoid, tanh

__all__ = ["DeltaGRURunner", "DeltaLSTMRunner", "delta_gru_scan_cpu", "delta_lstm_scan_cpu", "check_cpu"]

# --------------------------------------------------------------------------------------------
# Fused inference loops (numba)
# --------------------------------------------------------------------------------------------
# At B = 1 a torch op costs a few µs of dispatch whatever its size, and one recurrent step of
# the torch-op runners below needs ~15 of them (≈ 75 µs at any activity, against ≈ 350-600 µs
# for a whole ``nn.GRU`` step at H = 1024). These plain-Python loops, compiled once by numba,
# run *all* steps of a chunk in one call: the gather of active rows and the gate math are
# fused, nothing is allocated per step, and the cost per step is the active rows read plus
# O(H) pointwise work. They compute the same equations as the reference scans, in the arrays'
# dtype, the gate math as one loop over the units that compiles to SIMD code (with the
# vectorisable sigmoid and tanh of evsnn.ops.cpu_vecmath).


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


def _delta_loop(gx, xd, wx, wh, theta, s_hat, h, m, c, out_h, out_d, idx, gru, inclusive):  # pragma: no cover - numba
    """DeltaGRU (``gru``) or DeltaLSTM (SPEC §4) over ``T`` steps of ``xd [T, B, I]``.

    Two ways in for the input: with ``gx [T, B, G·H] = W_ih Δx_t`` precomputed (one GEMM per
    chunk), ``xd`` holds the encoded deltas ``Δx``; with ``gx.shape[0] == 0`` (the step path: one
    call per step), ``xd`` is the raw input ``x``, encoded here against ``x̂`` and the rows of
    ``wx = W_ihᵀ`` of nonzero ``Δx`` gathered. Per step: the deltas of ``s = [x_t; h_{t−1}]``
    against ``ŝ = s_hat [B, I + H]`` (thresholds ``theta [I + H]``) — of ``h_{t−1}`` only when
    ``Δx`` came encoded —, ``M += W_ih Δx_t + W_hh Δh`` reading only rows ``wh = W_hhᵀ [H, G·H]``
    of nonzero ``Δh``, gates, ``h_t``. GRU accumulators ``M [B, 4H]`` are ``(r, z, nx, nh)``:
    input rows feed ``r, z, nx``, hidden rows ``r, z, nh``. ``ŝ, h, M, c`` are the state,
    updated in place; ``out_h [T, B, H]`` and ``out_d [T, B, I + H]`` (``[Δx; Δh]``) receive
    each step's results. ``idx [I + H]`` (int64) is scratch.
    """
    steps, batch, n_in = xd.shape
    hs = h.shape[1]
    x_cols = wx.shape[1]
    one = np.ones(1, dtype=h.dtype)[0]
    encode_x = gx.shape[0] == 0
    first = 0 if encode_x else n_in
    for b in range(batch):
        for t in range(steps):
            if not encode_x:
                for i in range(n_in):
                    out_d[t, b, i] = xd[t, b, i]
                for j in range(x_cols):
                    m[b, j] += gx[t, b, j]
            n_act = 0
            for k in range(first, n_in + hs):
                d = (xd[t, b, k] if k < n_in else h[b, k - n_in]) - s_hat[b, k]
                # "not ≤" / "not <" also pass a NaN difference on, as the reference's Δ = diff·0
                # does; d != 0 drops the zero deltas the inclusive rule admits at Θ = 0.
                if (not abs(d) < theta[k] and d != 0) if inclusive else not abs(d) <= theta[k]:
                    out_d[t, b, k] = d
                    s_hat[b, k] += d
                    idx[n_act] = k
                    n_act += 1
                else:
                    out_d[t, b, k] = 0.0
            for a in range(n_act):
                k = idx[a]
                d = out_d[t, b, k]
                if k < n_in:
                    row = wx[k]
                    for j in range(x_cols):
                        m[b, j] += d * row[j]
                    continue
                row = wh[k - n_in]
                if gru:
                    for j in range(2 * hs):
                        m[b, j] += d * row[j]
                    for j in range(hs):
                        m[b, 3 * hs + j] += d * row[2 * hs + j]
                else:
                    for j in range(4 * hs):
                        m[b, j] += d * row[j]
            if gru:
                for j in range(hs):
                    r = sigmoid(m[b, j])
                    z = sigmoid(m[b, hs + j])
                    n = tanh(m[b, 2 * hs + j] + r * m[b, 3 * hs + j])
                    h_j = (one - z) * n + z * h[b, j]
                    h[b, j] = h_j
                    out_h[t, b, j] = h_j
            else:
                for j in range(hs):
                    gate_i = sigmoid(m[b, j])
                    gate_f = sigmoid(m[b, hs + j])
                    gate_o = sigmoid(m[b, 3 * hs + j])
                    c_j = gate_f * c[b, j] + gate_i * tanh(m[b, 2 * hs + j])
                    c[b, j] = c_j
                    h_j = gate_o * tanh(c_j)
                    h[b, j] = h_j
                    out_h[t, b, j] = h_j


@functools.cache
def _kernels() -> SimpleNamespace | None:
    """The compiled loops, or ``None`` without numba (compiled on first use)."""
    jit = numba_jit()
    if jit is None:
        return None
    import numba

    install()  # the vectorisable sigmoid/tanh the loops call

    # Numpy's error model (no branch guards a division) and no reassociation where the
    # vectorisable exp is inlined: the gate loops over the units compile to SIMD code.
    gates = numba.njit(cache=True, nogil=True, fastmath={"contract"}, error_model="numpy")
    return SimpleNamespace(encode=jit(_delta_encode_loop), delta=gates(_delta_loop))


def _delta_increment(gx: Tensor, gh: Tensor, gru: bool) -> Tensor:
    """Increments of the accumulators ``M [B, 4H]`` from ``gx = W_ih Δx`` and ``gh = W_hh Δh``,
    in the slot layout of [`delta_accumulator_increment`][evsnn.functional.delta.delta_accumulator_increment]."""
    return delta_accumulator_increment(gx, gh, gru)


def _joint_delta_table(table_x: Tensor, table_h: Tensor, gru: bool) -> Tensor:
    """``[W_ih; W_hh]ᵀ`` as one table ``[I + H, 4H]`` whose rows give the accumulator increments
    of ``[Δx; Δh]`` in one product (SPEC §4), laid out by `_delta_increment`. For the GRU
    each block has a zero part, so one product is exact for finite deltas only."""
    rows_x = _delta_increment(table_x, table_h.new_zeros(table_x.shape[0], table_h.shape[1]), gru)
    rows_h = _delta_increment(table_x.new_zeros(table_h.shape[0], table_x.shape[1]), table_h, gru)
    return torch.cat([rows_x, rows_h], dim=0)


class _DeltaRunner:
    """Inference-only delta-cell stepper shared by DeltaGRU and DeltaLSTM.

    Input and hidden are encoded together as ``s = [x_t; h_{t−1}]`` against the memory
    ``ŝ = [x̂; ĥ]`` and thresholds ``[Θ_x; Θ_h]``; row gathers of ``W_ihᵀ`` and ``W_hhᵀ`` over
    the nonzero deltas update the accumulators ``M`` (``kernel="torch"``).

    With ``kernel="numba"`` (the default where numba is installed) `run` encodes a block
    of up to `block` steps' input deltas first (they depend on ``x`` only), turns them into
    ``W_ih Δx_t`` with one dense GEMM for the block (``Δx`` is often denser than ``Δh``, and one
    batched GEMM beats per-step row gathers of it), then runs the fused loop
    `_delta_loop`, which reads only the rows of ``W_hhᵀ`` of nonzero ``Δh``.
    `step` is one call of that loop, which encodes ``x_t`` itself and gathers the rows of
    nonzero ``Δx`` instead (no torch op, no allocation besides ``h_t``). The sums are grouped
    differently from the reference's, so results agree to rounding.
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
                    _np(self.theta),
                )
                self._no_gx = np.empty((0, 1, self.wx.shape[1]), dtype=self._np_args[0].dtype)
                self._idx = np.empty(self.input_size + self.hidden, dtype=np.int64)
                self._kernel = _kernels().delta
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

    def _fused(self, x: Tensor, out: Tensor, deltas: Tensor, dx: Tensor) -> None:
        """Steps of ``x [t, B, I]`` through the numba loops: the input deltas encoded into ``dx``
        and projected by one GEMM, then the recurrent loop; writes ``h`` and ``[Δx; Δh]``."""
        _check_same_dtype("delta cell input", self.wx, x)
        kernels = _kernels()
        _, _, theta_x, _ = self._np_args
        s_hat = self._np_state[0]
        dx_np = _np(dx)
        # x̂ is a view into ŝ: updated in place
        kernels.encode(_np(x.contiguous()), s_hat[:, : self.input_size], theta_x, dx_np, self.inclusive)
        self._loop(_np(torch.matmul(dx, self.wx)), dx_np, _np(out), _np(deltas))

    def _loop(self, gx: np.ndarray, xd: np.ndarray, out: np.ndarray, deltas: np.ndarray) -> None:
        wx, wh, _, theta = self._np_args
        s_hat, h, m, c = self._np_state
        self._kernel(gx, xd, wx, wh, theta, s_hat, h, m, c, out, deltas, self._idx, self.gru, self.inclusive)

    def _load_fused(self) -> None:
        if self.kernel != "numba":
            return
        _check_same_dtype("delta cell state", self.wx, self.h, self.s_hat, self.m)
        self.h = self.h.contiguous()
        c = np.empty((1, 1), dtype=_np(self.h).dtype) if self.c is None else _np(self.c)
        # The loops update ŝ, h, M and c in place: their numpy views stay valid.
        self._np_state = (_np(self.s_hat), _np(self.h), _np(self.m), c)
        self._d_step = np.empty((1, self.h.shape[0], self.input_size + self.hidden), dtype=c.dtype)

    @classmethod
    def from_scan_arguments(
        cls,
        weight_ih: Tensor,
        weight_hh: Tensor,
        bias_ih: Tensor | None,
        bias_hh: Tensor | None,
        *,
        theta_x: float | Tensor = 0.0,
        theta_h: float | Tensor = 0.0,
        delta_rule: str = "strict",
        **_: object,
    ) -> "_DeltaRunner":
        """A runner for what the delta scans take after ``(x, state)`` (the streaming runner of
        the family record; dispatch does not pick this backend with ``fixed_point``)."""
        return cls(weight_ih, weight_hh, bias_ih, bias_hh, theta_x=theta_x, theta_h=theta_h, delta_rule=delta_rule)

    def stream_step(self, x: Tensor) -> Tensor:
        """``h_t`` of one step on ``x_t [B, I]``."""
        return self.step(x)

    def stream_chunk(self, x: Tensor) -> Tensor:
        """``h`` of all steps of ``x [T, B, I]``."""
        return self.run(x)[0]

    def run(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """All steps of ``x [T, B, I]``; returns ``(h [T, B, H], deltas [T, B, I + H])``."""
        x = _upcast_low(x, self.wx.dtype)  # a low-precision layer's input (SPEC §6)
        steps, batch = x.shape[:2]
        if self.kernel == "numba":
            out = x.new_empty(steps, batch, self.hidden)
            deltas = x.new_empty(steps, batch, self.input_size + self.hidden)
            dx = x.new_empty(min(steps, self.block), batch, self.input_size)
            for start in range(0, steps, self.block):
                part = slice(start, start + self.block)
                n = min(self.block, steps - start)
                self._fused(x[part], out[part], deltas[part], dx[:n])
            return out, deltas
        s_all = x.new_empty(steps, batch, self.input_size + self.hidden)
        s_all[..., : self.input_size] = x
        out = x.new_empty(steps, batch, self.hidden)
        deltas = torch.empty_like(s_all)
        for t in range(steps):
            s_all[t, :, self.input_size :] = self.h
            self._step_encoded(s_all[t], out[t], deltas[t])
        return out, deltas

    def step(self, x: Tensor) -> Tensor:
        """One step on ``x [B, I]``; returns ``h_t`` (a new tensor)."""
        x = _upcast_low(x, self.wx.dtype)
        if self.kernel == "numba":
            _check_same_dtype("delta cell input", self.wx, x)
            # numpy in and out: a torch op costs µs of dispatch at B = 1, the whole step ~100 µs
            batch = x.shape[0]
            xd = (x.detach() if x.requires_grad else x).contiguous().numpy().reshape(1, batch, -1)
            out = np.empty((1, batch, self.hidden), dtype=xd.dtype)
            self._loop(self._no_gx, xd, out, self._d_step)
            return torch.from_numpy(out[0])
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
    check_delta_rule(delta_rule)
    _check_cpu_tensors(family, x, weight_ih, weight_hh)
    check_steps(f"the cpu_event {family} scan", x)
    if state is None:
        init = delta_gru_initial_state if gru else delta_lstm_initial_state
        state = init(x.shape[1], weight_ih.shape[1], weight_hh.shape[1], bias_ih, bias_hh, x)
    if _grad_needed(x, state, weight_ih, weight_hh, bias_ih, bias_hh, theta_x, theta_h):
        return _delta_train(x, state, weight_ih, weight_hh, bias_ih, bias_hh, theta_x, theta_h, gru, delta_rule)
    # evsnn::delta_gru_scan_cpu / delta_lstm_scan_cpu (evsnn/ops/delta/op.py, registered on import of
    # this package): one opaque op for torch.compile; the thresholds go in as tensors.
    like = x.new_zeros((), dtype=state_dtype(weight_ih.dtype))
    theta_x = _expand_theta(theta_x, weight_ih.shape[1], "theta_x", like)
    theta_h = _expand_theta(theta_h, weight_hh.shape[1], "theta_h", like)
    op = torch.ops.evsnn.delta_gru_scan_cpu if gru else torch.ops.evsnn.delta_lstm_scan_cpu
    out, *final, dx, dh = op(x, *state, weight_ih, weight_hh, bias_ih, bias_hh, theta_x, theta_h, delta_rule)
    return out, (DeltaGRUState if gru else DeltaLSTMState)(*final), DeltaTrace(dx, dh)


def _delta_train(x, state, weight_ih, weight_hh, bias_ih, bias_hh, theta_x, theta_h, gru: bool, delta_rule: str):
    inclusive = check_delta_rule(delta_rule) == "inclusive"
    if _pick_kernel("auto") == "numba":
        # The fused event-sparse forward and backward, measured faster than the torch-op loop
        # below for both cells (docs/benchmarks.md, "CPU training of the delta cells"). The
        # kernels are the custom ops evsnn::delta_train_cpu_fwd/_bwd (evsnn/ops/delta/op.py):
        # torch.compile keeps them in its graph.
        from . import cpu_train

        train_scan = cpu_train.delta_gru_train_scan if gru else cpu_train.delta_lstm_train_scan
        return train_scan(
            x, state, weight_ih, weight_hh, bias_ih, bias_hh, theta_x=theta_x, theta_h=theta_h, delta_rule=delta_rule
        )
    return _delta_autograd_opaque(x, state, weight_ih, weight_hh, theta_x, theta_h, gru, inclusive)


# The torch-op training loop gathers rows into data-dependent shapes (and tests its deltas for
# finiteness on the host): a compiled model runs it eagerly behind one graph break here.
_delta_autograd_opaque = compile_opaque(_delta_autograd)


def delta_gru_scan_cpu(
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
    [`evsnn.functional.delta_gru_scan`][evsnn.functional.delta_gru_scan] (SPEC §4)."""
    return _delta_scan(
        x, state, weight_ih, weight_hh, bias_ih, bias_hh, theta_x, theta_h, gru=True, delta_rule=delta_rule
    )


def delta_lstm_scan_cpu(
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
    [`evsnn.functional.delta_lstm_scan`][evsnn.functional.delta_lstm_scan] (SPEC §4)."""
    return _delta_scan(
        x, state, weight_ih, weight_hh, bias_ih, bias_hh, theta_x, theta_h, gru=False, delta_rule=delta_rule
    )


def _training_traced(**_: object) -> bool:
    """Whether the delta scans train through their custom ops (torch.compile traces them), not
    through the torch-op loop (which breaks the graph)."""
    return _pick_kernel("auto") == "numba"


delta_gru_scan_cpu.traced_training = _training_traced
delta_lstm_scan_cpu.traced_training = _training_traced
