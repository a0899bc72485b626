"""DeltaGRU and DeltaLSTM on the ``"cpu_event"`` backend (SPEC §4): the inference runners (numba loops)
and the scans, which train with the fused kernels of [`evsnn.ops.delta.cpu_train`][evsnn.ops.delta.cpu_train]; same
results as `evsnn.functional.delta`."""

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
    delta_gru_initial_state,
    delta_lstm_initial_state,
)
from ...functional.precision import state_dtype
from ..cpu_common import (
    _check_cpu_tensors,
    _check_same_dtype,
    _expand_theta,
    _full,
    _grad_needed,
    _np,
    _upcast_low,
    check_cpu,
    numba_jit,
    require_numba,
)
from ..cpu_vecmath import install, sigmoid, tanh

__all__ = [
    "DeltaGRURunner",
    "DeltaLSTMRunner",
    "delta_gru_scan_cpu",
    "delta_lstm_scan_cpu",
    "delta_gru_scan_cpu_op",
    "delta_lstm_scan_cpu_op",
    "check_cpu",
    "kernels_available",
]

# --------------------------------------------------------------------------------------------
# Fused inference loops (numba)
# --------------------------------------------------------------------------------------------
# At B = 1 a torch op costs a few µs of dispatch whatever its size, and one recurrent step
# written in torch ops needs ~15 of them (≈ 75 µs at any activity, against ≈ 350-600 µs for a
# whole ``nn.GRU`` step at H = 1024). These plain-Python loops, compiled once by numba,
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


def kernels_available() -> bool:
    """Whether the numba inference loops can run (numba installed: the ``cpu`` extra)."""
    return _kernels() is not None


