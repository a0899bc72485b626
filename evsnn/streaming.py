"""Streaming inference: feed a layer one step (or one chunk) at a time and keep its state.

    stream = Stream(layer)            # any evsnn layer or cell, batch_size=1 by default
    for x_t in source:                # x_t: [B, input_size]
        y_t = stream.step(x_t)        # [B, hidden_size]
    y = stream.chunk(x)               # [T, B, input_size] (layout of the layer) -> [T, B, hidden]
    stream.reset()                    # back to the initial state

Everything runs under ``torch.inference_mode``: no autograd graph is recorded and the state
lives in a fixed set of tensors replaced step by step, so memory stays bounded over
arbitrarily long streams. Results equal the layer's own ``forward`` over the concatenated
steps (the state carries across calls), in evaluation semantics (zoneout uses its
expectation; DropConnect is off).

The backend is chosen like the layer's (``"auto"``, ``EVSNN_BACKEND``): where the
``"cpu_event"`` backend applies, the stream uses its prepared stepper (weights transposed
once, only the rows of active units read each step; with numba installed one compiled call
per step, the input projection or input encoding included, or per chunk, see
``evsnn.ops.egru.cpu`` & co.); otherwise it calls the chosen backend's scan on each step or
chunk. `Stream.chunk` is the fast way when inputs arrive in blocks: the input
projection is one GEMM for the block instead of one matrix-vector product per step.

Weights are read when the stream is built. A stream notices when the layer's parameters,
buffers or thresholds change afterwards (in place, e.g. an optimiser step, or replaced): its
next ``step``/``chunk`` raises instead of mixing old and new weights. Call `refresh` to
read them again (``refresh(keep_state=True)`` continues from the current state). Tensors
returned by a stream are inference tensors (see ``torch.inference_mode``): clone them outside
inference mode before using them in autograd.

A stream reads a layer only through the public members of
[`StreamLayer`][evsnn.nn.contract.StreamLayer] (its family record, backend options, scan
arguments, scan input and initial state) and runs the family record's ``"cpu_event"`` runner
(`evsnn.ops.family.Family.runner`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from .functional.alif import leaky_readout_step
from .functional.checks import check_steps
from .functional.precision import LOW_PRECISION
from .nn._checks import check_input, check_size, check_state, check_tensor_state
from .nn._stack import StackedForward, single_direction_state
from .nn.alif import ALIF, ALIFCell, LeakyReadout
from .nn.delta import DeltaGRU, DeltaGRUCell, DeltaLSTM, DeltaLSTMCell
from .nn.egru import EGRU, EGRUCell
from .ops import dispatch

__all__ = ["Stream", "SUPPORTED_LAYERS"]

SUPPORTED_LAYERS = (ALIF, ALIFCell, LeakyReadout, EGRU, EGRUCell, DeltaGRU, DeltaGRUCell, DeltaLSTM, DeltaLSTMCell)


def _readout_scan(current: Tensor, m: Tensor, tau: Tensor) -> tuple[Tensor, Tensor, None]:
    """The readout's "scan": `leaky_readout_step` over the steps of ``current``."""
    outs = []
    for t in range(current.shape[0]):
        m = leaky_readout_step(current[t], m, tau=tau)
        outs.append(m)
    return torch.stack(outs), m, None


