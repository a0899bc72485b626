"""ALIF layers (SPEC.md §2): adaptive multi-timescale spiking neurons with learnable τ."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..functional.alif import ALIFState, alif_initial_state, alif_step, decay, leaky_readout_scan
from ..functional.checks import check_steps
from ..functional.precision import state_dtype
from ..ops import dispatch
from ..ops.family import ALIF_FAMILY
from ..stats import LayerStats
from ..surrogate import MultiGaussian, Surrogate, as_surrogate
from ._checks import (
    ParameterChecks,
    check_input,
    check_nonnegative,
    check_positive,
    check_size,
    check_state,
    check_tensor_state,
    grad_recorded,
    to_time_first,
)
from ._stack import (
    ALIFLayerState,
    PendingStats,
    StackedForward,
    check_dynamic_time,
    check_stack_args,
    direction_suffix,
    dispatch_shape,
    stack_states,
)

__all__ = ["ALIF", "ALIFCell", "ALIFReadout", "LeakyReadout", "init_tau", "TAU_INITS"]

TAU_INITS = ("normal", "multi_normal", "bimodal", "constant")


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
        raise TypeError(
            f"{name} must be a number, a (mean, std) pair, a list of pairs or a tensor, got {type(spec).__name__}"
        )
    is_pair = len(spec) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in spec)
    if is_pair:
        # one (mean, std) pair is a normal draw for any kind (a one-component mixture), so that
        # tau_init="multi_normal" with a mixture for tau_mem keeps tau_adapt's default pair working
        components = [spec]
    elif kind == "normal":
        raise ValueError(
            f"normal {name} init expects (mean, std); for a list of pairs use tau_init='multi_normal', got {spec!r}"
        )
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


class _ALIFBase(ParameterChecks):
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
        self._init_specs = (tau_mem, tau_adapt, tau_init, float(b0), float(beta), bool(learn_threshold))
        self._add_direction("", input_size, {"device": device, "dtype": dtype})

    def _add_direction(self, suffix: str, input_size: int, factory: dict) -> None:
        """The parameters of one layer·direction, named ``weight_ih{suffix}`` ... (nn.GRU's suffixes)."""
        tau_mem, tau_adapt, tau_init, b0, beta, learn_threshold = self._init_specs
        n = self.hidden_size

        def param(name: str, value: Tensor | None) -> None:
            if value is None:
                self.register_parameter(name + suffix, None)
            else:
                setattr(self, name + suffix, nn.Parameter(value))

        param("weight_ih", torch.empty(n, input_size, **factory))
        param("bias_ih", torch.empty(n, **factory) if self.bias else None)
        param("weight_hh", torch.empty(n, n, **factory) if self.recurrent else None)
        param("bias_hh", torch.empty(n, **factory) if self.bias and self.recurrent else None)
        like = getattr(self, "weight_ih" + suffix)
        param("tau_mem", init_tau(n, tau_mem, tau_init, name="tau_mem").to(like))
        param("tau_adapt", init_tau(n, tau_adapt, tau_init, name="tau_adapt").to(like))
        # Built directly in the layer's dtype so that b0 = 0.2 in float64 is 0.2, not float32's 0.2.
        b0_t = torch.full((n,), b0, dtype=like.dtype, device=like.device)
        beta_t = torch.full((n,), beta if self.adaptive else 0.0, dtype=like.dtype, device=like.device)
        if learn_threshold:
            param("b0", b0_t)
            if self.adaptive:
                param("beta", beta_t)
            else:
                self.register_buffer("beta" + suffix, beta_t)
        else:
            self.register_buffer("b0" + suffix, b0_t)
            self.register_buffer("beta" + suffix, beta_t)
        self._reset_direction(suffix)

    def _suffixes(self) -> list[str]:
        return [""]

    def _reset_direction(self, suffix: str) -> None:
        for name in ("weight_ih", "weight_hh"):
            w = getattr(self, name + suffix)
            if w is not None:
                nn.init.kaiming_uniform_(w, a=math.sqrt(5))
        bound = 1.0 / math.sqrt(getattr(self, "weight_ih" + suffix).shape[1])
        for name in ("bias_ih", "bias_hh"):
            b = getattr(self, name + suffix)
            if b is not None:
                nn.init.uniform_(b, -bound, bound)

    def _reset_neuron_values(self, suffix: str) -> None:
        """τ_m and τ_adp drawn as at construction, ``b0`` and ``beta`` (parameters or buffers) set."""
        tau_mem, tau_adapt, tau_init, b0, beta, _ = self._init_specs
        with torch.no_grad():
            for name, spec in (("tau_mem", tau_mem), ("tau_adapt", tau_adapt)):
                tau = getattr(self, name + suffix)
                tau.copy_(init_tau(self.hidden_size, spec, tau_init, name=name).to(tau))
            getattr(self, "b0" + suffix).fill_(b0)
            getattr(self, "beta" + suffix).fill_(beta if self.adaptive else 0.0)

    def reset_parameters(self) -> None:
        """Every parameter and threshold buffer as at construction: τ_m and τ_adp drawn again,
        ``b0`` and ``beta`` set, Kaiming-uniform weights and Uniform(−1/√fan_in, 1/√fan_in) biases
        like ``nn.Linear``. With the same random seed it gives the values construction gave, so a
        layer built on the meta device, then ``to_empty(...)`` and ``reset_parameters()`` (the
        deferred-initialisation recipe of FSDP) equals one built directly."""
        for suffix in self._suffixes():
            self._reset_neuron_values(suffix)
            self._reset_direction(suffix)

    def extra_repr(self) -> str:
        return (
            f"{self.input_size}, {self.hidden_size}, recurrent={self.recurrent}, adaptive={self.adaptive}, "
            f"bias={self.bias}, surrogate={self.surrogate!r}, backend={self.backend!r}"
        )

    def _check_state(self, state, batch: int, like: Tensor, layer: int = 0) -> ALIFState:
        n = self.hidden_size
        return check_state(type(self).__name__, state, ALIFState, [(batch, n)] * 3, like)

    def initial_state(self, batch: int) -> ALIFState:
        """``v = 0, s = 0, b = b0`` for ``batch`` samples."""
        like = self.weight_ih.new_zeros(batch, self.hidden_size)
        return alif_initial_state(like, self.b0.detach())

    # the layer contract (evsnn.nn.contract.StreamLayer)

    def dispatch_options(self) -> dict:
        """The options the backends' checks read: ``surrogate``, ``recurrent``."""
        return {"surrogate": self.surrogate, "recurrent": self.recurrent}

    def scan_arguments(self) -> tuple[tuple, dict]:
        """The ALIF scans' arguments after ``(current, state)`` (layer 0, forward)."""
        kwargs = {
            "tau_mem": self.tau_mem,
            "tau_adapt": self.tau_adapt,
            "b0": self.b0,
            "beta": self.beta,
            "surrogate": self.surrogate,
            "weight_hh": self.weight_hh,
            "bias_hh": self.bias_hh,
        }
        return (), kwargs

    def scan_input(self, x: Tensor) -> Tensor:
        """The current ``W_ih x + b_ih`` the scans take (layer 0, forward)."""
        return nn.functional.linear(x, self.weight_ih, self.bias_ih)

    def scan_initial_state(self, batch: int, like: Tensor) -> ALIFState:
        """``v = 0, s = 0, b = b0`` for ``batch`` samples on ``like``'s device and dtype."""
        return alif_initial_state(like.new_zeros(batch, self.hidden_size), self.b0)


_NEURON_ARGS = """
        recurrent: add the recurrent product ``W_hh s_{t−1} + b_hh``.
        adaptive: adaptive threshold (ALIF); ``False`` gives LIF with the fixed threshold ``b0``.
        tau_mem: membrane time constants in steps: a number, ``(mean, std)``, a list of pairs
            (with ``tau_init="multi_normal"``) or a tensor ``[hidden_size]`` (see `init_tau`).
        tau_adapt: adaptation time constants, same forms as ``tau_mem``.
        tau_init: ``"normal"``, ``"multi_normal"`` (``"bimodal"``) or ``"constant"``.
        b0: baseline threshold (> 0).
        beta: adaptation strength (≥ 0; SPEC.md §2's β, not snntorch's decay ``beta``).
        learn_threshold: make ``b0`` (and ``beta``) learnable parameters instead of buffers.
        surrogate: pseudo-derivative of the spike (default ``MultiGaussian()``)."""


class ALIF(StackedForward, _ALIFBase):
    __doc__ = (
        """Adaptive multi-timescale LIF layer over a sequence (SPEC.md §2), stackable like ``nn.GRU``.

    ``I_t = W_ih x_t + b_ih (+ W_hh s_{t−1} + b_hh if recurrent)``, then the ALIF dynamics with
    per-neuron learnable ``tau_mem`` and ``tau_adapt``. ``adaptive=False`` gives a LIF neuron
    with the fixed threshold ``b0``. ``forward(x, state=None) -> (spikes, ALIFState)`` with
    ``x`` of shape ``[T, B, input_size]`` (``[B, T, input_size]`` with ``batch_first=True``) or
    a `PackedSequence`; spikes are ``[T, B, D·H]``. Stacking follows
    SPEC.md §6; the returned state's fields ``v``, ``b``, ``s`` are ``[num_layers·D, B, H]``
    (nn.GRU's ``h_n`` layout, ``state.s[-1]`` the last layer's final spikes; ``state[i]``
    raises). Layer 0 forward keeps the parameter names ``weight_ih``, ``tau_mem`` ...; the
    others carry nn.GRU's suffixes (``tau_mem_l1``, ``weight_ih_l0_reverse``). After each
    forward pass, `last_stats` holds one `LayerStats` summed over layers and
    directions.

    Args:
        input_size: features of the input.
        hidden_size: neurons per layer and direction.
        num_layers: stacked layers.
        bias: add ``bias_ih`` (and ``bias_hh``).
        batch_first: input and output are ``[B, T, ·]`` instead of ``[T, B, ·]``.
        dropout: dropout on each layer's spikes except the last layer's, in training.
        bidirectional: add a reverse direction per layer; spikes are concatenated."""
        + _NEURON_ARGS
        + """
        record_stats: keep `last_stats` after each forward.
        backend: ``"auto"``, ``"torch"``, ``"cpu_event"`` or ``"cupy"``.
        device: device of the parameters.
        dtype: dtype of the parameters.
    """
    )

    neuron_family = ALIF_FAMILY
    _state_base = ALIFState
    _layer_state_type = ALIFLayerState
    _per_layer_fields: frozenset[str] = frozenset()

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        *,
        recurrent: bool = True,
        adaptive: bool = True,
        tau_mem=(20.0, 5.0),
        tau_adapt=(150.0, 10.0),
        tau_init: str = "normal",
        b0: float = 0.01,
        beta: float = 1.8,
        learn_threshold: bool = False,
        surrogate: Surrogate | str | None = None,
        record_stats: bool = True,
        backend: str = "auto",
        device=None,
        dtype=None,
    ):
        num_layers, dropout, bidirectional = check_stack_args("ALIF", num_layers, dropout, bidirectional)
        super().__init__(
            input_size,
            hidden_size,
            recurrent=recurrent,
            bias=bias,
            adaptive=adaptive,
            tau_mem=tau_mem,
            tau_adapt=tau_adapt,
            tau_init=tau_init,
            b0=b0,
            beta=beta,
            learn_threshold=learn_threshold,
            surrogate=surrogate,
            backend=backend,
            device=device,
            dtype=dtype,
        )
        self.num_layers = num_layers
        self.dropout = dropout
        self.bidirectional = bidirectional
        self.num_directions = 2 if bidirectional else 1
        for suffix, size in self._extra_directions():
            self._add_direction(suffix, size, {"device": device, "dtype": dtype})
        self.batch_first = bool(batch_first)
        self.record_stats = bool(record_stats)
        self.last_stats: LayerStats | None = None

    def _extra_directions(self) -> list[tuple[str, int]]:
        size = self.hidden_size * self.num_directions
        return [
            (direction_suffix(k, bool(d)), self.input_size if k == 0 else size)
            for k in range(self.num_layers)
            for d in range(self.num_directions)
            if k or d
        ]

    def _suffixes(self) -> list[str]:
        return [""] + [s for s, _ in self._extra_directions()]

    def extra_repr(self) -> str:
        return (
            super().extra_repr()
            + f", num_layers={self.num_layers}, dropout={self.dropout}, bidirectional={self.bidirectional}"
        )

    def initial_state(self, batch: int) -> ALIFLayerState:
        """``v = 0, s = 0, b = b0`` of each layer·direction, ``[num_layers·D, batch, H]`` each."""
        like = self.weight_ih.new_zeros(batch, self.hidden_size)
        finals = [
            alif_initial_state(like, getattr(self, "b0" + direction_suffix(k, bool(d))).detach())
            for k in range(self.num_layers)
            for d in range(self.num_directions)
        ]
        return stack_states(self, finals)

    def _direction_state_shapes(self, layer: int, batch: int) -> list[tuple[int, ...]]:
        return [(batch, self.hidden_size)] * 3

    def _scan_direction(self, suffix: str, x: Tensor, state: ALIFState | None, scan):
        current = torch.nn.functional.linear(x, getattr(self, "weight_ih" + suffix), getattr(self, "bias_ih" + suffix))
        tau_mem = getattr(self, "tau_mem" + suffix)
        spikes, final, trace = scan(
            current,
            state,
            tau_mem=tau_mem,
            tau_adapt=getattr(self, "tau_adapt" + suffix),
            b0=getattr(self, "b0" + suffix),
            beta=getattr(self, "beta" + suffix),
            surrogate=self.surrogate,
            weight_hh=getattr(self, "weight_hh" + suffix),
            bias_hh=getattr(self, "bias_hh" + suffix),
        )
        stats = None
        if self.record_stats:
            stats = PendingStats(self, x, spikes, state, trace, grad_recorded(current, tau_mem))
        return spikes, final, trace, stats

    def _replay_view(self, spikes: Tensor, trace) -> tuple[Tensor, Tensor]:
        """(events, threshold) of a replay ([`evsnn.metrics.reference_traces`][evsnn.metrics.reference_traces]): spikes, ``B_t``."""
        return spikes, trace.threshold

    def _stats(self, x: Tensor, spikes: Tensor, state, trace, training: bool) -> LayerStats:
        with torch.no_grad():
            steps, batch, n = spikes.shape
            event_ops = (x != 0).sum() * n
            dense = steps * batch * n * x.shape[-1]
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
    __doc__ = (
        """One ALIF step (SPEC.md §2): ``forward(x [B, input_size], state=None) -> (spikes, ALIFState)``.

    Args:
        input_size: features of the input.
        hidden_size: neurons.
        bias: add ``bias_ih`` (and ``bias_hh``)."""
        + _NEURON_ARGS
        + """
        backend: accepted for symmetry with `ALIF`; a single step runs the reference.
        device: device of the parameters.
        dtype: dtype of the parameters.
    """
    )

    neuron_family = ALIF_FAMILY

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        *,
        recurrent: bool = True,
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
        super().__init__(
            input_size,
            hidden_size,
            recurrent=recurrent,
            bias=bias,
            adaptive=adaptive,
            tau_mem=tau_mem,
            tau_adapt=tau_adapt,
            tau_init=tau_init,
            b0=b0,
            beta=beta,
            learn_threshold=learn_threshold,
            surrogate=surrogate,
            backend=backend,
            device=device,
            dtype=dtype,
        )

    def forward(self, x: Tensor, state: ALIFState | None = None) -> tuple[Tensor, ALIFState]:
        check_input(type(self).__name__, x, 2, self.input_size, self.weight_ih)
        if state is None:
            state = alif_initial_state(x.new_zeros(x.shape[0], self.hidden_size), self.b0)
        else:
            state = self._check_state(state, x.shape[0], x)
        current = torch.nn.functional.linear(x, self.weight_ih, self.bias_ih)
        if self.recurrent:
            s_prev = state.s.to(self.weight_hh.dtype)  # the float32 state's spikes into a low-precision product
            current = current + torch.nn.functional.linear(s_prev, self.weight_hh, self.bias_hh)
        return alif_step(
            current,
            state,
            tau_mem=self.tau_mem,
            tau_adapt=self.tau_adapt,
            b0=self.b0,
            beta=self.beta,
            surrogate=self.surrogate,
        )

    def step(self, x: Tensor, state: ALIFState | None = None) -> tuple[Tensor, ALIFState]:
        """The same step as `forward` (ALIF has no ``nn.RNNCell`` counterpart, so its
        ``forward`` already takes and returns the functional state), named like the other cells'
        functional-state form."""
        return self.forward(x, state)


