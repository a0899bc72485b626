"""What a layer must provide to be streamed and stacked: the contract between the layers and the
code that runs them ([`evsnn.streaming.Stream`][evsnn.streaming.Stream] and the ``nn.GRU``-style
stacking of ``evsnn.nn._stack``).

`StreamLayer` is public: the members a `Stream` reads, documented on each layer and cell.
`StackLayer` adds what ``StackedForward`` and the stacking functions call back into a sequence
layer for; those hooks stay private (they are per-direction plumbing, not API), but they are
declared here, so a layer that misses one fails a type check or ``isinstance`` instead of an
``AttributeError`` deep inside a forward pass.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

from torch import Tensor

if TYPE_CHECKING:
    from ..ops.family import Family
    from ..stats import LayerStats

__all__ = ["StackLayer", "StreamLayer"]


@runtime_checkable
class StreamLayer(Protocol):
    """A layer or cell that `evsnn.streaming.Stream` can run one step or chunk at a time.

    Attributes:
        neuron_family: its [`Family`][evsnn.ops.family.Family] record (the op family whose
            backends run it), or ``None`` for a layer without a backend choice (the readout).
        input_size: features of the input.
    """

    neuron_family: Family | None
    input_size: int

    def dispatch_options(self) -> dict[str, Any]:
        """The options the backends' checks read to decide whether they can run this layer."""
        ...

    def scan_arguments(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """``(args, kwargs)`` a scan of its family takes after ``(input, state)`` for the first
        layer's forward direction, in evaluation semantics (zoneout's expectation, no
        DropConnect); tensors that need no gradient are detached."""
        ...

    def scan_input(self, x: Tensor) -> Tensor:
        """What its scans take as input for the layer input ``x`` (``[..., input_size]``): ``x``
        itself, or a current the layer forms first (ALIF's ``W_ih x + b_ih``)."""
        ...

    def scan_initial_state(self, batch: int, like: Tensor) -> Any:
        """The state its scans start from for ``batch`` samples, as the family's functional state
        NamedTuple (``[B, ...]`` fields; the readout's ``m`` tensor), on ``like``'s device and dtype."""
        ...


@runtime_checkable
class StackLayer(StreamLayer, Protocol):
    """A sequence layer stacked ``nn.GRU``-style by ``StackedForward``: the public options of
    ``nn.GRU`` it shares and the per-direction hooks the stack calls."""

    backend: str
    hidden_size: int
    num_layers: int
    num_directions: int
    bidirectional: bool
    batch_first: bool
    dropout: float
    record_stats: bool
    weight_ih: Tensor
    # the functional state of one layer·direction, the stacked state type forward returns, and
    # the fields of that type that hold one tensor per layer·direction (their sizes differ)
    _state_base: type
    _layer_state_type: type
    _per_layer_fields: frozenset[str]

    def initial_state(self, batch: int) -> Any:
        """The stacked initial state, in the layout ``forward`` returns."""
        ...

    def _scan_direction(self, suffix: str, x: Tensor, state: Any, scan: Any) -> tuple[Tensor, Any, Any, Any]:
        """One layer·direction (parameters named with ``suffix``) on a time-first ``x`` through
        ``scan``: ``(output, final state, trace, PendingStats or None)``."""
        ...

    def _direction_state_shapes(self, layer: int, batch: int) -> list[tuple[int, ...]]:
        """The shape of each state field of one direction of ``layer``."""
        ...

    def _check_state(self, state: Any, batch: int, like: Tensor, layer: int = 0) -> NamedTuple:
        """One direction's state checked for shape, dtype and device."""
        ...

    def _stats(self, *args: Any) -> LayerStats:
        """The statistics of one run from the arguments its ``_scan_direction`` kept."""
        ...