class Stream:
    """Stateful online inference over one evsnn layer or cell (see the module docstring).

    Args:
        layer: an evsnn layer or cell of `SUPPORTED_LAYERS` (one layer, one direction).
        batch_size: the batch every ``step``/``chunk`` input has.
        backend: as the layers' ``backend``; ``None`` uses the layer's own setting.

    ``step(x_t [B, I]) -> [B, H]``, ``chunk(x) -> outputs of all steps``, ``reset(state=None)``,
    `state` (a copy of the current state NamedTuple, or the readout's ``m`` tensor),
    `backend` (the backend actually used), `family` (the op family, ``None`` for
    the readout).
    """

    def __init__(self, layer: nn.Module, *, batch_size: int = 1, backend: str | None = None):
        if not isinstance(layer, SUPPORTED_LAYERS):
            names = ", ".join(c.__name__ for c in SUPPORTED_LAYERS)
            raise TypeError(f"Stream expects an evsnn layer or cell ({names}), got {type(layer).__name__}")
        if getattr(layer, "num_layers", 1) != 1 or getattr(layer, "bidirectional", False):
            raise ValueError(
                f"Stream runs one layer forward in time; got {type(layer).__name__} with num_layers="
                f"{layer.num_layers}, bidirectional={layer.bidirectional} (a reverse direction needs the whole sequence)"
            )
        self.layer = layer
        self.batch_size = check_size("batch_size", batch_size)
        self._family = layer.neuron_family
        self.family = None if self._family is None else self._family.name
        requested = getattr(layer, "backend", "torch") if backend is None else backend
        self.requested = dispatch.validate_backend(requested)
        self._name = f"Stream({type(layer).__name__})"
        # what step() accepts without the full check_input (which it passes)
        self._step_shape = torch.Size((self.batch_size, self.input_size))
        self._inference = torch.inference_mode()  # entered by each step: one object, not one per step
        self.refresh()

    # ---------------------------------------------------------------------------------------
    # setup
    # ---------------------------------------------------------------------------------------

    @property
    def hidden_size(self) -> int:
        layer = self.layer
        return layer.output_size if isinstance(layer, LeakyReadout) else layer.hidden_size

    @property
    def input_size(self) -> int:
        return self.layer.input_size

    def refresh(self, keep_state: bool = False) -> None:
        """Re-read the layer's weights and choose the backend again. The state is reset, or with
        ``keep_state=True`` carried over (the stream continues with the new weights)."""
        state = self.state if keep_state else None
        family, layer = self._family, self.layer
        # the dtype and device the layer has now (it may have been converted since)
        self._like = layer.linear.weight if isinstance(layer, LeakyReadout) else layer.weight_ih
        # the runners compute a bf16/fp16 layer in float32 (SPEC §6): outputs go back to its dtype
        self._cast = self._like.dtype in LOW_PRECISION
        with torch.inference_mode():
            self._runner = None
            self._args, self._kwargs = layer.scan_arguments()
            if family is None:
                self.backend = "torch"
                self._scan = _readout_scan
            else:
                # dispatch tells the backend's check whether "auto" is choosing: an explicit
                # "cpu_event" only needs the event path to be able to run.
                chosen = dispatch.resolve(
                    family.name,
                    self.requested,
                    device=self._like.device,
                    dtype=self._like.dtype,
                    shape=(1, self.batch_size, self.hidden_size),
                    **layer.dispatch_options(),
                )
                self.backend = chosen.name
                self._scan = chosen.fn
                if chosen.name == "cpu_event":
                    self._runner = family.runner_type().from_scan_arguments(*self._args, **self._kwargs)
        self._watch()
        self.reset(state)

    # What the stream read: every parameter and buffer of the layer (the dict it sits in, the
    # tensor object, its version counter, bumped by every in-place write, and its dtype, which
    # module.double()/.half() change on the same object) and the scalar options the backends
    # were prepared with. Comparing them costs a few hundred ns per tensor.
    _OPTIONS = (
        "theta_x", "theta_h", "reset", "zoneout", "recurrent", "delta_rule", "fixed_point", "weight_fixed_point",
    )  # fmt: skip

    def _watch(self) -> None:
        watched = []
        for prefix, module in self.layer.named_modules():
            for table in (module._parameters, module._buffers):
                for name, t in table.items():
                    if t is not None:
                        version = None if t.is_inference() else t._version
                        label = f"{prefix}.{name}" if prefix else name
                        watched.append((table, name, t, version, t.dtype, label))
        self._watched = watched
        options = self.layer.__dict__
        self._options = tuple((name, options[name]) for name in self._OPTIONS if name in options)

    def _check_unchanged(self) -> None:
        # A plain loop with an early exit: this runs before every step.
        options = self.layer.__dict__
        for table, name, t, version, dtype, _ in self._watched:
            if table.get(name) is not t or (version is not None and t._version != version) or t.dtype is not dtype:
                break
        else:
            for name, value in self._options:
                if options.get(name) != value:
                    break
            else:
                return
        changed = [
            label
            for table, name, t, version, dtype, label in self._watched
            if table.get(name) is not t or (version is not None and t._version != version) or t.dtype is not dtype
        ]
        changed += [name for name, value in self._options if options.get(name) != value]
        if changed:
            raise RuntimeError(
                f"{self._name}: the layer's {', '.join(changed)} changed since the stream "
                "read them; call stream.refresh() to read them again (the state is reset) or "
                "stream.refresh(keep_state=True) to continue from the current state with the new values"
            )

    def reset(self, state: NamedTuple | Tensor | None = None) -> None:
        """Back to the layer's initial state, or to ``state`` (checked like the layer's).

        ``state`` has the cell's ``[B, ...]`` fields, or for a sequence layer also the layout
        the layer returns (``[1, B, ...]``, nn.GRU's ``h_n`` of one layer), so a stream can
        continue where ``layer(x)`` stopped."""
        with torch.inference_mode():
            initial = self.layer.scan_initial_state(self.batch_size, self._like)
            if state is not None and isinstance(self.layer, StackedForward):
                state = single_direction_state(self.layer, state, self.batch_size, self._like, self._name)
            if state is None:
                state = initial
            elif isinstance(initial, Tensor):
                check_tensor_state(self._name, state, tuple(initial.shape), initial.dtype, initial.device)
            else:
                state = check_state(self._name, state, type(initial), [tuple(t.shape) for t in initial], self._like)
            if self._runner is not None:
                self._runner.load(state)
                self._state = None
            else:
                self._state = _copy(state)

    @property
    def state(self):
        """A copy of the current state (``ALIFState``/``EGRUState``/``Delta*State``, or ``m``)."""
        with torch.inference_mode():
            if self._runner is not None:
                return self._runner.state()
            return _copy(self._state)

    # ---------------------------------------------------------------------------------------
    # running
    # ---------------------------------------------------------------------------------------

    def step(self, x: Tensor) -> Tensor:
        """Advance one step on ``x [B, input_size]``; returns the layer's output ``[B, H]``."""
        like = self._like
        if not (
            type(x) is Tensor and x.shape == self._step_shape and x.dtype == like.dtype and x.device == like.device
        ):
            check_input(f"{self._name}.step", x, 2, self.input_size, like)
            if x.shape[0] != self.batch_size:
                raise ValueError(
                    f"{self._name}.step expects batch size {self.batch_size} (set by Stream(batch_size=...)), "
                    f"got {x.shape[0]}"
                )
        self._check_unchanged()
        with self._inference:
            if self._runner is not None:
                out = self._runner.stream_step(self.layer.scan_input(x))
                # the runners compute a bf16/fp16 layer in float32 (SPEC §6); outputs in the
                # layer's dtype, as its forward and the reference path give them
                return out.to(like.dtype) if self._cast else out
            return self._reference_chunk(x.unsqueeze(0))[0]

    def chunk(self, x: Tensor) -> Tensor:
        """Advance over all steps of ``x`` (``[T, B, I]``, or ``[B, T, I]`` for a layer built
        with ``batch_first=True``); returns all outputs in the same layout."""
        batch_first = bool(getattr(self.layer, "batch_first", False))
        name = f"{self._name}.chunk"
        check_input(name, x, 3, self.input_size, self._like)
        x = x.transpose(0, 1) if batch_first else x
        check_steps(name, x)
        self._check_unchanged()
        if x.shape[1] != self.batch_size:
            raise ValueError(
                f"{name} expects batch size {self.batch_size} (set by Stream(batch_size=...)), got {x.shape[1]}"
            )
        with torch.inference_mode():
            if self._runner is not None:
                out = self._runner.stream_chunk(self.layer.scan_input(x))
                out = out.to(self._like.dtype) if self._cast else out
            else:
                out = self._reference_chunk(x)
        return out.transpose(0, 1) if batch_first else out

    def _reference_chunk(self, x: Tensor) -> Tensor:
        inp = self.layer.scan_input(x)
        out, self._state, _ = self._scan(inp, self._state, *self._args, **self._kwargs)
        return out


def _copy(state: Any) -> Any:
    """A copy of a state NamedTuple (or of the readout's ``m``), so the stream's own tensors are
    never the caller's."""
    if isinstance(state, Tensor):
        return state.clone()
    return type(state)(*(t.clone() for t in state))
