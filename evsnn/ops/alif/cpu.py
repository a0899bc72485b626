"""ALIF on the ``"cpu_event"`` backend (SPEC §2): the inference runner and the scan (numba kernels of
[`evsnn.ops.alif.cpu_train`][evsnn.ops.alif.cpu_train] in inference and training); same results as
[`evsnn.functional.alif_scan`][evsnn.functional.alif_scan]."""

from __future__ import annotations

import torch
from torch import Tensor

from ...functional.alif import ALIFState, ALIFTrace, alif_initial_state, decay
from ...functional.checks import check_steps
from ...functional.precision import state_dtype
from ...surrogate import MultiGaussian, Surrogate
from ..cpu_common import (
    _check_cpu_tensors,
    _check_same_dtype,
    _check_surrogate,
    _full,
    _grad_needed,
    _np,
    _upcast_low,
    check_cpu,
    require_numba,
)
from . import cpu_train

__all__ = ["ALIFRunner", "alif_scan_cpu", "alif_scan_cpu_op", "check_cpu", "kernels_available"]

_ALIF_SURROGATE = MultiGaussian()


def kernels_available() -> bool:
    """Whether the numba kernels this backend runs can run (numba installed: the ``cpu`` extra);
    ALIF's inference loop sits with its training kernels in [`evsnn.ops.alif.cpu_train`][evsnn.ops.alif.cpu_train]."""
    return cpu_train.kernels_available()


