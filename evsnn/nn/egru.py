"""EGRU layers (SPEC.md §3): the thresholded event-based GRU of Subramoney et al."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..functional.egru import RESETS, EGRUState, egru_initial_state, egru_step
from ..ops import dispatch
from ..stats import LayerStats
from ..surrogate import Surrogate, Triangle, as_surrogate
from ._checks import (
    check_input,
    check_positive,
    check_probability,
    check_size,
    check_state,
    grad_recorded,
    to_time_first,
)

__all__ = ["EGRU", "EGRUCell", "THRESHOLD_INITS"]

THRESHOLD_INITS = ("beta", "constant")
_LOG_THRESHOLD_MIN = math.log(1e-6)
_LOG_THRESHOLD_MAX = math.log(1e4)


def _init_threshold(hidden: int, threshold: float, kind: str) -> Tensor:
    if kind not in THRESHOLD_INITS:
        raise ValueError(f"threshold_init must be one of {THRESHOLD_INITS}, got {kind!r}")
    if kind == "constant":
        # float64 so that log/exp round-trips a float64 layer's θ = 0.3 exactly enough
        return torch.full((hidden,), threshold, dtype=torch.float64)
    # θ_j = threshold · 2u_j, u_j ~ Beta(5, 5): mean `threshold`, strictly inside (0, 2·threshold).
    u = torch.distributions.Beta(5.0, 5.0).sample((hidden,)).clamp(1e-3, 1 - 1e-3)
    return threshold * 2.0 * u.double()


class _EGRUBase(nn.Module):
    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        *,
        threshold: float = 0.3,
        threshold_init: str = "beta",
        reset: str = "output",
        surrogate: Surrogate | str | None = None,
        backend: str = "auto",
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.input_size = check_size("input_size", input_size)
        self.hidden_size = check_size("hidden_size", hidden_size)
        self.bias = bool(bias)
        check_positive("threshold", threshold)
        if reset not in RESETS:
            raise ValueError(f"reset must be one of {RESETS}, got {reset!r}")
        self.reset = reset
        self.surrogate = Triangle(0.3) if surrogate is None else as_surrogate(surrogate)
        self.backend = dispatch.validate_backend(backend)
        factory = {"device": device, "dtype": dtype}
        self.weight_ih = nn.Parameter(torch.empty(3 * hidden_size, input_size, **factory))
        self.weight_hh = nn.Parameter(torch.empty(3 * hidden_size, hidden_size, **factory))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(3 * hidden_size, **factory))
            self.bias_hh = nn.Parameter(torch.empty(3 * hidden_size, **factory))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        # θ = exp(log_threshold) stays > 0 whatever the optimiser does.
        theta = _init_threshold(hidden_size, float(threshold), threshold_init)
        self.log_threshold = nn.Parameter(theta.log().to(self.weight_ih))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Uniform(−1/√H, 1/√H) like ``nn.GRU``; the threshold is left as it is."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            p = getattr(self, name)
            if p is not None:
                nn.init.uniform_(p, -bound, bound)

    @property
    def threshold(self) -> Tensor:
        """The per-unit threshold θ = exp(log_threshold) (``[H]``), kept in [1e-6, 1e4].

        The clamp keeps θ > 0 and finite whatever the optimiser does: a large step could push
        ``log_threshold`` past float32's range, where exp gives 0 (θ must be > 0) or inf
        (``c − o·θ`` would turn into NaN). Outside the range the gradient to θ is zero, as for
        any clamp, like the τ ≥ 1 clamp of the ALIF neurons.
        """
        return self.log_threshold.clamp(_LOG_THRESHOLD_MIN, _LOG_THRESHOLD_MAX).exp()

    def extra_repr(self) -> str:
        return (
            f"{self.input_size}, {self.hidden_size}, bias={self.bias}, reset={self.reset!r}, "
            f"surrogate={self.surrogate!r}, backend={self.backend!r}"
        )

    def initial_state(self, batch: int) -> EGRUState:
        """Zero internal state and zero events for ``batch`` samples."""
        return egru_initial_state(batch, self.hidden_size, self.weight_ih)

    def _check_state(self, state, batch: int, like: Tensor) -> EGRUState:
        h = self.hidden_size
        return check_state(type(self).__name__, state, EGRUState, [(batch, h), (batch, h)], like)

    def _copy_from(self, module: nn.Module) -> None:
        with torch.no_grad():
            self.weight_ih.copy_(module.weight_ih_l0 if hasattr(module, "weight_ih_l0") else module.weight_ih)
            self.weight_hh.copy_(module.weight_hh_l0 if hasattr(module, "weight_hh_l0") else module.weight_hh)
            if self.bias:
                self.bias_ih.copy_(module.bias_ih_l0 if hasattr(module, "bias_ih_l0") else module.bias_ih)
                self.bias_hh.copy_(module.bias_hh_l0 if hasattr(module, "bias_hh_l0") else module.bias_hh)


class EGRU(_EGRUBase):
    """Event-based GRU over a sequence (SPEC.md §3), weights as ``torch.nn.GRU``.

    ``forward(x, state=None) -> (y, EGRUState(c, y))`` with ``x [T, B, input_size]``
    (``[B, T, input_size]`` with ``batch_first=True``); ``y`` is zero except where a unit
    emitted an event. ``zoneout`` on ``c`` and DropConnect (``dropconnect``) on ``weight_hh``
    apply in training. After each forward, :attr:`last_stats` holds the :class:`LayerStats`.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        batch_first: bool = False,
        *,
        zoneout: float = 0.0,
        dropconnect: float = 0.0,
        record_stats: bool = True,
        **kwargs,
    ):
        super().__init__(input_size, hidden_size, bias, **kwargs)
        self.batch_first = bool(batch_first)
        self.zoneout = check_probability("zoneout", zoneout)
        self.dropconnect = check_probability("dropconnect", dropconnect)
        self.record_stats = bool(record_stats)
        self.last_stats: LayerStats | None = None

    def forward(self, x: Tensor, state: EGRUState | None = None) -> tuple[Tensor, EGRUState]:
        check_input(type(self).__name__, x, 3, self.input_size, self.weight_ih)
        x = to_time_first(x, self.batch_first)
        if state is not None:
            state = self._check_state(state, x.shape[1], x)
        weight_hh = self.weight_hh
        if self.training and self.dropconnect > 0.0:
            keep = torch.rand_like(weight_hh) >= self.dropconnect
            weight_hh = weight_hh * keep.to(weight_hh.dtype) / (1.0 - self.dropconnect)
        threshold = self.threshold
        backend = dispatch.resolve(
            "egru",
            self.backend,
            device=x.device,
            dtype=x.dtype,
            surrogate=self.surrogate,
            reset=self.reset,
            zoneout=self.zoneout,
            shape=tuple(x.shape[:2]) + (self.hidden_size,),
        )
        kwargs = {"reset": self.reset, "surrogate": self.surrogate}
        if self.zoneout > 0.0:
            kwargs.update(zoneout=self.zoneout, training=self.training)
        y, final, trace = backend.fn(
            x, state, self.weight_ih, weight_hh, self.bias_ih, self.bias_hh, threshold, **kwargs
        )
        if self.record_stats:
            self.last_stats = self._stats(x, y, state, trace, threshold, grad_recorded(x, self.weight_ih))
        return (y.transpose(0, 1) if self.batch_first else y), final

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
                dense_macs=steps * batch * rows * (self.input_size + h),
                event_ops=((x != 0).sum() + (prev != 0).sum()) * rows,
                backward_sparsity=backward,
                input_event_fraction=(x != 0).float().mean(dim=(1, 2)),
            )

    @classmethod
    def from_torch(cls, gru: nn.GRU, **kwargs) -> "EGRU":
        """An EGRU with the weights of a one-layer, unidirectional ``nn.GRU``."""
        _check_torch_rnn(gru, nn.GRU)
        layer = cls(
            gru.input_size,
            gru.hidden_size,
            bias=gru.bias,
            batch_first=gru.batch_first,
            device=gru.weight_ih_l0.device,
            dtype=gru.weight_ih_l0.dtype,
            **kwargs,
        )
        layer._copy_from(gru)
        return layer

    def to_torch(self) -> nn.GRU:
        """An ``nn.GRU`` with these weights (a dense GRU: thresholds are dropped)."""
        gru = nn.GRU(
            self.input_size,
            self.hidden_size,
            bias=self.bias,
            batch_first=self.batch_first,
            device=self.weight_ih.device,
            dtype=self.weight_ih.dtype,
        )
        _copy_to_torch(self, gru)
        return gru


