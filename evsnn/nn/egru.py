"""EGRU layers (SPEC.md §3): the thresholded event-based GRU of Subramoney et al."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..functional.egru import RESETS, EGRUState, egru_initial_state, egru_step
from ..functional.precision import state_dtype
from ..ops import dispatch
from ..ops.family import EGRU_FAMILY
from ..stats import LayerStats
from ..surrogate import Surrogate, Triangle, as_surrogate
from ._checks import (
    ParameterChecks,
    check_input,
    check_positive,
    check_probability,
    check_size,
    check_state,
    grad_recorded,
)
from ._stack import (
    EGRUHidden,
    PendingStats,
    RecordsStats,
    StackedForward,
    accept_torch_names,
    check_stack_args,
    check_stacked_state,
    direction_suffix,
    torch_suffix,
)

__all__ = ["EGRU", "EGRUCell", "THRESHOLD_INITS"]

THRESHOLD_INITS = ("log_uniform", "beta", "constant")
_LOG_THRESHOLD_MIN = math.log(1e-6)
_LOG_THRESHOLD_MAX = math.log(1e4)
# The scale of c_t at initialisation follows the input's: ~0.5 for N(0, 1) embeddings of a few
# hundred features, ~0.03 for one value per step or U(−0.1, 0.1) embeddings. Thresholds spread
# over three decades leave some units near threshold at any of these scales.
_LOG_UNIFORM_DECADES = 3.0


def _init_threshold(hidden: int, threshold: float, kind: str) -> Tensor:
    if kind == "constant":
        # float64 so that log/exp round-trips a float64 layer's θ = 0.3 exactly enough
        return torch.full((hidden,), threshold, dtype=torch.float64)
    if kind == "log_uniform":
        # log θ_j uniform over [log threshold − d/2·ln 10, log threshold + d/2·ln 10]: geometric mean `threshold`.
        half_span = 0.5 * _LOG_UNIFORM_DECADES * math.log(10.0)
        u = torch.rand(hidden, dtype=torch.float64)
        return torch.exp(math.log(threshold) + (2.0 * u - 1.0) * half_span)
    # θ_j = threshold · 2u_j, u_j ~ Beta(5, 5): mean `threshold`, strictly inside (0, 2·threshold).
    # drawn on the CPU whatever the default device (under torch.device("meta") the distribution
    # could not check its parameters); the caller moves θ to the layer's device
    five = torch.tensor(5.0, device="cpu")
    u = torch.distributions.Beta(five, five).sample((hidden,)).clamp(1e-3, 1 - 1e-3)
    return threshold * 2.0 * u.double()


class _EGRUBase(ParameterChecks):
    _param_names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "log_threshold")

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool,
        threshold: float,
        threshold_init: str,
        reset: str,
        surrogate: Surrogate | str | None,
        backend: str,
        device,
        dtype,
    ):
        super().__init__()
        self.input_size = check_size("input_size", input_size)
        self.hidden_size = check_size("hidden_size", hidden_size)
        self.bias = bool(bias)
        self._threshold_value = check_positive("threshold", threshold)
        if threshold_init not in THRESHOLD_INITS:
            raise ValueError(f"threshold_init must be one of {THRESHOLD_INITS}, got {threshold_init!r}")
        self._threshold_init = threshold_init
        if reset not in RESETS:
            raise ValueError(f"reset must be one of {RESETS}, got {reset!r}")
        self.reset = reset
        self.surrogate = Triangle(0.3) if surrogate is None else as_surrogate(surrogate)
        self.backend = dispatch.validate_backend(backend)
        self._add_direction("", input_size, {"device": device, "dtype": dtype})

    def _add_direction(self, suffix: str, input_size: int, factory: dict) -> None:
        """The parameters of one layer·direction, named ``weight_ih{suffix}`` ... (nn.GRU's names)."""
        hidden = self.hidden_size
        weight_ih = nn.Parameter(torch.empty(3 * hidden, input_size, **factory))
        setattr(self, "weight_ih" + suffix, weight_ih)
        setattr(self, "weight_hh" + suffix, nn.Parameter(torch.empty(3 * hidden, hidden, **factory)))
        for name in ("bias_ih", "bias_hh"):
            if self.bias:
                setattr(self, name + suffix, nn.Parameter(torch.empty(3 * hidden, **factory)))
            else:
                self.register_parameter(name + suffix, None)
        # θ = exp(log_threshold) stays > 0 whatever the optimiser does.
        theta = _init_threshold(hidden, self._threshold_value, self._threshold_init)
        setattr(self, "log_threshold" + suffix, nn.Parameter(theta.log().to(weight_ih)))
        self._reset_direction(suffix)

    def _suffixes(self) -> list[str]:
        return [""]

    def _reset_direction(self, suffix: str) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            p = getattr(self, name + suffix)
            if p is not None:
                nn.init.uniform_(p, -bound, bound)

    def reset_parameters(self) -> None:
        """Every parameter as at construction: the thresholds drawn again as ``threshold_init``
        says, the weights and biases Uniform(−1/√H, 1/√H) like ``nn.GRU``. With the same random
        seed it gives the values construction gave, so a layer built on the meta device, then
        ``to_empty(...)`` and ``reset_parameters()`` (the deferred-initialisation recipe of FSDP)
        equals one built directly."""
        for suffix in self._suffixes():
            log_threshold = getattr(self, "log_threshold" + suffix)
            theta = _init_threshold(self.hidden_size, self._threshold_value, self._threshold_init)
            with torch.no_grad():
                log_threshold.copy_(theta.log().to(log_threshold))
            self._reset_direction(suffix)

    def _threshold_of(self, suffix: str) -> Tensor:
        # The clamp keeps θ > 0 and finite whatever the optimiser does: a large step could push
        # log_threshold past float32's range, where exp gives 0 (θ must be > 0) or inf (c − o·θ
        # would turn into NaN). Outside the range the gradient to θ is zero, as for any clamp.
        return getattr(self, "log_threshold" + suffix).clamp(_LOG_THRESHOLD_MIN, _LOG_THRESHOLD_MAX).exp()

    @property
    def threshold(self) -> Tensor:
        """The per-unit threshold θ = exp(log_threshold) (``[H]``, layer 0, forward), kept in [1e-6, 1e4].

        A NaN ``log_threshold`` gives a NaN θ: assigning or loading one raises, an in-place write
        is found by `check` (the forward pass does not synchronise to look)."""
        return self._threshold_of("")

    def extra_repr(self) -> str:
        return (
            f"{self.input_size}, {self.hidden_size}, bias={self.bias}, reset={self.reset!r}, "
            f"surrogate={self.surrogate!r}, backend={self.backend!r}"
        )

    def _check_state(self, state, batch: int, like: Tensor, layer: int = 0) -> EGRUState:
        h = self.hidden_size
        return check_state(type(self).__name__, state, EGRUState, [(batch, h), (batch, h)], like)

    # the layer contract (evsnn.nn.contract.StreamLayer)

    def _zoneout_probability(self) -> float:
        return 0.0  # zoneout is a recipe of the sequence layer (EGRU), not of the cell

    def dispatch_options(self) -> dict:
        """The options the backends' checks read: ``surrogate``, ``reset``, ``zoneout``."""
        return {"surrogate": self.surrogate, "reset": self.reset, "zoneout": self._zoneout_probability()}

    def scan_arguments(self) -> tuple[tuple, dict]:
        """The EGRU scans' arguments after ``(x, state)`` (layer 0, forward), in evaluation
        semantics: zoneout by its expectation, no DropConnect."""
        kwargs = {"reset": self.reset, "surrogate": self.surrogate}
        zoneout = self._zoneout_probability()
        if zoneout > 0.0:
            kwargs.update(zoneout=zoneout, training=False)
        return (self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh, self.threshold.detach()), kwargs

    def scan_input(self, x: Tensor) -> Tensor:
        """``x`` itself: the scans project it."""
        return x

    def scan_initial_state(self, batch: int, like: Tensor) -> EGRUState:
        """``c = 0, y = 0`` for ``batch`` samples on ``like``'s device and dtype."""
        return egru_initial_state(batch, self.hidden_size, like)


class EGRU(StackedForward, _EGRUBase):
    """Event-based GRU over a sequence (SPEC.md §3), constructed and called like ``torch.nn.GRU``.

    ``forward(x, h_0=None) -> (y, h_n)`` with ``x [T, B, input_size]``
    (``[B, T, input_size]`` with ``batch_first=True``) or a
    `PackedSequence`; ``y`` (``[T, B, D·H]``) is zero except where a
    unit emitted an event. ``h_n`` (``[num_layers·D, B, H]``, D = 2 if bidirectional) is an
    [`EGRUHidden`][evsnn.nn.EGRUHidden]: the final events (``h_n[-1]`` is the last layer's, equal to
    ``y[-1]`` as for nn.GRU) carrying the internal state ``h_n.c``; passed back it continues
    exactly. A plain ``h_0`` sets both ``c`` and ``y``; an `EGRUState` ``(c, y)`` is
    accepted in that layout, or as ``[B, H]`` fields for one layer and direction. Stacking
    follows SPEC.md §6. Parameters of layer 0 forward are ``weight_ih``, ``weight_hh``,
    ``bias_ih``, ``bias_hh``, ``log_threshold``; other layers/directions carry ``nn.GRU``'s
    suffixes (``weight_ih_l1``, ``log_threshold_l0_reverse``). After each forward,
    `last_stats` holds one `LayerStats` summed over layers and directions (the
    per-run ones in ``last_stats.extra["runs"]`` when there are several).

    Args:
        input_size: features of the input.
        hidden_size: units per layer and direction.
        num_layers: stacked layers (nn.GRU's ``num_layers``).
        bias: add ``bias_ih`` and ``bias_hh``.
        batch_first: input and output are ``[B, T, ·]`` instead of ``[T, B, ·]``.
        dropout: dropout on each layer's output except the last, in training (nn.GRU's ``dropout``).
        bidirectional: add a reverse direction per layer; outputs are concatenated.
        threshold: typical initial event threshold θ (> 0): the geometric mean of the
            ``"log_uniform"`` draw, the mean of the ``"beta"`` draw, the value of ``"constant"``.
        threshold_init: ``"log_uniform"`` (log θ uniform over three decades around ``threshold``:
            0.00095 to 0.95 by default, so that some units are near threshold whatever the scale
            of the input), ``"beta"`` (θ·2u, u ~ Beta(5, 5) per unit) or ``"constant"``.
        reset: what an event subtracts, one of ``RESETS`` (SPEC.md §3). The default
            ``"threshold"`` subtracts θ and keeps the rest of the state; ``"output"`` (the
            paper's equations) subtracts the whole state, so a unit forgets at each event.
        surrogate: pseudo-derivative of the event function (default ``Triangle(0.3)``).
        zoneout: probability p of keeping ``c_{t−1}`` instead of the candidate, before the event
            test (SPEC.md §3): a Bernoulli(p) mask in training, its expectation in eval.
        dropconnect: DropConnect probability on ``weight_hh`` in training.
        record_stats: keep `last_stats` after each forward.
        backend: ``"auto"``, ``"torch"``, ``"cpu_event"`` or ``"cupy"``.
        device: device of the parameters.
        dtype: dtype of the parameters.
    """

    neuron_family = EGRU_FAMILY
    _state_base = EGRUState
    _layer_state_type = EGRUState
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
        threshold: float = 0.03,
        threshold_init: str = "log_uniform",
        reset: str = "threshold",
        surrogate: Surrogate | str | None = None,
        zoneout: float = 0.0,
        dropconnect: float = 0.0,
        record_stats: bool = True,
        backend: str = "auto",
        device=None,
        dtype=None,
    ):
        num_layers, dropout, bidirectional = check_stack_args("EGRU", num_layers, dropout, bidirectional)
        super().__init__(
            input_size, hidden_size, bias, threshold, threshold_init, reset, surrogate, backend, device, dtype
        )
        self.num_layers = num_layers
        self.dropout = dropout
        self.bidirectional = bidirectional
        self.num_directions = 2 if bidirectional else 1
        for suffix, size in self._extra_directions():
            self._add_direction(suffix, size, {"device": device, "dtype": dtype})
        self.register_load_state_dict_pre_hook(_fill_thresholds_of_torch_checkpoint)  # before the renaming
        accept_torch_names(self)
        self.batch_first = bool(batch_first)
        self.zoneout = check_probability("zoneout", zoneout)
        self.dropconnect = check_probability("dropconnect", dropconnect)
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

    def initial_state(self, batch: int) -> EGRUHidden:
        """Zero events carrying a zero internal state, ``[num_layers·D, batch, H]`` each."""
        shape = (self.num_layers * self.num_directions, batch, self.hidden_size)
        z = self.weight_ih.new_zeros(shape, dtype=state_dtype(self.weight_ih.dtype))  # float32 in low precision
        return EGRUHidden(z, c=z.clone())

    def _accept_state(self, state, batch: int, like: Tensor) -> EGRUState:
        """The returned `EGRUHidden` (its ``c`` continues), nn.GRU's plain ``h_0`` (taken as
        both ``c`` and ``y``) or an `EGRUState` ``(c, y)`` → the stacked functional state."""
        if isinstance(state, EGRUHidden):
            state = EGRUState(state.c, state.as_tensor())
        elif isinstance(state, Tensor):
            state = EGRUState(state, state)
        elif not isinstance(state, EGRUState):
            raise TypeError(
                "EGRU expects h_0 as a tensor [num_layers*num_directions, batch, hidden_size] (nn.GRU's h_0), "
                f"the EGRUHidden it returned or an EGRUState(c, y), got {type(state).__name__}"
            )
        return check_stacked_state(self, state, batch, like)

    def _public_state(self, stacked: EGRUState) -> EGRUHidden:
        """The stacked final state as ``h_n``: the events ``y`` carrying ``c``."""
        return EGRUHidden(stacked.y, c=stacked.c)

    def _direction_state_shapes(self, layer: int, batch: int) -> list[tuple[int, ...]]:
        return [(batch, self.hidden_size)] * 2

    def _zoneout_probability(self) -> float:
        return self.zoneout

    def _scan_direction(self, suffix: str, x: Tensor, state: EGRUState | None, scan):
        weight_ih = getattr(self, "weight_ih" + suffix)
        weight_hh = getattr(self, "weight_hh" + suffix)
        if self.training and self.dropconnect > 0.0:
            keep = torch.rand_like(weight_hh) >= self.dropconnect
            weight_hh = weight_hh * keep.to(weight_hh.dtype) / (1.0 - self.dropconnect)
        threshold = self._threshold_of(suffix)
        kwargs = {"reset": self.reset, "surrogate": self.surrogate}
        if self.zoneout > 0.0:
            kwargs.update(zoneout=self.zoneout, training=self.training)
        y, final, trace = scan(
            x,
            state,
            weight_ih,
            weight_hh,
            getattr(self, "bias_ih" + suffix),
            getattr(self, "bias_hh" + suffix),
            threshold,
            **kwargs,
        )
        stats = None
        if self.record_stats:
            stats = PendingStats(self, x, y, state, trace, threshold, grad_recorded(x, weight_ih))
        return y, final, trace, stats

    def _replay_view(self, y: Tensor, trace) -> tuple[Tensor, Tensor]:
        """(events, threshold) of a replay ([`evsnn.metrics.reference_traces`][evsnn.metrics.reference_traces]): ``y``, θ."""
        return y, self.threshold

    def _stats(self, x: Tensor, y: Tensor, state, trace, threshold: Tensor, training: bool) -> LayerStats:
        with torch.no_grad():
            steps, batch, h = y.shape
            y0 = state.y if state is not None else y.new_zeros(batch, h)
            prev = torch.cat([y0.unsqueeze(0), y[:-1]])
            rows = 3 * h
            backward = None
            if training:
                below = trace.c_pre <= threshold
                backward = (below & (self.surrogate.grad(trace.c_pre - threshold) == 0)).float().mean()
            return LayerStats(
                layer=type(self).__name__,
                event_fraction=(y != 0).float().mean(dim=(1, 2)),
                dense_macs=steps * batch * rows * (x.shape[-1] + h),
                event_ops=((x != 0).sum() + (prev != 0).sum()) * rows,
                backward_sparsity=backward,
                input_event_fraction=(x != 0).float().mean(dim=(1, 2)),
            )

    @classmethod
    def from_torch(cls, gru: nn.GRU, **kwargs) -> "EGRU":
        """An EGRU with the weights of an ``nn.GRU`` (every layer and direction; ``kwargs`` go to EGRU).

        The weights keep their ``requires_grad`` and the layer the GRU's train/eval mode."""
        _check_torch_rnn(gru, nn.GRU)
        layer = cls(**_torch_rnn_args(gru, kwargs))
        _copy_from_torch(layer, gru)
        return layer

    def to_torch(self) -> nn.GRU:
        """An ``nn.GRU`` with these weights (a dense GRU: thresholds are dropped), their
        ``requires_grad`` and this layer's train/eval mode."""
        gru = nn.GRU(**_torch_args_of(self))
        _copy_to_torch(self, gru)
        return gru