class ALIFRunner:
    """Inference-only ALIF stepper. ``step(current)`` takes ``I_t = W_in x_t + b_in``
    (``[B, N]``) and returns ``(s_t, v_t, B_t)``; the recurrent input ``W_rec s_{t−1}`` reads
    only the rows of spiking units. Runs the fused loop
    ([`evsnn.ops.alif.cpu_train.alif_loop`][evsnn.ops.alif.cpu_train.alif_loop], one call per step or chunk); needs numba."""

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
        require_numba("ALIFRunner")
        with torch.no_grad():
            self.alpha = decay(_full(tau_mem))
            self.rho = decay(_full(tau_adapt))
            self.b0 = _full(b0)
            self.beta = _full(beta)
            self.table = None if weight_hh is None else _full(weight_hh).t().contiguous()
            self.bias_hh = _full(bias_hh)
            n, like = self.alpha.shape[0], self.alpha
            vectors = [torch.as_tensor(p, dtype=like.dtype).expand(n).contiguous() for p in (self.b0, self.beta)]
            self._np_args = (
                _np(like.new_zeros(0, 0) if self.table is None else self.table),
                _np(like.new_zeros(0) if self.bias_hh is None else self.bias_hh.contiguous()),
                _np(self.alpha.contiguous()),
                _np(self.rho.contiguous()),
                *(_np(v) for v in vectors),
            )
        self.v: Tensor | None = None
        self.b: Tensor | None = None
        self.s: Tensor | None = None

    @classmethod
    def from_scan_arguments(
        cls,
        *,
        tau_mem: Tensor,
        tau_adapt: Tensor,
        b0: float | Tensor,
        beta: float | Tensor,
        weight_hh: Tensor | None = None,
        bias_hh: Tensor | None = None,
        **_: object,
    ) -> "ALIFRunner":
        """A runner for what the ALIF scans take after ``(current, state)`` (the streaming
        runner of the family record; the surrogate is of no use without gradients)."""
        return cls(tau_mem=tau_mem, tau_adapt=tau_adapt, b0=b0, beta=beta, weight_hh=weight_hh, bias_hh=bias_hh)

    def stream_step(self, current: Tensor) -> Tensor:
        """The spikes of one step from ``I_t [B, N]``."""
        return self.step(current)[0]

    def stream_chunk(self, current: Tensor) -> Tensor:
        """The spikes of all steps of ``current [T, B, N]``."""
        return self.run(current)[0]

    def load(self, state: ALIFState) -> None:
        self.v, self.b, self.s = (t.detach().clone(memory_format=torch.contiguous_format) for t in state)
        _check_same_dtype("ALIF state", self.alpha, self.v, self.b, self.s)
        # The fused loop updates v, b and s in place: their numpy views stay valid.
        self._np_state = (_np(self.v), _np(self.b), _np(self.s))

    def state(self) -> ALIFState:
        return ALIFState(self.v.clone(), self.b.clone(), self.s.clone())

    def _fused(self, current: Tensor, out: Tensor, v_out: Tensor, thr_out: Tensor) -> None:
        _check_same_dtype("ALIF input", self.alpha, current)
        cpu_train.alif_loop(
            _np(current.contiguous()), *self._np_args, *self._np_state, _np(out), _np(v_out), _np(thr_out)
        )

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
        out, v_out, thr_out = (current.new_empty(current.shape) if o is None else o for o in (out, v_out, thr_out))
        self._fused(current.unsqueeze(0), out.unsqueeze(0), v_out.unsqueeze(0), thr_out.unsqueeze(0))
        return out, v_out, thr_out

    def run(self, current: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        current = _upcast_low(current, self.alpha.dtype)
        out = torch.empty_like(current)
        vs = torch.empty_like(current)
        thrs = torch.empty_like(current)
        self._fused(current, out, vs, thrs)
        return out, vs, thrs


@torch.library.custom_op("evsnn::alif_scan_cpu", mutates_args=(), device_types="cpu")
def alif_scan_cpu_op(
    current: Tensor,
    v: Tensor,
    b: Tensor,
    s: Tensor,
    tau_mem: Tensor,
    tau_adapt: Tensor,
    b0: Tensor,
    beta: Tensor,
    weight_hh: Tensor | None,
    bias_hh: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """ALIF inference over ``current [T, B, N]`` from the state ``(v, b, s)`` ([`ALIFRunner`][evsnn.ops.alif.cpu.ALIFRunner]);
    returns ``(spikes, v_T, b_T, s_T, v_seq, threshold_seq)`` (sequences ``[T, B, N]``, state
    ``[B, N]``). A custom op (torch.compile sees one opaque op, shapes from its fake kernel); not
    differentiable: a call that records gradients trains through `alif_train_scan`."""
    runner = ALIFRunner(tau_mem=tau_mem, tau_adapt=tau_adapt, b0=b0, beta=beta, weight_hh=weight_hh, bias_hh=bias_hh)
    runner.load(ALIFState(v, b, s))
    spikes, vs, thresholds = runner.run(current)
    v_final, b_final, s_final = runner.state()
    return spikes, v_final, b_final, s_final, vs, thresholds


@alif_scan_cpu_op.register_fake
def _(current, v, b, s, tau_mem, tau_adapt, b0, beta, weight_hh, bias_hh):
    # The runner computes in float32 for a bfloat16/float16 current (SPEC §6), else in its dtype.
    dtype = state_dtype(current.dtype)
    seq = current.new_empty(current.shape, dtype=dtype)
    state = [t.new_empty(current.shape[1:], dtype=dtype) for t in (v, b, s)]
    return seq, *state, torch.empty_like(seq), torch.empty_like(seq)


def alif_scan_cpu(
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
    [`evsnn.functional.alif_scan`][evsnn.functional.alif_scan] (SPEC §2). Training runs the fused kernels of
    [`evsnn.ops.alif.cpu_train`][evsnn.ops.alif.cpu_train], which evaluate a surrogate with a kernel form only
    (any other raises ``TypeError``; backend ``"torch"`` trains with it)."""
    _check_surrogate(surrogate)
    require_numba("the cpu_event alif scan")
    _check_cpu_tensors("alif", current, tau_mem, tau_adapt, weight_hh)
    check_steps("the cpu_event alif scan", current)
    if state is None:
        state = alif_initial_state(current[0], b0)
    params = (current, state, tau_mem, tau_adapt, b0, beta)
    if _grad_needed(*params, weight_hh, bias_hh):
        return cpu_train.alif_train_scan(
            current,
            state,
            tau_mem=tau_mem,
            tau_adapt=tau_adapt,
            b0=b0,
            beta=beta,
            surrogate=surrogate,
            weight_hh=weight_hh,
            bias_hh=bias_hh,
        )
    # Called through torch.ops (Dynamo keeps an op overload opaque; it would trace into the Python
    # function); the op takes b0, beta as tensors.
    dtype = state_dtype(current.dtype)
    b0, beta = (torch.as_tensor(p, dtype=dtype) if not isinstance(p, Tensor) else p for p in (b0, beta))
    spikes, v, b, s, vs, thrs = torch.ops.evsnn.alif_scan_cpu(
        current, *state, tau_mem, tau_adapt, b0, beta, weight_hh, bias_hh
    )
    return spikes, ALIFState(v, b, s), ALIFTrace(vs, thrs)