class EGRUCell(_EGRUBase):
    """One EGRU step: ``forward(x [B, input_size], state=None) -> (y, EGRUState(c, y))``."""

    def forward(self, x: Tensor, state: EGRUState | None = None) -> tuple[Tensor, EGRUState]:
        check_input(type(self).__name__, x, 2, self.input_size, self.weight_ih)
        if state is None:
            state = egru_initial_state(x.shape[0], self.hidden_size, x)
        else:
            state = self._check_state(state, x.shape[0], x)
        return egru_step(
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


def _check_torch_rnn(module: nn.Module, kind: type) -> None:
    if not isinstance(module, kind):
        raise TypeError(f"expected a torch.nn.{kind.__name__}, got {type(module).__name__}")
    if module.num_layers != 1:
        raise ValueError(f"only a one-layer {kind.__name__} can be converted, got num_layers={module.num_layers}")
    if module.bidirectional:
        raise ValueError(f"a bidirectional {kind.__name__} cannot be converted")
    if getattr(module, "proj_size", 0):
        raise ValueError(f"an {kind.__name__} with proj_size={module.proj_size} cannot be converted")


def _copy_to_torch(layer: nn.Module, rnn: nn.Module) -> None:
    with torch.no_grad():
        rnn.weight_ih_l0.copy_(layer.weight_ih)
        rnn.weight_hh_l0.copy_(layer.weight_hh)
        if layer.bias:
            rnn.bias_ih_l0.copy_(layer.bias_ih)
            rnn.bias_hh_l0.copy_(layer.bias_hh)
