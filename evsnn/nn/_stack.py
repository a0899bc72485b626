"""``nn.GRU``-style stacking shared by the sequence layers (SPEC.md §6).

One home for what ``EGRU``, ``DeltaGRU``, ``DeltaLSTM`` and ``ALIF`` share with ``nn.GRU``:
``num_layers``, ``dropout`` between layers, ``bidirectional``, ``PackedSequence`` input and the
``h_n`` state layout ``[num_layers·num_directions, B, ...]`` (index ``k·D + d``: layer ``k``,
direction ``d``, 1 = reverse). Each layer only supplies ``_run_direction`` (one direction of one
layer on a time-first sequence, through its backend) and the per-direction state shapes; this
module composes those calls, so every backend serves every shape.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from ..functional.alif import ALIFState
from ..functional.checks import check_steps
from ..ops import dispatch
from ..ops.compile_marks import compile_opaque
from ..stats import LayerStats
from ._checks import check_input, grad_recorded, to_time_first

__all__ = [
    "ALIFLayerState",
    "DeltaCellHidden",
    "DeltaHidden",
    "DeltaLSTMHidden",
    "EGRUHidden",
    "StateTensor",
    "check_stack_args",
    "direction_suffix",
    "PendingStats",
    "RecordsStats",
    "StackedForward",
    "torch_suffix",
]


class _NoPositionalIndex:
    """A returned layer state refuses ``state[i]``: with ``out, h = layer(x)``, nn.GRU code's
    ``h[-1]`` would otherwise silently pick a whole field instead of the last layer's state.
    Fields, tuple unpacking, ``_replace``, pytrees and pickling do not index and keep working."""

    __slots__ = ()
    _hint = ""

    def __getitem__(self, index):
        if isinstance(index, (int, slice)):
            base = self._base_name()
            raise TypeError(
                f"{base} is ({', '.join(self._fields)}), a named tuple of fields in nn.GRU's h_n layout "
                f"[num_layers*num_directions, batch, hidden], not a tensor: state[{index!r}] would pick a whole "
                f"field. {self._hint}"
            )
        return super().__getitem__(index)

    @classmethod
    def _base_name(cls) -> str:
        return next(b.__name__ for b in cls.__mro__[1:] if b is not _NoPositionalIndex and hasattr(b, "_fields"))

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}={v!r}" for n, v in zip(self._fields, self))
        return f"{self._base_name()}({inner})"


class ALIFLayerState(_NoPositionalIndex, ALIFState):
    """`ALIFState` returned by `ALIF`: ``v``, ``b``, ``s`` are ``[num_layers·D, B, H]``."""

    __slots__ = ()
    _hint = "Use state.s[-1] for the last layer's final spikes, state.v[-1] for its membrane potential."


def _map_field(fn: Callable[[Tensor], Tensor], value: Any) -> Any:
    if isinstance(value, Tensor):
        return fn(value)
    if isinstance(value, tuple):
        return tuple(_map_field(fn, v) for v in value)
    return value


class StateTensor(Tensor):
    """A tensor that carries further state fields as attributes (`carried` names them).

    It is the ``h_n`` of ``nn.GRU`` for code that indexes, concatenates or feeds it to other
    layers (every such operation gives a plain tensor), while passing it back to the layer that
    returned it continues that layer exactly. ``detach``, ``clone``, ``to``, ``cpu`` and ``cuda``
    apply to the carried fields too, so the truncated-BPTT idiom ``h = h.detach()`` keeps them;
    ``copy.deepcopy``, ``pickle`` and ``torch.save`` keep them.
    """

    carried: tuple[str, ...] = ()
    _value_name = "h"

    @staticmethod
    def __new__(cls, value: Tensor, **fields: Any) -> "StateTensor":
        if set(cls.carried) != set(fields):
            raise TypeError(f"{cls.__name__} carries {cls.carried}, got fields {tuple(fields)}")
        with torch._C.DisableTorchFunctionSubclass():
            out = value.as_subclass(cls)
        for name, field in fields.items():
            setattr(out, name, field)
        return out

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = {} if kwargs is None else kwargs
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **kwargs)
        carrier = args[0] if args else None
        if func in _CARRYING and isinstance(carrier, cls):
            method = getattr(Tensor, func.__name__)
            fields = {n: _map_field(lambda t: method(t, *args[1:], **kwargs), getattr(carrier, n)) for n in cls.carried}
            if func is Tensor.detach_:
                for name, value in fields.items():
                    setattr(carrier, name, value)
                return carrier
            return type(carrier)(out, **fields)
        return out

    def __deepcopy__(self, memo: dict) -> "StateTensor":
        import copy

        fields = {n: copy.deepcopy(getattr(self, n), memo) for n in self.carried}
        return type(self)(copy.deepcopy(self.as_tensor(), memo), **fields)

    @property
    def _fields(self) -> tuple[str, ...]:
        """The names `_replace` takes: the ``h_n`` values', then the carried fields."""
        return (self._value_name, *self.carried)

    def _replace(self, **fields: Any) -> "StateTensor":
        """A copy with some fields replaced, as a NamedTuple's ``_replace``."""
        unknown = set(fields) - set(self._fields)
        if unknown:
            raise ValueError(f"{type(self).__name__} has fields {self._fields}, got {sorted(unknown)}")
        value = fields.get(self._value_name, self.as_tensor())
        return type(self)(value, **{n: fields.get(n, getattr(self, n)) for n in self.carried})

    def as_tensor(self) -> Tensor:
        """The ``h_n`` values as a plain `torch.Tensor` (same storage and autograd history).

        Under ``torch.compile`` this is one graph break: a graph whose input is this subclass
        does not compile through AOTAutograd, one that starts after it does."""
        with torch._C.DisableTorchFunctionSubclass():
            return self.as_subclass(Tensor)


