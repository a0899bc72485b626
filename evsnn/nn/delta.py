"""Delta-encoded GRU and LSTM layers (SPEC.md §4), weights as ``nn.GRU`` / ``nn.LSTM``."""

from __future__ import annotations

import math
import types
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..functional.delta import (
    DeltaGRUState,
    DeltaLSTMState,
    check_delta_rule,
    delta_accumulators,
    delta_gru_initial_state,
    delta_gru_step,
    delta_lstm_initial_state,
    delta_lstm_step,
)
from ..functional.fixed_point import check_fixed_point, quantize_fixed_point
from ..functional.precision import state_dtype
from ..ops import dispatch
from ..ops.family import DELTA_GRU_FAMILY, DELTA_LSTM_FAMILY
from ..stats import LayerStats
from ._checks import ParameterChecks, check_input, check_nonnegative, check_size, check_state, grad_recorded
from ._stack import (
    DeltaCellHidden,
    DeltaHidden,
    DeltaLSTMHidden,
    PendingStats,
    RecordsStats,
    StackedForward,
    accept_torch_names,
    check_stack_args,
    check_stacked_state,
    direction_suffix,
    stack_states,
)
from .egru import _check_torch_rnn, _copy_from_torch, _copy_to_torch, _torch_args_of, _torch_rnn_args

__all__ = ["DeltaGRU", "DeltaGRUCell", "DeltaLSTM", "DeltaLSTMCell"]


def _renamed(init: Callable[..., None], qualname: str) -> Callable[..., None]:
    """A copy of the function ``init`` under ``qualname`` (same code, defaults and closure)."""
    copy = types.FunctionType(init.__code__, init.__globals__, init.__name__, init.__defaults__, init.__closure__)
    copy.__kwdefaults__ = init.__kwdefaults__
    copy.__annotations__ = init.__annotations__
    copy.__doc__ = init.__doc__
    copy.__qualname__ = qualname
    return copy