class EGRUCell(RecordsStats, _EGRUBase):
    """One EGRU step (SPEC.md §3), called like ``nn.GRUCell``: ``h = cell(x [B, input_size], h=None)``.

    The returned ``h`` is the events ``y`` ``[B, H]`` as an `EGRUHidden` carrying the
    internal state ``c`` (passing it back continues exactly). `step` takes and returns the
    functional `EGRUState` instead: ``y, state = cell.step(x, state)``.

    Args:
        input_size: features of the input.
        hidden_size: units.
        bias: add ``bias_ih`` and ``bias_hh``.
        threshold: typical initial event threshold θ (> 0): the geometric mean of the
            ``"log_uniform"`` draw, the mean of the ``"beta"`` draw, the value of ``"constant"``.
        threshold_init: ``"log_uniform"`` (log θ uniform over three decades around ``threshold``:
            0.00095 to 0.95 by default, so that some units are near threshold whatever the scale
            of the input), ``"beta"`` (θ·2u, u ~ Beta(5, 5) per unit) or ``"constant"``.
        reset: what an event subtracts, one of ``RESETS`` (SPEC.md §3). The default
            ``"threshold"`` subtracts θ and keeps the rest of the state; ``"output"`` (the
            paper's equations) subtracts the whole state, so a unit forgets at each event.
        surrogate: pseudo-derivative of the event function (default ``Triangle(0.3)``).
        record_stats: keep `last_stats` (one `LayerStats` of the last step) after each step.
        backend: accepted for symmetry with `EGRU`; a single step runs the reference.
        device: device of the parameters.
        dtype: dtype of the parameters.
    """

    neuron_family = EGRU_FAMILY

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        *,
        threshold: float = 0.03,
        threshold_init: str = "log_uniform",
        reset: str = "threshold",
        surrogate: Surrogate | str | None = None,
        record_stats: bool = True,
        backend: str = "auto",
        device=None,
        dtype=None,
    ):
        super().__init__(
            input_size, hidden_size, bias, threshold, threshold_init, reset, surrogate, backend, device, dtype
        )
        self.record_stats = bool(record_stats)
        self.last_stats: LayerStats | None = None

    def initial_state(self, batch: int) -> EGRUState:
        """Zero internal state and zero events for ``batch`` samples."""
        return egru_initial_state(batch, self.hidden_size, self.weight_ih)

    def step(self, x: Tensor, state: EGRUState | None = None) -> tuple[Tensor, EGRUState]:
        """One step on the functional state: ``(y, EGRUState(c, y))``, the form of
        [`evsnn.functional.egru_step`][evsnn.functional.egru_step] (streaming, ONNX export, the snntorch/norse adapters)."""
        check_input(type(self).__name__, x, 2, self.input_size, self.weight_ih)
        if state is None:
            state = egru_initial_state(x.shape[0], self.hidden_size, x)
        else:
            state = self._check_state(state, x.shape[0], x)
        y, new = egru_step(
            x,
            state,
            self.weight_ih,
            self.weight_hh,
            self.bias_ih,
            self.bias_hh,
            self.threshold,
            reset=self.reset,
            surrogate=self.surrogate,
        )
        if self.record_stats:
            self._pending_stats = (type(self).__name__, [(PendingStats(self, x, state.y, y), x.shape[0])])
        return y, new

    def forward(self, x: Tensor, hx: Tensor | None = None) -> EGRUHidden:
        """One step as ``nn.GRUCell``: ``h = cell(x, h)``.

        Args:
            x: input ``[B, input_size]``.
            hx: ``None`` (zeros), a plain ``h`` ``[B, hidden_size]`` (taken as both ``c`` and ``y``),
                or the `EGRUHidden` the cell returned (its ``c`` continues).

        Returns:
            The events ``y`` ``[B, H]`` as an `EGRUHidden` carrying ``c``.
        """
        state = None
        if isinstance(hx, EGRUHidden):
            state = EGRUState(hx.c, hx.as_tensor())
        elif isinstance(hx, Tensor):
            state = EGRUState(hx, hx)
        elif hx is not None:
            raise TypeError(
                "EGRUCell expects h as a tensor [batch, hidden_size] (nn.GRUCell's hx, or the EGRUHidden it "
                f"returned) or None, got {type(hx).__name__}; the functional EGRUState form is cell.step(x, state)"
            )
        _, new = self.step(x, state)
        return EGRUHidden(new.y, c=new.c)

    def _stats(self, x: Tensor, y_prev: Tensor, y: Tensor) -> LayerStats:
        """One step's statistics (the events read are the input's and the previous step's)."""
        with torch.no_grad():
            batch, h = y.shape
            rows = 3 * h
            return LayerStats(
                layer=type(self).__name__,
                event_fraction=(y != 0).float().mean().reshape(1),
                dense_macs=batch * rows * (x.shape[-1] + h),
                event_ops=((x != 0).sum() + (y_prev != 0).sum()) * rows,
                input_event_fraction=(x != 0).float().mean().reshape(1),
            )


