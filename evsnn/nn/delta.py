"""Delta-encoded GRU and LSTM layers (SPEC.md §4), weights as ``nn.GRU`` / ``nn.LSTM``."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..functional.delta import (
    DeltaGRUState,
    DeltaLSTMState,
    delta_gru_initial_state,
    delta_gru_step,
    delta_lstm_initial_state,
    delta_lstm_step,
)
from ..ops import dispatch
from ..stats import LayerStats
from ._checks import check_input, check_nonnegative, check_size, check_state, grad_recorded, to_time_first
from .egru import _check_torch_rnn, _copy_to_torch

__all__ = ["DeltaGRU", "DeltaGRUCell", "DeltaLSTM", "DeltaLSTMCell"]


class _DeltaBase(nn.Module):
    gates = 3
    state_type: type = DeltaGRUState
    family = "delta_gru"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        *,
        theta_x: float = 0.0,
        theta_h: float = 0.0,
        backend: str = "auto",
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.input_size = check_size("input_size", input_size)
        self.hidden_size = check_size("hidden_size", hidden_size)
        self.bias = bool(bias)
        self.theta_x = check_nonnegative("theta_x", theta_x)
        self.theta_h = check_nonnegative("theta_h", theta_h)
        self.backend = dispatch.validate_backend(backend)
        g, factory = self.gates, {"device": device, "dtype": dtype}
        self.weight_ih = nn.Parameter(torch.empty(g * hidden_size, input_size, **factory))
        self.weight_hh = nn.Parameter(torch.empty(g * hidden_size, hidden_size, **factory))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(g * hidden_size, **factory))
            self.bias_hh = nn.Parameter(torch.empty(g * hidden_size, **factory))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            p = getattr(self, name)
            if p is not None:
                nn.init.uniform_(p, -bound, bound)

    def extra_repr(self) -> str:
        return (
            f"{self.input_size}, {self.hidden_size}, bias={self.bias}, theta_x={self.theta_x}, "
            f"theta_h={self.theta_h}, backend={self.backend!r}"
        )

    def _state_shapes(self, batch: int) -> list[tuple[int, ...]]:
        h, i, g = self.hidden_size, self.input_size, 4 * self.hidden_size
        if self.state_type is DeltaGRUState:
            return [(batch, h), (batch, i), (batch, h), (batch, g)]
        return [(batch, h), (batch, h), (batch, i), (batch, h), (batch, g)]

    def _check_state(self, state, batch: int, like: Tensor):
        return check_state(type(self).__name__, state, self.state_type, self._state_shapes(batch), like)

    def initial_state(self, batch: int, h0: Tensor | None = None, c0: Tensor | None = None):
        """Memories at zero and accumulators at the biases; ``h0`` (and ``c0``) optional."""
        like = self.weight_ih
        if self.state_type is DeltaGRUState:
            if c0 is not None:
                raise ValueError("a DeltaGRU state has no c0")
            return delta_gru_initial_state(batch, self.input_size, self.hidden_size, self.bias_ih, self.bias_hh, like, h0)
        return delta_lstm_initial_state(
            batch, self.input_size, self.hidden_size, self.bias_ih, self.bias_hh, like, h0, c0
        )

    def _copy_from(self, module: nn.Module) -> None:
        with torch.no_grad():
            self.weight_ih.copy_(module.weight_ih_l0)
            self.weight_hh.copy_(module.weight_hh_l0)
            if self.bias:
                self.bias_ih.copy_(module.bias_ih_l0)
                self.bias_hh.copy_(module.bias_hh_l0)


class _DeltaLayer(_DeltaBase):
    torch_type: type = nn.GRU

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, batch_first: bool = False, *, record_stats: bool = True, **kwargs):
        super().__init__(input_size, hidden_size, bias, **kwargs)
        self.batch_first = bool(batch_first)
        self.record_stats = bool(record_stats)
        self.last_stats: LayerStats | None = None

    def forward(self, x: Tensor, state=None):
        check_input(type(self).__name__, x, 3, self.input_size, self.weight_ih)
        x = to_time_first(x, self.batch_first)
        if state is not None:
            state = self._check_state(state, x.shape[1], x)
        backend = dispatch.resolve(
            self.family,
            self.backend,
            device=x.device,
            dtype=x.dtype,
            theta_x=self.theta_x,
            theta_h=self.theta_h,
            shape=tuple(x.shape[:2]) + (self.hidden_size,),
        )
        h, final, trace = backend.fn(
            x,
            state,
            self.weight_ih,
            self.weight_hh,
            self.bias_ih,
            self.bias_hh,
            theta_x=self.theta_x,
            theta_h=self.theta_h,
        )
        if self.record_stats:
            self.last_stats = self._stats(trace, grad_recorded(x, self.weight_ih))
        return (h.transpose(0, 1) if self.batch_first else h), final

    def _stats(self, trace, training: bool) -> LayerStats:
        with torch.no_grad():
            dx, dh = trace
            steps, batch, h = dh.shape
            rows = self.gates * h
            active_h = dh != 0
            return LayerStats(
                layer=type(self).__name__,
                event_fraction=active_h.float().mean(dim=(1, 2)),
                dense_macs=steps * batch * rows * (self.input_size + h),
                event_ops=((dx != 0).sum() + active_h.sum()) * rows,
                backward_sparsity=(~active_h).float().mean() if training else None,
                input_event_fraction=(dx != 0).float().mean(dim=(1, 2)),
            )

    @classmethod
    def from_torch(cls, rnn: nn.Module, **kwargs):
        """A delta layer with the weights of a one-layer, unidirectional ``nn.GRU``/``nn.LSTM``."""
        _check_torch_rnn(rnn, cls.torch_type)
        layer = cls(
            rnn.input_size,
            rnn.hidden_size,
            bias=rnn.bias,
            batch_first=rnn.batch_first,
            device=rnn.weight_ih_l0.device,
            dtype=rnn.weight_ih_l0.dtype,
            **kwargs,
        )
        layer._copy_from(rnn)
        return layer

    def to_torch(self) -> nn.Module:
        """The ``nn.GRU``/``nn.LSTM`` with these weights (equal to this layer at Θ = 0)."""
        rnn = self.torch_type(
            self.input_size,
            self.hidden_size,
            bias=self.bias,
            batch_first=self.batch_first,
            device=self.weight_ih.device,
            dtype=self.weight_ih.dtype,
        )
        _copy_to_torch(self, rnn)
        return rnn


class DeltaGRU(_DeltaLayer):
    """DeltaGRU over a sequence (SPEC.md §4): only input and hidden changes larger than
    ``theta_x``/``theta_h`` propagate. ``forward(x, state=None) -> (h [T, B, H], DeltaGRUState)``.
    With ``theta_x = theta_h = 0`` it computes ``nn.GRU``."""

    gates = 3
    state_type = DeltaGRUState
    family = "delta_gru"
    torch_type = nn.GRU


class DeltaLSTM(_DeltaLayer):
    """DeltaLSTM over a sequence (SPEC.md §4); ``forward(x, state=None) -> (h, DeltaLSTMState)``.
    With ``theta_x = theta_h = 0`` it computes ``nn.LSTM``."""

    gates = 4
    state_type = DeltaLSTMState
    family = "delta_lstm"
    torch_type = nn.LSTM


class DeltaGRUCell(_DeltaBase):
    """One DeltaGRU step: ``forward(x [B, input_size], state=None) -> (h, DeltaGRUState)``."""

    gates = 3
    state_type = DeltaGRUState

    def forward(self, x: Tensor, state: DeltaGRUState | None = None):
        check_input(type(self).__name__, x, 2, self.input_size, self.weight_ih)
        state = self.initial_state(x.shape[0]) if state is None else self._check_state(state, x.shape[0], x)
        return delta_gru_step(
            x, state, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh, theta_x=self.theta_x, theta_h=self.theta_h
        )


class DeltaLSTMCell(_DeltaBase):
    """One DeltaLSTM step: ``forward(x [B, input_size], state=None) -> (h, DeltaLSTMState)``."""

    gates = 4
    state_type = DeltaLSTMState

    def forward(self, x: Tensor, state: DeltaLSTMState | None = None):
        check_input(type(self).__name__, x, 2, self.input_size, self.weight_ih)
        state = self.initial_state(x.shape[0]) if state is None else self._check_state(state, x.shape[0], x)
        return delta_lstm_step(
            x, state, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh, theta_x=self.theta_x, theta_h=self.theta_h
        )
