"""ALIF layers (SPEC.md §2): adaptive multi-timescale spiking neurons with learnable τ."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..functional.alif import ALIFState, alif_initial_state, alif_step, decay, leaky_readout_scan
from ..ops import dispatch
from ..stats import LayerStats
from ..surrogate import MultiGaussian, Surrogate, as_surrogate
from ._checks import (
    check_input,
    check_nonnegative,
    check_positive,
    check_size,
    check_state,
    grad_recorded,
    to_time_first,
)

__all__ = ["ALIF", "ALIFCell", "LeakyReadout", "init_tau", "TAU_INITS"]

TAU_INITS = ("normal", "multi_normal", "bimodal", "constant")

TauSpec = "float | tuple[float, float] | Sequence[tuple[float, float]] | Tensor"


def init_tau(
    n: int, spec, kind: str = "normal", *, generator: torch.Generator | None = None, name: str = "tau"
) -> Tensor:
    """Per-neuron time constants ``[n]``, at least one step each.

    - a plain number (whatever ``kind``): every neuron gets that τ;
    - a tensor of ``n`` values: those τ;
    - ``kind="normal"``: ``spec = (mean, std)``, τ_j ~ N(mean, std²);
    - ``kind="multi_normal"`` (alias ``"bimodal"``): ``spec = [(mean, std), (mean, std), ...]``
      (a single pair is accepted too),
      an equal mixture: neuron j draws from component ``j mod len(spec)`` (so the groups keep
      their sizes) — the heterogeneous "multi-timescale" initialisation;
    - ``kind="constant"``: ``spec`` a number, or a tensor of ``n`` values.

    A non-positive τ (or mean) raises ``ValueError``; random draws below one step are clamped
    to 1 (SPEC §2). ``name`` is used in error messages.
    """
    if kind not in TAU_INITS:
        raise ValueError(f"{name} init must be one of {TAU_INITS}, got {kind!r}")
    if isinstance(spec, Tensor):
        if tuple(spec.shape) != (n,):
            raise ValueError(f"a tensor {name} must have shape ({n},), got {tuple(spec.shape)}")
        if not bool(torch.isfinite(spec).all()) or not bool((spec > 0).all()):
            raise ValueError(f"{name} must be finite and > 0 for every neuron, got min {spec.min().item()!r}")
        spec = spec.detach().clone()
        if not spec.is_floating_point():
            spec = spec.to(torch.get_default_dtype())
        return spec.clamp(min=1.0)
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return torch.full((n,), max(check_positive(name, spec), 1.0))
    if kind == "constant":
        raise TypeError(f"a constant {name} must be a number or a tensor of shape ({n},), got {type(spec).__name__}")
    if not isinstance(spec, (tuple, list)):
        raise TypeError(f"{name} must be a number, a (mean, std) pair, a list of pairs or a tensor, got {type(spec).__name__}")
    is_pair = len(spec) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in spec)
    if is_pair:
        # one (mean, std) pair is a normal draw for any kind (a one-component mixture), so that
        # tau_init="multi_normal" with a mixture for tau_mem keeps tau_adapt's default pair working
        components = [spec]
    elif kind == "normal":
        raise ValueError(f"normal {name} init expects (mean, std); for a list of pairs use tau_init='multi_normal', got {spec!r}")
    else:
        components = list(spec)
        if not components or not all(isinstance(c, (tuple, list)) and len(c) == 2 for c in components):
            raise ValueError(f"multi_normal {name} init expects a list of (mean, std) pairs, got {spec!r}")
    for comp in components:
        if not (isinstance(comp, (tuple, list)) and len(comp) == 2):
            raise ValueError(f"normal {name} init expects (mean, std) or a number, got {comp!r}")
        check_positive(f"{name} mean", comp[0])
        check_nonnegative(f"{name} std", comp[1])
    means = torch.tensor([float(c[0]) for c in components])
    stds = torch.tensor([float(c[1]) for c in components])
    which = torch.arange(n) % len(components)
    tau = means[which] + stds[which] * torch.randn(n, generator=generator)
    return tau.clamp(min=1.0)


class _ALIFBase(nn.Module):
    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        recurrent: bool = True,
        bias: bool = True,
        adaptive: bool = True,
        tau_mem=(20.0, 5.0),
        tau_adapt=(150.0, 10.0),
        tau_init: str = "normal",
        b0: float = 0.01,
        beta: float = 1.8,
        learn_threshold: bool = False,
        surrogate: Surrogate | str | None = None,
        backend: str = "auto",
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.input_size = check_size("input_size", input_size)
        self.hidden_size = check_size("hidden_size", hidden_size)
        self.recurrent = bool(recurrent)
        self.bias = bool(bias)
        self.adaptive = bool(adaptive)
        check_positive("b0", b0)
        check_nonnegative("beta", beta)
        self.surrogate = MultiGaussian() if surrogate is None else as_surrogate(surrogate)
        self.backend = dispatch.validate_backend(backend)
        factory = {"device": device, "dtype": dtype}
        self.weight_ih = nn.Parameter(torch.empty(hidden_size, input_size, **factory))
        self.bias_ih = nn.Parameter(torch.empty(hidden_size, **factory)) if bias else None
        if self.recurrent:
            self.weight_hh = nn.Parameter(torch.empty(hidden_size, hidden_size, **factory))
            self.bias_hh = nn.Parameter(torch.empty(hidden_size, **factory)) if bias else None
        else:
            self.register_parameter("weight_hh", None)
            self.register_parameter("bias_hh", None)
        like = self.weight_ih
        self.tau_mem = nn.Parameter(init_tau(hidden_size, tau_mem, tau_init, name="tau_mem").to(like))
        self.tau_adapt = nn.Parameter(init_tau(hidden_size, tau_adapt, tau_init, name="tau_adapt").to(like))
        # Built directly in the layer's dtype so that b0 = 0.2 in float64 is 0.2, not float32's 0.2.
        b0_t = torch.full((hidden_size,), float(b0), dtype=like.dtype, device=like.device)
        beta_t = torch.full((hidden_size,), float(beta) if adaptive else 0.0, dtype=like.dtype, device=like.device)
        if learn_threshold:
            self.b0 = nn.Parameter(b0_t)
            if adaptive:
                self.beta = nn.Parameter(beta_t)
            else:
                self.register_buffer("beta", beta_t)
        else:
            self.register_buffer("b0", b0_t)
            self.register_buffer("beta", beta_t)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for name in ("weight_ih", "weight_hh"):
            w = getattr(self, name)
            if w is not None:
                nn.init.kaiming_uniform_(w, a=math.sqrt(5))
        bound = 1.0 / math.sqrt(self.input_size)
        for name in ("bias_ih", "bias_hh"):
            b = getattr(self, name)
            if b is not None:
                nn.init.uniform_(b, -bound, bound)

    def extra_repr(self) -> str:
        return (
            f"{self.input_size}, {self.hidden_size}, recurrent={self.recurrent}, adaptive={self.adaptive}, "
            f"bias={self.bias}, surrogate={self.surrogate!r}, backend={self.backend!r}"
        )

    def _check_state(self, state, batch: int, like: Tensor) -> ALIFState:
        n = self.hidden_size
        return check_state(type(self).__name__, state, ALIFState, [(batch, n)] * 3, like)

    def initial_state(self, batch: int) -> ALIFState:
        """``v = 0, s = 0, b = b0`` for ``batch`` samples."""
        like = self.weight_ih.new_zeros(batch, self.hidden_size)
        return alif_initial_state(like, self.b0.detach())


class ALIF(_ALIFBase):
    """Adaptive multi-timescale LIF layer over a sequence (SPEC.md §2).

    ``I_t = W_ih x_t + b_ih (+ W_hh s_{t−1} + b_hh if recurrent)``, then the ALIF dynamics with
    per-neuron learnable ``tau_mem`` and ``tau_adapt``. ``adaptive=False`` gives a LIF neuron
    with the fixed threshold ``b0``. ``forward(x, state=None) -> (spikes, ALIFState)`` with
    ``x`` of shape ``[T, B, input_size]`` (``[B, T, input_size]`` with ``batch_first=True``).
    After each forward pass, :attr:`last_stats` holds the layer's :class:`LayerStats`.
    """

    def __init__(self, input_size: int, hidden_size: int, *, batch_first: bool = False, record_stats: bool = True, **kwargs):
        super().__init__(input_size, hidden_size, **kwargs)
        self.batch_first = bool(batch_first)
        self.record_stats = bool(record_stats)
        self.last_stats: LayerStats | None = None

    def forward(self, x: Tensor, state: ALIFState | None = None) -> tuple[Tensor, ALIFState]:
        name = type(self).__name__
        check_input(name, x, 3, self.input_size, self.weight_ih)
        x = to_time_first(x, self.batch_first)
        if state is not None:
            state = self._check_state(state, x.shape[1], x)
        current = torch.nn.functional.linear(x, self.weight_ih, self.bias_ih)
        backend = dispatch.resolve(
            "alif",
            self.backend,
            device=x.device,
            dtype=x.dtype,
            surrogate=self.surrogate,
            recurrent=self.recurrent,
            shape=tuple(x.shape[:2]) + (self.hidden_size,),
        )
        spikes, final, trace = backend.fn(
            current,
            state,
            tau_mem=self.tau_mem,
            tau_adapt=self.tau_adapt,
            b0=self.b0,
            beta=self.beta,
            surrogate=self.surrogate,
            weight_hh=self.weight_hh,
            bias_hh=self.bias_hh,
        )
        if self.record_stats:
            self.last_stats = self._stats(x, spikes, state, trace, grad_recorded(current, self.tau_mem))
        out = spikes.transpose(0, 1) if self.batch_first else spikes
        return out, final

    def _stats(self, x: Tensor, spikes: Tensor, state, trace, training: bool) -> LayerStats:
        with torch.no_grad():
            steps, batch, n = spikes.shape
            event_ops = (x != 0).sum() * n
            dense = steps * batch * n * self.input_size
            if self.recurrent:
                s0 = state.s if state is not None else spikes.new_zeros(batch, n)
                prev = torch.cat([s0.unsqueeze(0), spikes[:-1]])
                event_ops = event_ops + (prev != 0).sum() * n
                dense += steps * batch * n * n
            backward = None
            if training:
                backward = (self.surrogate.grad(trace.v - trace.threshold) == 0).float().mean()
            return LayerStats(
                layer=type(self).__name__,
                event_fraction=(spikes != 0).float().mean(dim=(1, 2)),
                dense_macs=dense,
                event_ops=event_ops,
                backward_sparsity=backward,
                input_event_fraction=(x != 0).float().mean(dim=(1, 2)),
            )


class ALIFCell(_ALIFBase):
    """One ALIF step: ``forward(x [B, input_size], state=None) -> (spikes, ALIFState)``."""

    def forward(self, x: Tensor, state: ALIFState | None = None) -> tuple[Tensor, ALIFState]:
        check_input(type(self).__name__, x, 2, self.input_size, self.weight_ih)
        if state is None:
            state = alif_initial_state(x.new_zeros(x.shape[0], self.hidden_size), self.b0)
        else:
            state = self._check_state(state, x.shape[0], x)
        current = torch.nn.functional.linear(x, self.weight_ih, self.bias_ih)
        if self.recurrent:
            current = current + torch.nn.functional.linear(state.s, self.weight_hh, self.bias_hh)
        return alif_step(
            current,
            state,
            tau_mem=self.tau_mem,
            tau_adapt=self.tau_adapt,
            b0=self.b0,
            beta=self.beta,
            surrogate=self.surrogate,
        )


class LeakyReadout(nn.Module):
    """Non-spiking leaky readout ``m_t = α_o m_{t−1} + (1 − α_o)(W s_t + b)`` (SPEC §2).

    ``forward(x [T, B, input_size], state=None) -> (m [T, B, output_size], m_T)``.
    τ_o is learnable per output, initialised N(20, 5) by default.
    """

    def __init__(
        self,
        input_size: int,
        output_size: int,
        *,
        bias: bool = True,
        tau=(20.0, 5.0),
        tau_init: str = "normal",
        batch_first: bool = False,
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.input_size = check_size("input_size", input_size)
        self.output_size = check_size("output_size", output_size)
        self.batch_first = bool(batch_first)
        self.linear = nn.Linear(input_size, output_size, bias=bias, device=device, dtype=dtype)
        self.tau = nn.Parameter(init_tau(output_size, tau, tau_init, name="tau").to(self.linear.weight))

    def forward(self, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_input(type(self).__name__, x, 3, self.input_size, self.linear.weight)
        x = to_time_first(x, self.batch_first)
        if state is not None:
            if not isinstance(state, Tensor) or tuple(state.shape) != (x.shape[1], self.output_size):
                got = tuple(state.shape) if isinstance(state, Tensor) else type(state).__name__
                raise ValueError(f"LeakyReadout state must be a tensor of shape {(x.shape[1], self.output_size)}, got {got}")
        m = leaky_readout_scan(self.linear(x), state, tau=self.tau)
        final = m[-1]
        return (m.transpose(0, 1) if self.batch_first else m), final

    @property
    def alpha(self) -> Tensor:
        return decay(self.tau)