def _check_torch_rnn(module: nn.Module, kind: type) -> None:
    if not isinstance(module, kind):
        raise TypeError(f"expected a torch.nn.{kind.__name__}, got {type(module).__name__}")
    if getattr(module, "proj_size", 0):
        raise ValueError(
            f"an {kind.__name__} with proj_size={module.proj_size} cannot be converted (no projection here)"
        )


def _torch_rnn_args(rnn: nn.Module, kwargs: dict) -> dict:
    """Constructor arguments of an evsnn layer mirroring ``rnn``; ``kwargs`` override or add."""
    args = {
        "input_size": rnn.input_size,
        "hidden_size": rnn.hidden_size,
        "num_layers": rnn.num_layers,
        "bias": rnn.bias,
        "batch_first": rnn.batch_first,
        "bidirectional": rnn.bidirectional,
        "device": rnn.weight_ih_l0.device,
        "dtype": rnn.weight_ih_l0.dtype,
    }
    if rnn.num_layers > 1:  # nn.GRU already warned about a one-layer dropout, which does nothing
        args["dropout"] = float(rnn.dropout)
    args.update(kwargs)
    return args


def _torch_args_of(layer: nn.Module) -> dict:
    return {
        "input_size": layer.input_size,
        "hidden_size": layer.hidden_size,
        "num_layers": layer.num_layers,
        "bias": layer.bias,
        "batch_first": layer.batch_first,
        "dropout": layer.dropout,
        "bidirectional": layer.bidirectional,
        "device": layer.weight_ih.device,
        "dtype": layer.weight_ih.dtype,
    }