class _DeltaRunner:
    """Inference-only delta-cell stepper shared by DeltaGRU and DeltaLSTM.

    Input and hidden are encoded together as ``s = [x_t; h_{t−1}]`` against the memory
    ``ŝ = [x̂; ĥ]`` and thresholds ``[Θ_x; Θ_h]``; row gathers of ``W_ihᵀ`` and ``W_hhᵀ`` over
    the nonzero deltas update the accumulators ``M``; needs numba.

    `run` encodes a block
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
    ):
        require_numba(type(self).__name__)
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
        out = x.new_empty(steps, batch, self.hidden)
        deltas = x.new_empty(steps, batch, self.input_size + self.hidden)
        dx = x.new_empty(min(steps, self.block), batch, self.input_size)
        for start in range(0, steps, self.block):
            part = slice(start, start + self.block)
            n = min(self.block, steps - start)
            self._fused(x[part], out[part], deltas[part], dx[:n])
        return out, deltas

    def step(self, x: Tensor) -> Tensor:
        """One step on ``x [B, I]``; returns ``h_t`` (a new tensor)."""
        x = _upcast_low(x, self.wx.dtype)
        _check_same_dtype("delta cell input", self.wx, x)
        # numpy in and out: a torch op costs µs of dispatch at B = 1, the whole step ~100 µs
        batch = x.shape[0]
        xd = (x.detach() if x.requires_grad else x).contiguous().numpy().reshape(1, batch, -1)
        out = np.empty((1, batch, self.hidden), dtype=xd.dtype)
        self._loop(self._no_gx, xd, out, self._d_step)
        return torch.from_numpy(out[0])


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


def _trace(deltas: Tensor, n_in: int) -> tuple[Tensor, Tensor]:
    return deltas[..., :n_in].contiguous(), deltas[..., n_in:].contiguous()


@torch.library.custom_op("evsnn::delta_gru_scan_cpu", mutates_args=(), device_types="cpu")
def delta_gru_scan_cpu_op(
    x: Tensor,
    h: Tensor,
    x_hat: Tensor,
    h_hat: Tensor,
    m: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None,
    bias_hh: Tensor | None,
    theta_x: Tensor,
    theta_h: Tensor,
    delta_rule: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """DeltaGRU inference over ``x [T, B, I]`` from ``(h, x̂, ĥ, M)`` ([`DeltaGRURunner`][evsnn.ops.delta.cpu.DeltaGRURunner]);
    returns ``(h_seq [T, B, H], h_T, x̂_T, ĥ_T, M_T, Δx [T, B, I], Δh [T, B, H])``. A custom op
    (torch.compile sees one opaque op, shapes from its fake kernel); not differentiable: a call
    that records gradients trains through [`evsnn.ops.delta.cpu_train`][evsnn.ops.delta.cpu_train]."""
    runner = DeltaGRURunner(
        weight_ih, weight_hh, bias_ih, bias_hh, theta_x=theta_x, theta_h=theta_h, delta_rule=delta_rule
    )
    runner.load(DeltaGRUState(h, x_hat, h_hat, m))
    out, deltas = runner.run(x)
    return (out, *runner.state(), *_trace(deltas, weight_ih.shape[1]))


@torch.library.custom_op("evsnn::delta_lstm_scan_cpu", mutates_args=(), device_types="cpu")
def delta_lstm_scan_cpu_op(
    x: Tensor,
    h: Tensor,
    c: Tensor,
    x_hat: Tensor,
    h_hat: Tensor,
    m: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None,
    bias_hh: Tensor | None,
    theta_x: Tensor,
    theta_h: Tensor,
    delta_rule: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """DeltaLSTM inference over ``x [T, B, I]`` from ``(h, c, x̂, ĥ, M)`` ([`DeltaLSTMRunner`][evsnn.ops.delta.cpu.DeltaLSTMRunner]);
    returns ``(h_seq [T, B, H], h_T, c_T, x̂_T, ĥ_T, M_T, Δx [T, B, I], Δh [T, B, H])``; as
    `delta_gru_scan_cpu_op`."""
    runner = DeltaLSTMRunner(
        weight_ih, weight_hh, bias_ih, bias_hh, theta_x=theta_x, theta_h=theta_h, delta_rule=delta_rule
    )
    runner.load(DeltaLSTMState(h, c, x_hat, h_hat, m))
    out, deltas = runner.run(x)
    return (out, *runner.state(), *_trace(deltas, weight_ih.shape[1]))


def _fake(x: Tensor, state: tuple[Tensor, ...], weight_ih: Tensor, weight_hh: Tensor) -> tuple[Tensor, ...]:
    # The runners compute in the weights' dtype (float32 for a bfloat16/float16 layer, SPEC §6);
    # the final state has the shapes of the initial one.
    steps, batch, n_in = x.shape
    dtype = state_dtype(weight_ih.dtype)
    out = x.new_empty(steps, batch, weight_hh.shape[1], dtype=dtype)
    final = [t.new_empty(t.shape, dtype=dtype) for t in state]
    return out, *final, x.new_empty(steps, batch, n_in, dtype=dtype), torch.empty_like(out)


@delta_gru_scan_cpu_op.register_fake
def _(x, h, x_hat, h_hat, m, weight_ih, weight_hh, bias_ih, bias_hh, theta_x, theta_h, delta_rule):
    return _fake(x, (h, x_hat, h_hat, m), weight_ih, weight_hh)


@delta_lstm_scan_cpu_op.register_fake
def _(x, h, c, x_hat, h_hat, m, weight_ih, weight_hh, bias_ih, bias_hh, theta_x, theta_h, delta_rule):
    return _fake(x, (h, c, x_hat, h_hat, m), weight_ih, weight_hh)


def _delta_scan(x, state, weight_ih, weight_hh, bias_ih, bias_hh, theta_x, theta_h, gru: bool, delta_rule: str):
    family = "delta_gru" if gru else "delta_lstm"
    check_delta_rule(delta_rule)
    require_numba(f"the cpu_event {family} scan")
    _check_cpu_tensors(family, x, weight_ih, weight_hh)
    check_steps(f"the cpu_event {family} scan", x)
    if state is None:
        init = delta_gru_initial_state if gru else delta_lstm_initial_state
        state = init(x.shape[1], weight_ih.shape[1], weight_hh.shape[1], bias_ih, bias_hh, x)
    if _grad_needed(x, state, weight_ih, weight_hh, bias_ih, bias_hh, theta_x, theta_h):
        return _delta_train(x, state, weight_ih, weight_hh, bias_ih, bias_hh, theta_x, theta_h, gru, delta_rule)
    # Called through torch.ops (Dynamo keeps an op overload opaque; it would trace into the Python
    # function); the op takes the thresholds as tensors.
    like = x.new_zeros((), dtype=state_dtype(weight_ih.dtype))
    theta_x = _expand_theta(theta_x, weight_ih.shape[1], "theta_x", like)
    theta_h = _expand_theta(theta_h, weight_hh.shape[1], "theta_h", like)
    op = torch.ops.evsnn.delta_gru_scan_cpu if gru else torch.ops.evsnn.delta_lstm_scan_cpu
    out, *final, dx, dh = op(x, *state, weight_ih, weight_hh, bias_ih, bias_hh, theta_x, theta_h, delta_rule)
    return out, (DeltaGRUState if gru else DeltaLSTMState)(*final), DeltaTrace(dx, dh)


def _delta_train(x, state, weight_ih, weight_hh, bias_ih, bias_hh, theta_x, theta_h, gru: bool, delta_rule: str):
    # The fused event-sparse forward and backward: the custom ops evsnn::delta_train_cpu_fwd/_bwd,
    # which torch.compile keeps in its graph. numba's training kernels load on this path only.
    from . import cpu_train

    train_scan = cpu_train.delta_gru_train_scan if gru else cpu_train.delta_lstm_train_scan
    return train_scan(
        x, state, weight_ih, weight_hh, bias_ih, bias_hh, theta_x=theta_x, theta_h=theta_h, delta_rule=delta_rule
    )


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