_CARRYING = frozenset({Tensor.detach, Tensor.detach_, Tensor.clone, Tensor.to, Tensor.cpu, Tensor.cuda})


class DeltaHidden(StateTensor):
    """``h_n`` of `DeltaGRU` and `DeltaLSTM` (``[num_layers·D, B, H]``, a tensor like
    nn.GRU's) carrying the delta memories that an exact continuation needs.

    Attributes:
        x_hat: input memories x̂ ``[num_layers·D, B, I]`` (one layer), or a tuple of
            ``num_layers·D`` tensors ``[B, I_k]`` (input sizes differ per layer).
        h_hat: hidden memories ĥ_{t−1} ``[num_layers·D, B, H]``.

    The accumulators are not carried: the layer recomputes them from these memories and its
    current weights (``M = W_ih x̂ + W_hh ĥ + b``, SPEC §4), so a state carried across an
    optimiser step continues with the updated weights and every parameter gets its gradient.
    """

    carried = ("x_hat", "h_hat")

    @property
    def h(self) -> Tensor:
        """``h_n`` as a plain tensor."""
        return self.as_tensor()


class DeltaCellHidden(DeltaHidden):
    """``h`` of `DeltaGRUCell` / `DeltaLSTMCell` (``[B, H]``, a tensor like
    nn.GRUCell's) carrying the memories x̂, ĥ and, for the next step, the accumulators.

    Attributes:
        x_hat: input memory x̂ ``[B, I]``.
        h_hat: hidden memory ĥ_{t−1} ``[B, H]``.
        m: accumulators ``[B, 4H]`` summed so far.
        weights_version: the weights' version counters when ``m`` was summed (``None`` under
            ``torch.compile``).

    The next step adds its products to ``m`` (no dense product per step). It recomputes ``m``
    from the memories and the current weights (``M = W_ih x̂ + W_hh ĥ + b``, SPEC §4) instead
    when the weights changed in place since (an optimiser step), or when gradients are recorded
    and ``m`` carries none (after ``h.detach()``), so that every parameter gets its gradient.
    """

    carried = ("x_hat", "h_hat", "m", "weights_version")


class DeltaLSTMHidden(NamedTuple):
    """``(h_n, c_n)`` of `DeltaLSTM`, as nn.LSTM's: ``out, (h, c) = lstm(x)`` unpacks it.
    ``h`` is a `DeltaHidden` carrying the memories x̂, ĥ (also readable here)."""

    h: Tensor
    c: Tensor

    @property
    def x_hat(self) -> Any:
        """The input memories x̂ carried by ``h`` (``None`` for a plain ``h``)."""
        return getattr(self.h, "x_hat", None)

    @property
    def h_hat(self) -> Tensor | None:
        """The hidden memories ĥ carried by ``h`` (``None`` for a plain ``h``)."""
        return getattr(self.h, "h_hat", None)