class _DeltaBase(ParameterChecks):
    neuron_family = DELTA_GRU_FAMILY
    state_type: type = DeltaGRUState

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # The GRU and LSTM forms share one constructor; each public class gets its own copy, so that
        # Python's argument errors ("DeltaLSTM.__init__() got an unexpected keyword argument")
        # name the class the user called.
        super().__init_subclass__(**kwargs)
        if not cls.__name__.startswith("_") and "__init__" not in cls.__dict__:
            cls.__init__ = _renamed(cls.__init__, f"{cls.__qualname__}.__init__")

    @property
    def gates(self) -> int:
        return self.neuron_family.gates

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool,
        theta_x: float,
        theta_h: float,
        backend: str,
        device,
        dtype,
    ):
        super().__init__()
        self.input_size = check_size("input_size", input_size)
        self.hidden_size = check_size("hidden_size", hidden_size)
        self.bias = bool(bias)
        self.theta_x = check_nonnegative("theta_x", theta_x)
        self.theta_h = check_nonnegative("theta_h", theta_h)
        self.backend = dispatch.validate_backend(backend)
        self._add_direction("", input_size, {"device": device, "dtype": dtype})

    def _set_official_options(self, delta_rule: str, fixed_point, weight_fixed_point) -> None:
        """The official DeltaRNN variants (SPEC §4): tie rule and Qm.n rounding."""
        self.delta_rule = check_delta_rule(delta_rule)
        self.fixed_point = check_fixed_point("fixed_point", fixed_point)
        self.weight_fixed_point = check_fixed_point("weight_fixed_point", weight_fixed_point)

    def _scan_options(self) -> dict:
        """Keyword options of the scans/steps; ``fixed_point`` only when set, as the backends
        that do not implement it are refused by dispatch for it."""
        options = {"theta_x": self.theta_x, "theta_h": self.theta_h, "delta_rule": self.delta_rule}
        if self.fixed_point is not None:
            options["fixed_point"] = self.fixed_point
        return options

    def _weight(self, name: str) -> Tensor:
        """A weight as the products use it: rounded to ``weight_fixed_point`` (straight-through)."""
        w = getattr(self, name)
        if self.weight_fixed_point is None or w is None:
            return w
        return quantize_fixed_point(w, *self.weight_fixed_point)

    # the layer contract (evsnn.nn.contract.StreamLayer)

    def dispatch_options(self) -> dict:
        """The options the backends' checks read: ``theta_x``, ``theta_h``, ``delta_rule``, ``fixed_point``."""
        return {
            "theta_x": self.theta_x,
            "theta_h": self.theta_h,
            "delta_rule": self.delta_rule,
            "fixed_point": self.fixed_point,
        }

    def scan_arguments(self) -> tuple[tuple, dict]:
        """The delta scans' arguments after ``(x, state)`` (layer 0, forward): the weights as
        the products use them (rounded to ``weight_fixed_point``), the biases and the options."""
        args = (self._weight("weight_ih"), self._weight("weight_hh"), self.bias_ih, self.bias_hh)
        return args, self._scan_options()

    def scan_input(self, x: Tensor) -> Tensor:
        """``x`` itself: the scans encode its deltas."""
        return x

    def scan_initial_state(self, batch: int, like: Tensor):
        """Zero memories and ``h`` (and ``c``), the accumulators at the biases, for ``batch``
        samples on ``like``'s device and dtype (SPEC §4)."""
        init = delta_gru_initial_state if self.state_type is DeltaGRUState else delta_lstm_initial_state
        return init(batch, self.input_size, self.hidden_size, self.bias_ih, self.bias_hh, like)

    def _add_direction(self, suffix: str, input_size: int, factory: dict) -> None:
        """The parameters of one layer·direction, named ``weight_ih{suffix}`` ... (nn.GRU's names)."""
        rows = self.gates * self.hidden_size
        setattr(self, "weight_ih" + suffix, nn.Parameter(torch.empty(rows, input_size, **factory)))
        setattr(self, "weight_hh" + suffix, nn.Parameter(torch.empty(rows, self.hidden_size, **factory)))
        for name in ("bias_ih", "bias_hh"):
            if self.bias:
                setattr(self, name + suffix, nn.Parameter(torch.empty(rows, **factory)))
            else:
                self.register_parameter(name + suffix, None)
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
        """Uniform(−1/√H, 1/√H) like ``nn.GRU``/``nn.LSTM``."""
        for suffix in self._suffixes():
            self._reset_direction(suffix)

    def extra_repr(self) -> str:
        return (
            f"{self.input_size}, {self.hidden_size}, bias={self.bias}, theta_x={self.theta_x}, "
            f"theta_h={self.theta_h}, backend={self.backend!r}"
            + (f", delta_rule={self.delta_rule!r}" if self.delta_rule != "strict" else "")
            + (f", fixed_point={self.fixed_point}" if self.fixed_point is not None else "")
            + (f", weight_fixed_point={self.weight_fixed_point}" if self.weight_fixed_point is not None else "")
        )

    def _state_shapes(self, batch: int, input_size: int | None = None) -> list[tuple[int, ...]]:
        h, g = self.hidden_size, 4 * self.hidden_size
        i = self.input_size if input_size is None else input_size
        if self.state_type is DeltaGRUState:
            return [(batch, h), (batch, i), (batch, h), (batch, g)]
        return [(batch, h), (batch, h), (batch, i), (batch, h), (batch, g)]

    def _check_state(self, state, batch: int, like: Tensor, layer: int = 0):
        shapes = self._state_shapes(batch, self._layer_input_size(layer))
        return check_state(type(self).__name__, state, self.state_type, shapes, like)

    def _layer_input_size(self, layer: int) -> int:
        return self.input_size

    def _direction_initial_state(self, batch: int, suffix: str, input_size: int, h0=None, c0=None):
        like, bias_ih, bias_hh = self.weight_ih, getattr(self, "bias_ih" + suffix), getattr(self, "bias_hh" + suffix)
        if self.state_type is DeltaGRUState:
            if c0 is not None:
                raise ValueError(f"a {type(self).__name__} state has no c0 (that is nn.LSTM's cell state)")
            return delta_gru_initial_state(batch, input_size, self.hidden_size, bias_ih, bias_hh, like, h0)
        return delta_lstm_initial_state(batch, input_size, self.hidden_size, bias_ih, bias_hh, like, h0, c0)


