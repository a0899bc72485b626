"""ALIF on the ``"cpu_event"`` backend (SPEC §2): the inference runner and the event-sparse
differentiable scan; same results as [`evsnn.functional.alif_scan`][evsnn.functional.alif_scan]."""

from __future__ import annotations

import torch
from torch import Tensor

from ...functional.alif import ALIFState, ALIFTrace, alif_dynamics, alif_initial_state, decay
from ...functional.checks import check_steps
from ...functional.precision import state_dtype
from ...surrogate import MultiGaussian, Surrogate
from ..compile_marks import compile_opaque
from ..cpu_common import (
    DTYPES,
    _check_cpu_tensors,
    _check_same_dtype,
    _check_surrogate,
    _full,
    _grad_needed,
    _np,
    _pick_kernel,
    _RowBag,
    _upcast_low,
    event_matmul,
)
from ..cpu_common import check_cpu as _check_cpu_common
from . import cpu_kernels

__all__ = ["ALIFRunner", "alif_scan_cpu", "check_cpu"]

_ALIF_SURROGATE = MultiGaussian()


class ALIFRunner:
    """Inference-only ALIF stepper. ``step(current)`` takes ``I_t = W_in x_t + b_in``
    (``[B, N]``) and returns ``(s_t, v_t, B_t)``; the recurrent input ``W_rec s_{t−1}`` reads
    only the rows of spiking units. ``kernel``: ``"numba"`` runs the fused loop
    ([`evsnn.ops.alif.cpu_kernels.alif_loop`][evsnn.ops.alif.cpu_kernels.alif_loop], one call per step or chunk), ``"torch"`` a
    loop of torch ops, ``"auto"`` numba when installed; `kernel` says which runs."""

    def __init__(
        self,
        *,
        tau_mem: Tensor,
        tau_adapt: Tensor,
        b0: float | Tensor = 0.01,
        beta: float | Tensor = 1.8,
        weight_hh: Tensor | None = None,
        bias_hh: Tensor | None = None,
        kernel: str = "auto",
    ):
        self.kernel = _pick_kernel(kernel)
        with torch.no_grad():
            self.alpha = decay(_full(tau_mem))
            self.rho = decay(_full(tau_adapt))
            self.one_minus_alpha = 1.0 - self.alpha
            self.one_minus_rho = 1.0 - self.rho
            self.b0 = _full(b0)
            self.beta = _full(beta)
            self.table = None if weight_hh is None else _full(weight_hh).t().contiguous()
            self.bias_hh = _full(bias_hh)
            if self.kernel == "numba":
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
        if self.kernel == "numba":
            self.v, self.b, self.s = (t.detach().clone(memory_format=torch.contiguous_format) for t in state)
            _check_same_dtype("ALIF state", self.alpha, self.v, self.b, self.s)
            # The fused loop updates v, b and s in place: their numpy views stay valid.
            self._np_state = (_np(self.v), _np(self.b), _np(self.s))
            return
        self.v, self.b, self.s = (t.detach().clone() for t in state)
        self.active = self.s != 0
        # A supplied s_0 may hold any values; spikes made here are exactly 0/1 and need no weights.
        self.binary = False
        if self.table is not None:
            self.bag = _RowBag(self.table, self.s.shape[0])

    def state(self) -> ALIFState:
        return ALIFState(self.v.clone(), self.b.clone(), self.s.clone())

    def _fused(self, current: Tensor, out: Tensor, v_out: Tensor, thr_out: Tensor) -> None:
        _check_same_dtype("ALIF input", self.alpha, current)
        cpu_kernels.alif_loop(
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
        if self.kernel == "numba":
            out, v_out, thr_out = (current.new_empty(current.shape) if o is None else o for o in (out, v_out, thr_out))
            self._fused(current.unsqueeze(0), out.unsqueeze(0), v_out.unsqueeze(0), thr_out.unsqueeze(0))
            return out, v_out, thr_out
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
        if self.kernel == "numba":
            self._fused(current, out, vs, thrs)
            return out, vs, thrs
        for t in range(current.shape[0]):
            self.step(current[t], out[t], vs[t], thrs[t])
        return out, vs, thrs


def _fused_training_reason(surrogate: Surrogate | None) -> str | None:
    """``None`` when the fused training kernels ([`evsnn.ops.alif.cpu_kernels`][evsnn.ops.alif.cpu_kernels]) can run,
    else why not (the torch-op loop then runs, which the reference beat at every measured shape)."""
    if _pick_kernel("auto") != "numba":
        return (
            "ALIF's crossover (evsnn.ops.auto) was measured with the fused numba kernels, which do not run "
            "(numba missing or EVSNN_CPU_KERNEL=torch)"
        )
    return None if surrogate is None else cpu_kernels.surrogate_reason(surrogate)


def check_cpu(*, training: bool | None = None, auto: bool | None = None, surrogate=None, **config) -> str | None:
    """[`evsnn.ops.cpu_common.check_cpu`][evsnn.ops.cpu_common.check_cpu]; under ``"auto"`` it also declines a call the fused
    kernels cannot run, where the measured crossover does not hold (in training the torch-op loop is
    slower than the reference)."""
    reason = _check_cpu_common(training=training, auto=auto, surrogate=surrogate, **config)
    if reason is None and auto is not False:
        reason = _fused_training_reason(surrogate if training else None)
    return reason


def _alif_training(current, state, tau_mem, tau_adapt, b0, beta, surrogate, weight_hh, bias_hh):
    """The fused kernels for a call they can run (one dtype, float32/float64, a surrogate with a
    kernel spec, numba), else the differentiable torch-op loop (a low-precision current, a
    custom surrogate, ``EVSNN_CPU_KERNEL=torch``)."""
    tensors = [current, *state, tau_mem, tau_adapt, weight_hh, bias_hh, b0, beta]
    one_dtype = all(not isinstance(t, Tensor) or t.dtype == current.dtype for t in tensors)
    if one_dtype and current.dtype in DTYPES and _fused_training_reason(surrogate) is None:
        return cpu_kernels.alif_train_scan(
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
    return _alif_autograd(current, state, tau_mem, tau_adapt, b0, beta, surrogate, weight_hh, bias_hh)


# The fused kernels are the custom ops evsnn::alif_train_cpu_fwd/_bwd (evsnn/ops/alif/op.py), which
# torch.compile keeps in its graph. This torch-op loop gathers rows into data-dependent shapes: a
# compiled model runs it eagerly behind one graph break here.
@compile_opaque
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
    [`evsnn.functional.alif_scan`][evsnn.functional.alif_scan] (SPEC §2)."""
    _check_surrogate(surrogate)
    _check_cpu_tensors("alif", current, tau_mem, tau_adapt, weight_hh)
    check_steps("the cpu_event alif scan", current)
    if state is None:
        state = alif_initial_state(current[0], b0)
    params = (current, state, tau_mem, tau_adapt, b0, beta)
    if _grad_needed(*params, weight_hh, bias_hh):
        return _alif_training(current, state, tau_mem, tau_adapt, b0, beta, surrogate, weight_hh, bias_hh)
    # evsnn::alif_scan_cpu (evsnn/ops/alif/op.py, registered on import of this package): one opaque
    # op for torch.compile; the scalars b0, beta go in as tensors.
    dtype = state_dtype(current.dtype)
    b0, beta = (torch.as_tensor(p, dtype=dtype) if not isinstance(p, Tensor) else p for p in (b0, beta))
    spikes, v, b, s, vs, thrs = torch.ops.evsnn.alif_scan_cpu(
        current, *state, tau_mem, tau_adapt, b0, beta, weight_hh, bias_hh
    )
    return spikes, ALIFState(v, b, s), ALIFTrace(vs, thrs)


def _training_traced(*, surrogate: Surrogate = _ALIF_SURROGATE, dtype: torch.dtype | None = None, **_: object) -> bool:
    """Whether `alif_scan_cpu` trains through its custom ops (torch.compile traces them), not
    through the torch-op loop (which breaks the graph)."""
    return (dtype is None or dtype in DTYPES) and _fused_training_reason(surrogate) is None


alif_scan_cpu.traced_training = _training_traced