class LeakyReadout(ParameterChecks):
    """Non-spiking leaky readout ``m_t = α_o m_{t−1} + (1 − α_o)(W s_t + b)`` (SPEC §2).

    ``forward(x [T, B, input_size], state=None) -> (m [T, B, output_size], m_T)``.
    τ_o is learnable per output, initialised N(20, 5) by default.

    Args:
        input_size: features of the input (e.g. the spikes of the layer below).
        output_size: readout units.
        bias: add the bias ``b``.
        tau: readout time constants τ_o in steps, the forms of `init_tau`.
        tau_init: ``"normal"``, ``"multi_normal"`` (``"bimodal"``) or ``"constant"``.
        batch_first: input and output are ``[B, T, ·]`` instead of ``[T, B, ·]``.
        device: device of the parameters.
        dtype: dtype of the parameters.
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
        self._tau_spec = (tau, tau_init)
        self.tau = nn.Parameter(init_tau(output_size, tau, tau_init, name="tau").to(self.linear.weight))

    def reset_parameters(self) -> None:
        """The linear map as ``nn.Linear`` initialises it and τ_o drawn again, in construction's
        order: with the same random seed, the values construction gave (the meta-device recipe
        ``to_empty(...)`` then ``reset_parameters()`` equals building the layer directly)."""
        self.linear.reset_parameters()
        with torch.no_grad():
            self.tau.copy_(init_tau(self.output_size, *self._tau_spec, name="tau").to(self.tau))

    def forward(self, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_input(type(self).__name__, x, 3, self.input_size, self.linear.weight)
        x = to_time_first(x, self.batch_first)
        name = type(self).__name__
        check_steps(name, x)
        current = self.linear(x)
        if state is not None:
            # The dtype the scan keeps m in (float32 next to low-precision products, SPEC §6).
            dtype = state_dtype(torch.promote_types(current.dtype, self.tau.dtype))
            check_tensor_state(name, state, (x.shape[1], self.output_size), dtype, self.tau.device)
        m = leaky_readout_scan(current, state, tau=self.tau)
        final = m[-1]
        return (m.transpose(0, 1) if self.batch_first else m), final

    @property
    def alpha(self) -> Tensor:
        return decay(self.tau)

    # the layer contract (evsnn.nn.contract.StreamLayer): no backend to choose, its scan is
    # elementwise after one linear map

    neuron_family = None

    def dispatch_options(self) -> dict:
        """None: the readout has no backend choice."""
        return {}

    def scan_arguments(self) -> tuple[tuple, dict]:
        """``((tau,), {})``: what `leaky_readout_scan` takes after ``(current, m)``."""
        return (self.tau.detach().clone(),), {}

    def scan_input(self, x: Tensor) -> Tensor:
        """The current ``W x + b``."""
        return self.linear(x)

    def scan_initial_state(self, batch: int, like: Tensor) -> Tensor:
        """``m = 0`` for ``batch`` samples on ``like``'s device and dtype."""
        return like.new_zeros(batch, self.output_size)