class _DeltaCell(RecordsStats, _DeltaBase):
    # DeltaGRUCell's and DeltaLSTMCell's constructor
    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        *,
        theta_x: float = 0.0,
        theta_h: float = 0.0,
        record_stats: bool = True,
        backend: str = "auto",
        device=None,
        dtype=None,
        delta_rule: str = "strict",
        fixed_point: tuple[int, int] | None = None,
        weight_fixed_point: tuple[int, int] | None = None,
    ):
        self._set_official_options(delta_rule, fixed_point, weight_fixed_point)
        super().__init__(input_size, hidden_size, bias, theta_x, theta_h, backend, device, dtype)
        self.record_stats = bool(record_stats)
        self.last_stats: LayerStats | None = None

    def initial_state(self, batch: int, h0: Tensor | None = None, c0: Tensor | None = None):
        """Memories at zero and accumulators at the biases; ``h0`` (and ``c0``) ``[B, H]`` optional."""
        return self._direction_initial_state(batch, "", self.input_size, h0, c0)

    def _weights_version(self) -> tuple[int, ...] | None:
        if torch.compiler.is_compiling():
            return None
        return tuple(p._version for p in (self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh) if p is not None)

    def _state_from_hidden(self, hx, x: Tensor):
        """nn.GRUCell's ``h`` / nn.LSTMCell's ``(h, c)`` (plain tensors: memories at zero) or the
        returned ones (memories and accumulators continue) → the functional state of `step`."""
        name, gru = type(self).__name__, self.state_type is DeltaGRUState
        if gru:
            if not isinstance(hx, Tensor):
                raise TypeError(
                    f"{name} expects h as a tensor [batch, hidden_size] (nn.GRUCell's hx, or the DeltaCellHidden "
                    f"it returned) or None, got {type(hx).__name__}"
                )
            h, c = hx, None
        else:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2 or not all(isinstance(v, Tensor) for v in hx):
                raise TypeError(
                    f"{name} expects (h, c), two tensors [batch, hidden_size] as nn.LSTMCell's hx (or the "
                    f"DeltaLSTMHidden it returned), or None, got {type(hx).__name__}"
                )
            h, c = hx
        batch = x.shape[0]
        zeros = x.new_zeros((), dtype=state_dtype(self.weight_ih.dtype))
        m = None
        if isinstance(h, DeltaCellHidden):
            x_hat, h_hat, m = h.x_hat, h.h_hat, h.m
            stale = h.weights_version is not None and h.weights_version != self._weights_version()
            detached = grad_recorded(*self.parameters()) and not m.requires_grad
            if stale or detached:
                m = None
            h = h.as_tensor()
        else:
            x_hat, h_hat = zeros.new_zeros(batch, self.input_size), zeros.new_zeros(batch, self.hidden_size)
        if m is None:
            if isinstance(x_hat, Tensor) and isinstance(h_hat, Tensor) and x_hat.dim() == h_hat.dim() == 2:
                m = delta_accumulators(
                    x_hat,
                    h_hat,
                    self._weight("weight_ih"),
                    self._weight("weight_hh"),
                    self.bias_ih,
                    self.bias_hh,
                    gru,
                )
            else:  # refused with the field's expected shape by the state check
                m = zeros.new_zeros(batch, 4 * self.hidden_size)
        return self.state_type(h, x_hat, h_hat, m) if gru else self.state_type(h, c, x_hat, h_hat, m)

    def forward(self, x: Tensor, hx=None):
        """One step as ``nn.GRUCell`` (``h = cell(x, h)``) / ``nn.LSTMCell`` (``h, c = cell(x, (h, c))``).

        Args:
            x: input ``[B, input_size]``.
            hx: ``None`` (zeros), a plain ``h`` (``(h, c)`` for the LSTM) ``[B, hidden_size]`` with
                the delta memories at zero, or what the cell returned (exact continuation).

        Returns:
            ``h`` as a `DeltaCellHidden` (``(h, c)`` as a `DeltaLSTMHidden` for the LSTM).
        """
        state = None if hx is None else self._state_from_hidden(hx, x)
        _, new = self.step(x, state)
        h = DeltaCellHidden(new.h, x_hat=new.x_hat, h_hat=new.h_hat, m=new.m, weights_version=self._weights_version())
        return h if self.state_type is DeltaGRUState else DeltaLSTMHidden(h, new.c)

    def _record(self, x: Tensor, before, after) -> None:
        if self.record_stats:
            pending = PendingStats(
                self, x, before.x_hat, after.x_hat, before.h_hat, after.h_hat, grad_recorded(x, self.weight_ih)
            )
            self._pending_stats = (type(self).__name__, [(pending, x.shape[0])])

    def _stats(self, x, x_hat0, x_hat1, h_hat0, h_hat1, training: bool) -> LayerStats:
        """One step's statistics: its deltas are the changes of the memories."""
        with torch.no_grad():
            batch, h = h_hat1.shape
            rows = self.gates * h
            active_x, active_h = x_hat1 != x_hat0, h_hat1 != h_hat0
            return LayerStats(
                layer=type(self).__name__,
                event_fraction=active_h.float().mean().reshape(1),
                dense_macs=batch * rows * (x.shape[-1] + h),
                event_ops=(active_x.sum() + active_h.sum()) * rows,
                backward_sparsity=(~active_h).float().mean() if training else None,
                input_event_fraction=active_x.float().mean().reshape(1),
            )