def _weight_pairs(layer: nn.Module, rnn: nn.Module):
    """(evsnn name, nn.GRU/nn.LSTM name) of every weight and bias, all layers and directions."""
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh") if layer.bias else ("weight_ih", "weight_hh")
    for k in range(layer.num_layers):
        for d in range(layer.num_directions):
            for name in names:
                yield name + direction_suffix(k, bool(d)), name + torch_suffix(k, bool(d))


def _copy_from_torch(layer: nn.Module, rnn: nn.Module) -> None:
    """Weights, their ``requires_grad`` and the train/eval mode of ``rnn`` into ``layer``."""
    _copy_weights(rnn, layer, [(theirs, ours) for ours, theirs in _weight_pairs(layer, rnn)])


def _copy_to_torch(layer: nn.Module, rnn: nn.Module) -> None:
    """Weights, their ``requires_grad`` and the train/eval mode of ``layer`` into ``rnn``."""
    _copy_weights(layer, rnn, list(_weight_pairs(layer, rnn)))


def _copy_weights(source: nn.Module, target: nn.Module, pairs: list[tuple[str, str]]) -> None:
    # A converted eval model must stay in eval (dropout, zoneout's expectation) and a frozen
    # weight frozen: the conversion is the same model in another class.
    with torch.no_grad():
        for from_name, to_name in pairs:
            value = getattr(source, from_name)
            getattr(target, to_name).copy_(value).requires_grad_(value.requires_grad)
    target.train(source.training)


def _fill_thresholds_of_torch_checkpoint(module: nn.Module, state_dict: dict, prefix: str, *_) -> None:
    """Load-state-dict pre-hook: an ``nn.GRU`` state dict (recognised by ``weight_ih_l0`` in
    place of ``weight_ih``) has no thresholds; the module's own ``log_threshold*`` are put in
    for the missing ones, so ``strict=True`` still refuses any other missing or unexpected key."""
    if prefix + "weight_ih_l0" not in state_dict or prefix + "weight_ih" in state_dict:
        return
    for name, param in module._parameters.items():
        if name.startswith("log_threshold") and prefix + name not in state_dict:
            state_dict[prefix + name] = param.detach()