class EGRUHidden(StateTensor):
    """``h_n`` of `EGRU`: the final events ``y`` ``[num_layers·D, B, H]`` (``h_n[-1]`` equals
    the output's last step, as for nn.GRU), carrying the internal state ``c`` of the same shape.
    A plain tensor ``h0`` given to EGRU sets both ``c`` and ``y``."""

    carried = ("c",)
    _value_name = "y"

    @property
    def y(self) -> Tensor:
        """The final events (``h_n``) as a plain tensor."""
        return self.as_tensor()


# Dynamo before PyTorch 2.6 traced a __torch_function__ subclass only when told to: without it a
# compiled layer could not return its h_n in one graph. Later releases trace them and ignore the
# setting, so Dynamo (a second to import) is not loaded for it there.
if torch.__version__ < (2, 6):  # TorchVersion compares with a tuple
    for _carrier in (DeltaHidden, DeltaCellHidden, EGRUHidden):
        torch._dynamo.config.traceable_tensor_subclasses.add(_carrier)


class CellStep(nn.Module):
    """A cell's functional-state form as a module: ``forward(x, state) -> (out, state)`` is
    ``cell.step(x, state)``, with the state a NamedTuple (or plain tuple) of tensors. For tools
    that take a module and flat tensors, such as ``torch.onnx.export``.

    Args:
        cell: an evsnn cell (``ALIFCell``, ``EGRUCell``, ``DeltaGRUCell``, ``DeltaLSTMCell``).
    """

    def __init__(self, cell: nn.Module):
        super().__init__()
        if not callable(getattr(cell, "step", None)):
            raise TypeError(f"CellStep expects an evsnn cell with a step(x, state) method, got {type(cell).__name__}")
        self.cell = cell

    def forward(self, x: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        return self.cell.step(x, state)


def register_safe_globals(types: Sequence[type], hooks: Sequence[Any] = ()) -> None:
    """Allow ``torch.load``'s default ``weights_only=True`` to rebuild pickled evsnn layers and
    states: the layer and state ``types`` given and the layers' own load ``hooks``, with what
    every layer pickles alongside (the shared load hooks, its [`LayerStats`][evsnn.stats.LayerStats],
    its surrogate)."""
    from .. import surrogate
    from ..functional.delta import DeltaGRUState, DeltaLSTMState
    from ..functional.egru import EGRUState
    from ._checks import _before_load

    surrogates = [
        surrogate.Triangle,
        surrogate.Gaussian,
        surrogate.MultiGaussian,
        surrogate.ATan,
        surrogate.FastSigmoid,
        surrogate.Truncated,
    ]
    torch.serialization.add_safe_globals(
        [
            *types,
            *hooks,
            *surrogates,
            LayerStats,
            ALIFState,
            ALIFLayerState,
            EGRUState,
            DeltaGRUState,
            DeltaLSTMState,
            DeltaHidden,
            DeltaCellHidden,
            DeltaLSTMHidden,
            EGRUHidden,
            _rename_torch_keys,
            _before_load,
            # the holder torch pickles the layers' load_state_dict pre-hooks in
            torch.nn.modules.module._WrappedHook,
        ]
    )


def direction_suffix(layer: int, reverse: bool) -> str:
    """Parameter-name suffix: none for layer 0 forward (today's names), nn.GRU's otherwise."""
    return "" if layer == 0 and not reverse else torch_suffix(layer, reverse)


def torch_suffix(layer: int, reverse: bool) -> str:
    """``nn.GRU``'s parameter-name suffix: ``_l1``, ``_l0_reverse``, ..."""
    return f"_l{layer}" + ("_reverse" if reverse else "")


def check_stack_args(owner: str, num_layers: Any, dropout: Any, bidirectional: Any) -> tuple[int, float, bool]:
    """Validate ``num_layers``, ``dropout``, ``bidirectional`` as ``nn.GRU`` does (``dropout < 1``)."""
    if isinstance(num_layers, bool) or not isinstance(num_layers, int):
        raise TypeError(
            f"{owner} num_layers must be an int >= 1, got {type(num_layers).__name__} {num_layers!r} "
            "(the third positional argument is num_layers, as in nn.GRU; pass bias= by keyword)"
        )
    if num_layers < 1:
        raise ValueError(f"{owner} num_layers must be >= 1, got {num_layers}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)):
        raise TypeError(f"{owner} dropout must be a number in [0, 1), got {type(dropout).__name__}")
    if not math.isfinite(dropout) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"{owner} dropout must be in [0, 1), got {dropout!r}")
    if dropout > 0 and num_layers == 1:
        warnings.warn(
            f"{owner}: dropout adds dropout between stacked layers (after all but the last one), so a "
            f"non-zero dropout expects num_layers > 1, got dropout={dropout} and num_layers={num_layers}",
            UserWarning,
            stacklevel=3,
        )
    return num_layers, float(dropout), bool(bidirectional)


def accept_torch_names(module: nn.Module) -> None:
    """Let ``load_state_dict`` take ``nn.GRU``/``nn.LSTM``'s names for layer 0 forward
    (``weight_ih_l0`` ...), so an ``nn.GRU`` checkpoint loads after swapping the class."""
    module.register_load_state_dict_pre_hook(_rename_torch_keys)


def _rename_torch_keys(module: nn.Module, state_dict: dict, prefix: str, *_: Any) -> None:
    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        theirs = prefix + name + "_l0"
        if theirs in state_dict and prefix + name not in state_dict:
            state_dict[prefix + name] = state_dict.pop(theirs)


# ---------------------------------------------------------------------------------------------
# state layout
# ---------------------------------------------------------------------------------------------


def direction_state(state: NamedTuple, index: int, base: type) -> NamedTuple:
    """Layer·direction ``index``'s state (``[B, ...]`` fields) out of the stacked layout."""
    return base(*(v[index] for v in state))


def _per_layer_field(module: nn.Module, name: str) -> bool:
    return name in module._per_layer_fields and module.num_layers > 1


def stack_states(module: nn.Module, finals: Sequence[NamedTuple]) -> NamedTuple:
    """Per-direction final states (``h_n`` order) → the layer state type in the stacked layout."""
    fields = []
    for name in module._layer_state_type._fields:
        parts = [getattr(f, name) for f in finals]
        fields.append(tuple(parts) if _per_layer_field(module, name) else torch.stack(parts))
    return module._layer_state_type(*fields)


def check_stacked_state(module: nn.Module, state: Any, batch: int, like: Tensor) -> NamedTuple:
    """Accept a state in the stacked layout (or, for one layer and direction, the ``[B, ...]`` form)."""
    name = type(module).__name__
    base = module._state_base
    fields = base._fields
    if not isinstance(state, tuple) or len(state) != len(fields):
        hint = ""
        if isinstance(state, Tensor):
            hint = (
                "; for nn.GRU's h0 tensor pass layer.initial_state(batch, h0=h0)"
                if "h0" in inspect.signature(module.initial_state).parameters
                else "; start from layer.initial_state(batch) and _replace its fields"
            )
        raise TypeError(
            f"{name} expects state as {base.__name__}({', '.join(fields)}) or None, got {type(state).__name__}{hint}"
        )
    n = module.num_layers * module.num_directions
    shapes = [module._direction_state_shapes(i // module.num_directions, batch) for i in range(n)]
    out = []
    for j, (field, value) in enumerate(zip(fields, state)):
        if _per_layer_field(module, field):
            if not isinstance(value, (tuple, list)) or len(value) != n:
                raise TypeError(
                    f"{name} state field {field!r} must be a tuple of num_layers*num_directions={n} tensors "
                    f"(layer k direction d at k*{module.num_directions}+d), got {type(value).__name__}"
                )
            for i, v in enumerate(value):
                if not isinstance(v, Tensor) or tuple(v.shape) != shapes[i][j]:
                    got = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
                    raise ValueError(f"{name} state field {field!r}[{i}] must have shape {shapes[i][j]}, got {got}")
            out.append(tuple(value))
            continue
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} state field {field!r} must be a tensor, got {type(value).__name__}")
        expected = (n, *shapes[0][j])
        if n == 1 and tuple(value.shape) == shapes[0][j]:
            value = value.unsqueeze(0)
        if tuple(value.shape) != expected:
            legacy = f" (or {shapes[0][j]})" if n == 1 else ""
            raise ValueError(
                f"{name} state field {field!r} must have shape {expected}{legacy}: "
                f"[num_layers*num_directions, batch, ...] as nn.GRU's h_n, got {tuple(value.shape)}"
            )
        out.append(value)
    stacked = module._layer_state_type(*out)
    # dtype and device: the per-direction check of each layer, one rule for cells and layers
    for i in range(n):
        module._check_state(direction_state(stacked, i, base), batch, like, layer=i // module.num_directions)
    return stacked


def single_direction_state(module: nn.Module, state: Any, batch: int, like: Tensor, what: str) -> NamedTuple | None:
    """For helpers that replay one layer·direction (metrics, regularisers): refuse a stacked or
    bidirectional ``module``; return ``state`` (the layer's ``[1, B, ...]`` layout or the
    ``[B, ...]`` form) as the functional ``[B, ...]`` state, or ``None``."""
    if module.num_layers != 1 or module.bidirectional:
        raise ValueError(
            f"{what} replays a one-layer, unidirectional {type(module).__name__}; got num_layers="
            f"{module.num_layers}, bidirectional={module.bidirectional}"
        )
    if state is None:
        return None
    return direction_state(module._accept_state(state, batch, like), 0, module._state_base)


def _select_batch(module: nn.Module, state: NamedTuple, idx: Tensor) -> NamedTuple:
    fields = []
    for name, v in zip(state._fields, state):
        if _per_layer_field(module, name):
            fields.append(tuple(t.index_select(0, idx) for t in v))
        else:
            fields.append(v.index_select(1, idx))
    return type(state)(*fields)


def _cat_batch(module: nn.Module, states: Sequence[NamedTuple], order: Tensor) -> NamedTuple:
    fields = []
    for name in states[0]._fields:
        parts = [getattr(s, name) for s in states]
        if _per_layer_field(module, name):
            n = len(parts[0])
            fields.append(tuple(torch.cat([p[i] for p in parts], 0).index_select(0, order) for i in range(n)))
        else:
            fields.append(torch.cat(parts, 1).index_select(1, order))
    return type(states[0])(*fields)


# ---------------------------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------------------------


class PendingStats:
    """One layer·direction run's statistics, kept as the arguments of the layer's ``_stats``
    (tensors the forward made anyway) and computed when `StackedForward.last_stats` is
    read, so a forward whose statistics nobody reads pays no reduction for them.

    The version counters of those tensors are noted (outside ``torch.compile`` tracing, and not
    for inference-mode tensors, which have none): reading the statistics after one of them was
    changed in place raises instead of describing a different pass."""

    def __init__(self, module: nn.Module, *args: Any):
        self.module = module
        # set for a reverse direction, which scans its input flipped in time: the per-step
        # statistics are flipped back so that step t describes input step t, as its output does
        self.time_reversed = False
        # detached (views: no copy, same version counters), so that the layer does not keep the
        # forward's autograd graph alive
        self.args = tuple(_detached(a) for a in args)
        self.versions = None if torch.compiler.is_compiling() else _versions(self.args)

    def compute(self) -> LayerStats:
        if self.versions is not None and _versions(self.args) != self.versions:
            name = type(self.module).__name__
            raise RuntimeError(
                f"{name}.last_stats: a tensor of the last forward (its input, output or initial state) was "
                "modified in place after the forward, so its statistics would describe a different pass; read "
                "last_stats before changing them in place, or run the forward again"
            )
        stats = self.module._stats(*self.args)
        if self.time_reversed:
            stats = _flip_per_step(stats)
        return stats


def _flip_per_step(stats: LayerStats) -> LayerStats:
    """``stats`` of a scan over a time-flipped input, with its per-step fields in input time."""
    return dataclasses.replace(
        stats,
        event_fraction=stats.event_fraction.flip(0),
        input_event_fraction=None if stats.input_event_fraction is None else stats.input_event_fraction.flip(0),
    )


def _detached(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach()
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(_detached(v) for v in value))
    return value


def _tensors(values: Any):
    for v in values:
        if isinstance(v, Tensor):
            yield v
        elif isinstance(v, tuple):
            yield from _tensors(v)


def _versions(values: Any) -> tuple:
    return tuple(None if t.is_inference() else t._version for t in _tensors(values))


def merge_stats(name: str, parts: Sequence[tuple[LayerStats, int]]) -> LayerStats:
    """One `LayerStats` for several layer·direction (and length-group) runs.

    ``parts`` are ``(stats, batch)`` (a `PendingStats` is computed first);
    ``event_fraction[t]`` is the mean over every run active at input step ``t`` weighted by its batch; ``dense_macs`` and ``event_ops`` are sums. The runs'
    own stats (``h_n`` order, per length group for packed input) stay in ``extra["runs"]``.
    A reverse direction's per-step fields are in input time (flipped back from its scan); with
    packed input a step counts only the sequences still running there, not the padding.
    """
    parts = [(s.compute() if isinstance(s, PendingStats) else s, b) for s, b in parts]
    if len(parts) == 1:
        return parts[0][0]
    with torch.no_grad():
        steps = max(s.event_fraction.shape[0] for s, _ in parts)

        count = parts[0][0].event_fraction.new_zeros(steps, dtype=torch.float32)
        for s, b in parts:
            count[: s.event_fraction.shape[0]] += b

        def per_step(attr: str) -> Tensor | None:
            if any(getattr(s, attr) is None for s, _ in parts):
                return None
            total = torch.zeros_like(count)
            for s, b in parts:
                v = getattr(s, attr).float()
                total[: v.shape[0]] += v * b
            return total / count

        backward = None
        if all(s.backward_sparsity is not None for s, _ in parts):
            weights = [b * s.event_fraction.shape[0] for s, b in parts]
            backward = sum(s.backward_sparsity.float() * w for (s, _), w in zip(parts, weights)) / sum(weights)
        return LayerStats(
            layer=name,
            event_fraction=per_step("event_fraction"),
            dense_macs=sum(int(s.dense_macs) for s, _ in parts),
            event_ops=sum(s.event_ops for s, _ in parts),
            backward_sparsity=backward,
            input_event_fraction=per_step("input_event_fraction"),
            extra={"runs": [s for s, _ in parts]},
            # packed runs of several lengths cover different numbers of samples per step
            samples_per_step=count if bool((count != count[0]).any()) else None,
        )


# ---------------------------------------------------------------------------------------------
# forward
# ---------------------------------------------------------------------------------------------

RunDirection = Callable[[int, int, Tensor, Any, Any], tuple[Tensor, NamedTuple, PendingStats | None]]


def _run_dense(module: nn.Module, x: Tensor, state: NamedTuple | None, backend: Any):
    """All layers and directions on a dense time-first ``x``; returns (out, finals, stats)."""
    directions = module.num_directions
    finals: list[NamedTuple] = []
    stats: list[tuple[PendingStats, int]] = []
    layer_in = x
    for k in range(module.num_layers):
        outs = []
        for d in range(directions):
            s = None if state is None else direction_state(state, k * directions + d, module._state_base)
            seq = layer_in.flip(0) if d else layer_in
            out, final, st = module._run_direction(k, d, seq, s, backend)
            outs.append(out.flip(0) if d else out)
            finals.append(final)
            if st is not None:
                st.time_reversed = bool(d)
                stats.append((st, x.shape[1]))
        layer_in = torch.cat(outs, -1) if directions > 1 else outs[0]
        if module.dropout > 0.0 and module.training and k < module.num_layers - 1:
            layer_in = nn.functional.dropout(layer_in, module.dropout, training=True)
    return layer_in, finals, stats


def _marked_dynamic(given: Any, dim: int) -> bool:
    """Whether dimension ``dim`` of the caller's input was marked dynamic for ``torch.compile``
    (``torch._dynamo.mark_dynamic`` records the dimensions on the tensor) and is being compiled."""
    return torch.compiler.is_compiling() and dim in getattr(given, "_dynamo_dynamic_indices", ())


def dispatch_shape(x: Tensor, hidden: int, given: Any = None, batch_first: bool = False) -> tuple[int, int, int] | None:
    """``(T, B, hidden)`` of a time-first ``x`` for the backend choice, or ``None`` when the
    caller's input ``given`` has its batch dimension marked dynamic for ``torch.compile``.

    ``"auto"`` picks ``cpu_event`` by the batch sizes where it was measured faster; reading the
    batch size inside a compiled graph fixes the graph to that size, which a batch marked
    dynamic refuses. Without a shape ``"auto"`` takes the reference, which serves every batch
    size; an explicitly named backend does not depend on the shape."""
    if _marked_dynamic(given, 0 if batch_first else 1):
        return None
    return (x.shape[0], x.shape[1], hidden)


def check_dynamic_time(name: str, backend: Any, given: Any, batch_first: bool) -> None:
    """Refuse a sequence length marked dynamic for ``torch.compile`` on the reference backend:
    its loop over time is unrolled into the graph, so a compiled graph has one length."""
    if backend.name == "torch" and _marked_dynamic(given, 1 if batch_first else 0):
        raise ValueError(
            f"{name} on the torch reference backend unrolls its loop over time into a compiled graph, "
            "so the sequence length cannot be dynamic, got an input whose time dimension is marked dynamic "
            "(torch._dynamo.mark_dynamic); mark only the batch dimension dynamic, or use backend='cpu_event', "
            "whose scan is one op for any length"
        )


class RecordsStats:
    """`last_stats` of a layer or cell: the `PendingStats` of its last forward
    (``_pending_stats``, ``(name, [(stats, batch), ...])``), merged and computed on first read."""

    @property
    def last_stats(self) -> LayerStats | None:
        """`LayerStats` of the last forward (``record_stats=True``), computed on first read."""
        pending = self.__dict__.get("_pending_stats")
        if pending is not None:
            name, parts = pending
            self.__dict__["_last_stats"] = merge_stats(name, parts)
            self.__dict__["_pending_stats"] = None  # computed once; the forward's tensors are released
        return self.__dict__.get("_last_stats")

    @last_stats.setter
    def last_stats(self, value: LayerStats | None) -> None:
        self.__dict__["_pending_stats"] = None
        self.__dict__["_last_stats"] = value

    def __getstate__(self) -> dict[str, Any]:
        # A pickle or deepcopy holds the computed LayerStats, not the forward's tensors.
        try:
            _ = self.last_stats
        except RuntimeError:  # its tensors were changed in place: there are no statistics to keep
            self.last_stats = None
        return super().__getstate__()


class StackedForward(RecordsStats):
    """``forward`` of the sequence layers (EGRU, DeltaGRU, DeltaLSTM, ALIF), like ``nn.GRU``'s.

    A layer implements [`StackLayer`][evsnn.nn.contract.StackLayer]: its `Family` record
    (``neuron_family``), the options its backends' checks read (``dispatch_options``) and
    ``_scan_direction(suffix, x, state, scan) -> (out, final, trace, stats)``: one
    layer·direction through ``scan`` (a backend, or the family's reference for a replay), among
    the hooks listed there."""

    def _resolve_backend(self, x: Tensor, given: Any = None):
        backend = dispatch.resolve(
            self.neuron_family.name,
            self.backend,
            device=x.device,
            dtype=x.dtype,
            shape=dispatch_shape(x, self.hidden_size, given, self.batch_first),
            training=grad_recorded(x, *self.parameters()),
            **self.dispatch_options(),
        )
        check_dynamic_time(type(self).__name__, backend, given, self.batch_first)
        return backend

    def flatten_parameters(self) -> None:
        """No-op, for code written for ``nn.GRU``/``nn.LSTM`` (their cuDNN weight layout has no
        counterpart here: each parameter is used as it is stored)."""

    def _accept_state(self, state: Any, batch: int, like: Tensor) -> NamedTuple:
        """A given initial state as the stacked functional state the directions are cut from."""
        return check_stacked_state(self, state, batch, like)

    def _public_state(self, stacked: NamedTuple) -> Any:
        """The stacked final state as `forward` returns it."""
        return stacked

    def _run_direction(self, layer: int, reverse: int, x: Tensor, state: Any, backend: Any):
        out, final, _, stats = self._scan_direction(direction_suffix(layer, bool(reverse)), x, state, backend.fn)
        return out, final, stats

    def forward(self, x: Tensor | PackedSequence, state: Any = None) -> tuple[Any, NamedTuple]:
        """``(output, final state)`` of a dense ``[T, B, I]`` (``[B, T, I]`` with ``batch_first``)
        or packed input; the output is packed when the input is. ``state``: nn.GRU's ``h_0``
        (``(h_0, c_0)`` for DeltaLSTM; ALIF's ``ALIFState``), the state a previous call returned
        (it continues exactly), or ``None``."""
        seq, lengths = _sequence(self, x)
        if state is not None:
            state = self._accept_state(state, seq.shape[1], seq)
        backend = self._resolve_backend(seq, x)
        # What torch.compile cannot trace runs eagerly behind one graph break here (instead of one
        # break per nested frame): EGRU's cpu_event training with a surrogate that has no kernel
        # form (an autograd node holding the surrogate object). The reference, cpu_event (custom
        # ops beside each kernel in evsnn/ops/<family>/; a scan's traced_training, where it has one, says whether
        # it trains through them) and the CuPy scans (their raw-pointer reads live inside the
        # custom ops' bodies) are traced.
        opaque = False
        if backend.name == "cpu_event" and grad_recorded(seq, *self.parameters()):
            traced = getattr(backend.fn, "traced_training", None)
            opaque = traced is not None and not traced(dtype=seq.dtype, **self.dispatch_options())
        run = _run_opaque if opaque else _run
        out, final = run(self, x, seq, lengths, state, backend)
        return out, self._public_state(final)


def _sequence(module: nn.Module, x: Any) -> tuple[Tensor, Tensor | None]:
    """The time-first dense sequence (zero-padded for packed input) and the packed lengths."""
    name = type(module).__name__
    if isinstance(x, PackedSequence):
        check_input(name, x.data, 2, module.input_size, module.weight_ih)
        return pad_packed_sequence(x)
    check_input(name, x, 3, module.input_size, module.weight_ih)
    seq = to_time_first(x, module.batch_first)
    check_steps(name, seq)
    return seq, None


def _run(module: nn.Module, x: Any, seq: Tensor, lengths: Tensor | None, state: Any, backend: Any):
    """All layers and directions; a packed input runs each group of equal-length sequences as one
    dense batch (exact: no step past a sequence's end is computed), one stack call per distinct
    length."""
    name = type(module).__name__
    packed = lengths is not None
    if not packed:
        out, finals, stats = _run_dense(module, seq, state, backend)
        if module.record_stats:
            module._pending_stats = (name, stats)
        return (out.transpose(0, 1) if module.batch_first else out), stack_states(module, finals)

    steps = seq.shape[0]
    outs, states, indices, stats = [], [], [], []
    for length in torch.unique(lengths).tolist():
        idx = (lengths == length).nonzero().squeeze(1).to(seq.device)
        sub_state = None if state is None else _select_batch(module, state, idx)
        out, finals, st = _run_dense(module, seq[:length].index_select(1, idx), sub_state, backend)
        outs.append(nn.functional.pad(out, (0, 0, 0, 0, 0, steps - length)))
        states.append(stack_states(module, finals))
        indices.append(idx)
        stats.extend(st)
    order = torch.argsort(torch.cat(indices))
    out = torch.cat(outs, 1).index_select(1, order)
    final = _cat_batch(module, states, order)
    if module.record_stats:
        module._pending_stats = (name, stats)
    sorted_indices = x.sorted_indices
    if sorted_indices is not None:
        out = out.index_select(1, sorted_indices)
    data = pack_padded_sequence(
        out, x.batch_sizes.new_tensor(sorted(lengths.tolist(), reverse=True)), enforce_sorted=True
    ).data
    return PackedSequence(data, x.batch_sizes, x.sorted_indices, x.unsorted_indices), final


_run_opaque = compile_opaque(_run)