class _DeltaLayer(StackedForward, _DeltaBase):
    torch_type: type = nn.GRU
    _per_layer_fields = frozenset({"x_hat"})

    # DeltaGRU's and DeltaLSTM's constructor (the cell type comes from the class; messages name it)
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
        theta_x: float = 0.0,
        theta_h: float = 0.0,
        record_stats: bool = True,
        backend: str = "auto",
        device=None,
        dtype=None,
        delta_rule: str = "strict",
        fixed_point: tuple[int, int] | None = None,
        weight_fixed_point: tuple[int, int] | None = None,
    ):
        self._set_official_options(delta_rule, fixed_point, weight_fixed_point)
        num_layers, dropout, bidirectional = check_stack_args(type(self).__name__, num_layers, dropout, bidirectional)
        super().__init__(input_size, hidden_size, bias, theta_x, theta_h, backend, device, dtype)
        self.num_layers = num_layers
        self.dropout = dropout
        self.bidirectional = bidirectional
        self.num_directions = 2 if bidirectional else 1
        for suffix, size in self._extra_directions():
            self._add_direction(suffix, size, {"device": device, "dtype": dtype})
        accept_torch_names(self)
        self.batch_first = bool(batch_first)
        self.record_stats = bool(record_stats)
        self.last_stats: LayerStats | None = None

    def _layer_input_size(self, layer: int) -> int:
        return self.input_size if layer == 0 else self.hidden_size * self.num_directions

    def _extra_directions(self) -> list[tuple[str, int]]:
        return [
            (direction_suffix(k, bool(d)), self._layer_input_size(k))
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

    def _direction_state_shapes(self, layer: int, batch: int) -> list[tuple[int, ...]]:
        return self._state_shapes(batch, self._layer_input_size(layer))

    def initial_state(self, batch: int, h0: Tensor | None = None, c0: Tensor | None = None):
        """Memories at zero and accumulators at the biases, in the stacked layout.

        ``h0`` (and ``c0``) as ``nn.GRU``/``nn.LSTM`` take them, ``[num_layers·D, B, H]``
        (``[B, H]`` too for one layer and direction).
        """
        n = self.num_layers * self.num_directions
        per_dir = []
        for name, value in (("h0", h0), ("c0", c0)):
            if value is not None and value.dim() == 2 and n == 1:
                value = value.unsqueeze(0)
            if value is not None and tuple(value.shape) != (n, batch, self.hidden_size):
                raise ValueError(
                    f"{type(self).__name__}.initial_state {name} must have shape {(n, batch, self.hidden_size)} "
                    f"[num_layers*num_directions, batch, hidden_size], got {tuple(value.shape)}"
                )
            per_dir.append(value)
        finals = []
        for i in range(n):
            k, d = divmod(i, self.num_directions)
            h0_i = None if per_dir[0] is None else per_dir[0][i]
            c0_i = None if per_dir[1] is None else per_dir[1][i]
            finals.append(
                self._direction_initial_state(
                    batch, direction_suffix(k, bool(d)), self._layer_input_size(k), h0_i, c0_i
                )
            )
        return self._public_state(stack_states(self, finals))

    def _accept_state(self, state, batch: int, like: Tensor):
        """nn.GRU's ``h_0`` / nn.LSTM's ``(h_0, c_0)`` (plain tensors: memories at zero) or the
        returned state (its memories continue) → the stacked functional state, whose accumulators
        are recomputed from the memories and the current weights. A functional
        ``DeltaGRUState``/``DeltaLSTMState`` (stacked or ``[B, ...]``) is taken as it is."""
        name, gru = type(self).__name__, self.state_type is DeltaGRUState
        if isinstance(state, self.state_type):  # the full functional state, accumulators included, as given
            return check_stacked_state(self, state, batch, like)
        if gru:
            if not isinstance(state, Tensor):
                raise TypeError(
                    f"{name} expects h_0 as a tensor [num_layers*num_directions, batch, hidden_size] (nn.GRU's "
                    f"h_0, or the DeltaHidden state it returned) or a DeltaGRUState, got {type(state).__name__}"
                )
            h, c = state, None
        else:
            if not isinstance(state, (tuple, list)) or len(state) != 2:
                raise TypeError(
                    f"{name} expects (h_0, c_0), two tensors [num_layers*num_directions, batch, hidden_size] as "
                    f"nn.LSTM's (or the DeltaLSTMHidden state it returned) or a DeltaLSTMState, got {type(state).__name__}"
                    + (f" of length {len(state)}" if isinstance(state, (tuple, list)) else "")
                )
            h, c = state
            if not isinstance(h, Tensor) or not isinstance(c, Tensor):
                raise TypeError(f"{name} expects (h_0, c_0) as tensors, got ({type(h).__name__}, {type(c).__name__})")
        n = self.num_layers * self.num_directions
        zeros = like.new_zeros((), dtype=state_dtype(like.dtype))
        if isinstance(h, DeltaHidden):
            x_hat, h_hat = h.x_hat, h.h_hat
        else:
            sizes = [self._layer_input_size(i // self.num_directions) for i in range(n)]
            x_hat = zeros.new_zeros(n, batch, sizes[0])
            if self.num_layers > 1:
                x_hat = tuple(zeros.new_zeros(batch, size) for size in sizes)
            h_hat = zeros.new_zeros(n, batch, self.hidden_size)
        h = h.as_tensor() if isinstance(h, DeltaHidden) else h
        placeholder = zeros.new_zeros(n, batch, 4 * self.hidden_size)  # checked fields first, then M from them
        fields = (h, x_hat, h_hat, placeholder) if gru else (h, c, x_hat, h_hat, placeholder)
        stacked = check_stacked_state(self, self.state_type(*fields), batch, like)
        m = []
        for i in range(n):
            suffix = direction_suffix(i // self.num_directions, bool(i % self.num_directions))
            m.append(
                delta_accumulators(
                    stacked.x_hat[i],
                    stacked.h_hat[i],
                    self._weight("weight_ih" + suffix),
                    self._weight("weight_hh" + suffix),
                    getattr(self, "bias_ih" + suffix),
                    getattr(self, "bias_hh" + suffix),
                    gru,
                )
            )
        return stacked._replace(m=torch.stack(m))

    def _public_state(self, stacked):
        """The stacked functional state as ``h_n`` (``DeltaHidden``) or ``(h_n, c_n)``; the
        accumulators stay behind (they are recomputed from the memories when it comes back)."""
        h = DeltaHidden(stacked.h, x_hat=stacked.x_hat, h_hat=stacked.h_hat)
        if self.state_type is DeltaGRUState:
            return h
        return DeltaLSTMHidden(h, stacked.c)

    def _scan_direction(self, suffix: str, x: Tensor, state, scan):
        weight_ih = self._weight("weight_ih" + suffix)
        h, final, trace = scan(
            x,
            state,
            weight_ih,
            self._weight("weight_hh" + suffix),
            getattr(self, "bias_ih" + suffix),
            getattr(self, "bias_hh" + suffix),
            **self._scan_options(),
        )
        stats = PendingStats(self, trace, grad_recorded(x, weight_ih)) if self.record_stats else None
        return h, final, trace, stats

    def _replay_view(self, h: Tensor, trace) -> tuple[Tensor, float]:
        """(events, threshold) of a replay ([`evsnn.metrics.reference_traces`][evsnn.metrics.reference_traces]): ``Δh``, Θ_h."""
        return trace.delta_h, self.theta_h

    def _stats(self, trace, training: bool) -> LayerStats:
        with torch.no_grad():
            dx, dh = trace
            steps, batch, h = dh.shape
            rows = self.gates * h
            active_h = dh != 0
            return LayerStats(
                layer=type(self).__name__,
                event_fraction=active_h.float().mean(dim=(1, 2)),
                dense_macs=steps * batch * rows * (dx.shape[-1] + h),
                event_ops=((dx != 0).sum() + active_h.sum()) * rows,
                backward_sparsity=(~active_h).float().mean() if training else None,
                input_event_fraction=(dx != 0).float().mean(dim=(1, 2)),
            )

    @classmethod
    def from_torch(cls, rnn: nn.Module, **kwargs):
        """A delta layer with the weights of an ``nn.GRU``/``nn.LSTM``: every layer and direction,
        ``batch_first``, ``dropout``, the weights' ``requires_grad`` and the train/eval mode
        (``kwargs``, e.g. ``theta_x``, go to the constructor)."""
        _check_torch_rnn(rnn, cls.torch_type)
        layer = cls(**_torch_rnn_args(rnn, kwargs))
        _copy_from_torch(layer, rnn)
        return layer

    def to_torch(self) -> nn.Module:
        """The ``nn.GRU``/``nn.LSTM`` with these weights, their ``requires_grad`` and this
        layer's train/eval mode (equal to this layer at Θ = 0)."""
        rnn = self.torch_type(**_torch_args_of(self))
        _copy_to_torch(self, rnn)
        return rnn


_LAYER_ARGS = """
    Args:
        input_size: features of the input.
        hidden_size: units per layer and direction.
        num_layers: stacked layers (``num_layers`` of nn.GRU/nn.LSTM).
        bias: add ``bias_ih`` and ``bias_hh``.
        batch_first: input and output are ``[B, T, ·]`` instead of ``[T, B, ·]``.
        dropout: dropout on each layer's output except the last, in training.
        bidirectional: add a reverse direction per layer; outputs are concatenated.
        theta_x: input delta threshold Θ_x (≥ 0).
        theta_h: hidden delta threshold Θ_h (≥ 0).
        delta_rule: ``"strict"`` fires on ``|Δ| > Θ`` (SPEC default), ``"inclusive"`` on
            ``|Δ| ≥ Θ`` (the official DeltaRNN code; differs where ties occur, e.g. fixed-point data).
        fixed_point: ``(m, n)`` rounds each input ``x_t`` and each ``h_t`` to signed Qm.n
            (saturating, straight-through gradient; torch reference backend only), or ``None``.
        weight_fixed_point: ``(m, n)`` rounds ``weight_ih``/``weight_hh`` to Qm.n in the products
            (straight-through; the stored parameters stay full precision), or ``None``.
        record_stats: keep `last_stats` after each forward.
        backend: ``"auto"``, ``"torch"``, ``"cpu_event"`` or ``"cupy"``.
        device: device of the parameters.
        dtype: dtype of the parameters.
"""

_LAYOUT = """
    Stacking follows ``nn.GRU`` (SPEC.md §6); the input may be a
    `PackedSequence` (the output is one too). The returned ``h_n``
    (``[num_layers·D, B, H]``, D = 2 if bidirectional, index ``k·D + d``) is a
    [`DeltaHidden`][evsnn.nn.DeltaHidden] carrying the memories ``h_hat`` (same layout) and ``x_hat``,
    whose size differs per layer: ``x_hat[k·D + d]`` is that layer·direction's ``[B, I_k]`` input
    memory (a ``[D, B, I]`` tensor when ``num_layers == 1``, a tuple otherwise). Passed back, it
    continues exactly; the accumulators are recomputed from the memories and the current weights.
    A plain ``h_0`` tensor starts the memories at zero; a functional state NamedTuple is taken as
    it is. Parameters of layer 0 forward keep the names ``weight_ih`` ...; the others carry
    nn.GRU's suffixes (``weight_ih_l1``, ``bias_hh_l0_reverse``). `last_stats` sums all
    layers and directions; `flatten_parameters` does nothing (nn.GRU code calls it).
"""


class DeltaGRU(_DeltaLayer):
    __doc__ = (
        """DeltaGRU over a sequence (SPEC.md §4), constructed and called like ``nn.GRU``: only input
    and hidden changes larger than ``theta_x``/``theta_h`` propagate. ``forward(x, h_0=None) ->
    (h [T, B, D·H], h_n)``. With ``theta_x = theta_h = 0`` it computes ``nn.GRU``.
"""
        + _LAYOUT
        + _LAYER_ARGS
    )

    neuron_family = DELTA_GRU_FAMILY
    state_type = DeltaGRUState
    _state_base = DeltaGRUState
    _layer_state_type = DeltaGRUState
    torch_type = nn.GRU


class DeltaLSTM(_DeltaLayer):
    __doc__ = (
        """DeltaLSTM over a sequence (SPEC.md §4), constructed and called like ``nn.LSTM``:
    ``forward(x, (h_0, c_0)=None) -> (h [T, B, D·H], (h_n, c_n))``, the state a
    [`DeltaLSTMHidden`][evsnn.nn.DeltaLSTMHidden] whose ``h_n`` carries the memories. With
    ``theta_x = theta_h = 0`` it computes ``nn.LSTM``.
"""
        + _LAYOUT
        + _LAYER_ARGS
    )

    neuron_family = DELTA_LSTM_FAMILY
    state_type = DeltaLSTMState
    _state_base = DeltaLSTMState
    _layer_state_type = DeltaLSTMState
    torch_type = nn.LSTM


_CELL_ARGS = """
    Args:
        input_size: features of the input.
        hidden_size: units.
        bias: add ``bias_ih`` and ``bias_hh``.
        theta_x: input delta threshold Θ_x (≥ 0).
        theta_h: hidden delta threshold Θ_h (≥ 0).
        delta_rule: ``"strict"`` fires on ``|Δ| > Θ`` (SPEC default), ``"inclusive"`` on
            ``|Δ| ≥ Θ`` (the official DeltaRNN code; differs where ties occur, e.g. fixed-point data).
        fixed_point: ``(m, n)`` rounds each input ``x_t`` and each ``h_t`` to signed Qm.n
            (saturating, straight-through gradient; torch reference backend only), or ``None``.
        weight_fixed_point: ``(m, n)`` rounds ``weight_ih``/``weight_hh`` to Qm.n in the products
            (straight-through; the stored parameters stay full precision), or ``None``.
        record_stats: keep `last_stats` (one `LayerStats` of the last step) after each step.
        backend: accepted for symmetry with the layers; a single step runs the reference.
        device: device of the parameters.
        dtype: dtype of the parameters.
"""


class DeltaGRUCell(_DeltaCell):
    __doc__ = (
        """One DeltaGRU step, called like ``nn.GRUCell``: ``h = cell(x [B, input_size], h=None)``.

    The returned ``h`` (``[B, H]``) is a `DeltaCellHidden`: a tensor carrying the delta
    memories, so that passing it back continues exactly; a plain tensor ``h`` starts the
    memories at zero (with Θ = 0 the cell is ``nn.GRUCell``). `step` takes and returns the
    full functional `DeltaGRUState` instead: ``out, state = cell.step(x, state)``.
"""
        + _CELL_ARGS
    )

    neuron_family = DELTA_GRU_FAMILY
    state_type = DeltaGRUState

    def step(self, x: Tensor, state: DeltaGRUState | None = None) -> tuple[Tensor, DeltaGRUState]:
        """One step on the functional state: ``(out, DeltaGRUState)``, the form of
        [`evsnn.functional.delta_gru_step`][evsnn.functional.delta_gru_step] (streaming, ONNX export, the snntorch/norse adapters)."""
        check_input(type(self).__name__, x, 2, self.input_size, self.weight_ih)
        state = self.initial_state(x.shape[0]) if state is None else self._check_state(state, x.shape[0], x)
        out, new = delta_gru_step(
            x,
            state,
            self._weight("weight_ih"),
            self._weight("weight_hh"),
            self.bias_ih,
            self.bias_hh,
            **self._scan_options(),
        )
        self._record(x, state, new)
        return out, new


class DeltaLSTMCell(_DeltaCell):
    __doc__ = (
        """One DeltaLSTM step, called like ``nn.LSTMCell``: ``h, c = cell(x [B, input_size], (h, c))``.

    The returned ``(h, c)`` is a `DeltaLSTMHidden` whose ``h`` carries the delta memories
    (passing it back continues exactly); plain ``(h, c)`` start the memories at zero (with Θ = 0
    the cell is ``nn.LSTMCell``). `step` takes and returns the full functional
    `DeltaLSTMState` instead: ``out, state = cell.step(x, state)``.
"""
        + _CELL_ARGS
    )

    neuron_family = DELTA_LSTM_FAMILY
    state_type = DeltaLSTMState

    def step(self, x: Tensor, state: DeltaLSTMState | None = None) -> tuple[Tensor, DeltaLSTMState]:
        """One step on the functional state: ``(out, DeltaLSTMState)``, the form of
        [`evsnn.functional.delta_lstm_step`][evsnn.functional.delta_lstm_step] (streaming, ONNX export, the snntorch/norse adapters)."""
        check_input(type(self).__name__, x, 2, self.input_size, self.weight_ih)
        state = self.initial_state(x.shape[0]) if state is None else self._check_state(state, x.shape[0], x)
        out, new = delta_lstm_step(
            x,
            state,
            self._weight("weight_ih"),
            self._weight("weight_hh"),
            self.bias_ih,
            self.bias_hh,
            **self._scan_options(),
        )
        self._record(x, state, new)
        return out, new