class ALIFReadout(_ALIFBase):
    __doc__ = (
        """Adaptive spiking output layer read out through its membrane (Yin et al. 2021; SPEC.md §2).

    ``I_t = W_ih x_t + b_ih`` (not recurrent), then the ALIF dynamics of SPEC §2; ``forward(x
    [T, B, input_size], state=None) -> (v [T, B, output_size], ALIFState)`` returns the membrane
    ``v_t`` of every step, which Yin et al.'s networks pass through ``log_softmax`` each step
    (ECG, SHD). The neurons still spike: each spike resets the membrane by the threshold and
    drives the adaptation, so ``v`` is not a leaky integral of the input. ``state`` is the
    `ALIFState` ``(v, b, s)`` with fields ``[B, output_size]``.

    Args:
        input_size: features of the input (e.g. the spikes of the layer below).
        output_size: readout neurons (classes).
        bias: add ``bias_ih``."""
        + _NEURON_ARGS.replace("        recurrent: add the recurrent product ``W_hh s_{t−1} + b_hh``.\n", "")
        + """
        batch_first: input and output are ``[B, T, ·]`` instead of ``[T, B, ·]``.
        backend: ``"auto"``, ``"torch"``, ``"cpu_event"`` or ``"cupy"``.
        device: device of the parameters.
        dtype: dtype of the parameters.
    """
    )

    def __init__(
        self,
        input_size: int,
        output_size: int,
        bias: bool = True,
        *,
        adaptive: bool = True,
        tau_mem=(20.0, 5.0),
        tau_adapt=(150.0, 10.0),
        tau_init: str = "normal",
        b0: float = 0.01,
        beta: float = 1.8,
        learn_threshold: bool = False,
        surrogate: Surrogate | str | None = None,
        batch_first: bool = False,
        backend: str = "auto",
        device=None,
        dtype=None,
    ):
        super().__init__(
            input_size,
            output_size,
            recurrent=False,
            bias=bias,
            adaptive=adaptive,
            tau_mem=tau_mem,
            tau_adapt=tau_adapt,
            tau_init=tau_init,
            b0=b0,
            beta=beta,
            learn_threshold=learn_threshold,
            surrogate=surrogate,
            backend=backend,
            device=device,
            dtype=dtype,
        )
        self.output_size = self.hidden_size
        self.batch_first = bool(batch_first)

    def extra_repr(self) -> str:
        return (
            f"{self.input_size}, {self.output_size}, adaptive={self.adaptive}, bias={self.bias}, "
            f"surrogate={self.surrogate!r}, backend={self.backend!r}, batch_first={self.batch_first}"
        )

    def forward(self, x: Tensor, state: ALIFState | None = None) -> tuple[Tensor, ALIFState]:
        name = type(self).__name__
        check_input(name, x, 3, self.input_size, self.weight_ih)
        given, x = x, to_time_first(x, self.batch_first)
        check_steps(name, x)
        if state is not None:
            state = self._check_state(state, x.shape[1], x)
        current = torch.nn.functional.linear(x, self.weight_ih, self.bias_ih)
        backend = dispatch.resolve(
            "alif",
            self.backend,
            device=x.device,
            dtype=x.dtype,
            surrogate=self.surrogate,
            recurrent=False,
            shape=dispatch_shape(x, self.output_size, given, self.batch_first),
            training=grad_recorded(x, *self.parameters()),
        )
        check_dynamic_time(name, backend, given, self.batch_first)
        _, final, trace = backend.fn(
            current,
            state,
            tau_mem=self.tau_mem,
            tau_adapt=self.tau_adapt,
            b0=self.b0,
            beta=self.beta,
            surrogate=self.surrogate,
        )
        v = trace.v
        return (v.transpose(0, 1) if self.batch_first else v), final
