"""Truncated backpropagation through time (TBPTT) for any evsnn layer or user network.

A sequence is run in windows of ``k`` steps; the state reached at the end of a window starts the
next window exactly (the forward pass is the untruncated one), but detached, so that gradients
flow within a window only. Two ways to use it:

- `tbptt_windows` yields one `Window` at a time, computed only when asked for: compute the
  window's loss and call ``backward()`` before asking for the next window, and only one window's
  graph is in memory. Truncated BPTT as Williams & Peng define it (and as Yin et al. train their
  ALIF networks) steps the optimiser after every window, so the next window runs on the updated
  weights (``evsnn train --tbptt K``):

      for window in tbptt_windows(layer, x, k=50):
          opt.zero_grad()
          loss_fn(window.output, y[window.start : window.stop]).backward()
          opt.step()

  or, summing the windows' gradients into one step per sequence (``--tbptt-update sequence``):

      opt.zero_grad()
      for window in tbptt_windows(layer, x, k=50):
          loss_fn(window.output, y[window.start : window.stop]).backward()
      opt.step()

- `tbptt_forward` runs every window and returns the whole output and the final state, with
  the gradient cut at the window boundaries (one graph for the whole sequence).

A step whose loss or gradient is inf or NaN should be skipped, not applied (an Adam step on a NaN
gradient turns every weight into NaN); ``evsnn train`` skips it with a message.

The step is anything called as ``step(x_window, state) -> (output, new_state)``, with
``state=None`` for the first window unless an initial state is given: every evsnn layer
(``ALIF``, ``EGRU``, ``DeltaGRU``, ``DeltaLSTM``, the readouts) and ``nn.GRU`` / ``nn.LSTM``.
`detach_state` detaches every tensor of a (nested) state and keeps its type.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, TypeVar, cast

import torch
from torch import Tensor

__all__ = ["Window", "detach_state", "tbptt_forward", "tbptt_windows"]

S = TypeVar("S")
Step = Callable[[Tensor, Any], tuple[Any, Any]]


def detach_state(state: S) -> S:
    """``state`` with every tensor detached from the autograd graph, of the same type and structure.

    Tensors, ``None``, numbers and strings, and containers of them: NamedTuples (evsnn's
    ``ALIFState``, ``EGRUState``, ...; ``PackedSequence``), tuples and their subclasses, lists,
    dicts and dataclass instances. Any other object is refused with a ``TypeError`` naming its
    type, because a tensor hidden inside it would keep the graph of the previous window alive.
    """
    if isinstance(state, Tensor):
        return cast(S, state.detach())
    if state is None or isinstance(state, (bool, int, float, complex, str, bytes, torch.dtype, torch.device)):
        return state
    if isinstance(state, tuple):
        items = [detach_state(item) for item in state]
        if hasattr(state, "_fields"):  # a NamedTuple takes its fields as arguments
            return type(state)(*items)
        return type(state)(items)
    if isinstance(state, list):
        return type(state)(detach_state(item) for item in state)
    if isinstance(state, dict):
        return type(state)((key, detach_state(value)) for key, value in state.items())
    if dataclasses.is_dataclass(state) and not isinstance(state, type):
        changes = {f.name: detach_state(getattr(state, f.name)) for f in dataclasses.fields(state) if f.init}
        return dataclasses.replace(state, **changes)
    raise TypeError(
        f"detach_state: cannot look inside a {type(state).__name__}; a state must be built of tensors, None, "
        "numbers, tuples (NamedTuples), lists, dicts or dataclasses"
    )


class Window(NamedTuple):
    """One window of `tbptt_windows`: steps ``start:stop`` of the sequence, the step's
    ``output`` on them and the ``state`` after them (attached to this window's graph; the next
    window starts from a detached copy)."""

    start: int
    stop: int
    output: Any
    state: Any


def _check(x: Tensor, k: int, time_dim: int) -> int:
    if not isinstance(x, Tensor):
        kind = "a PackedSequence" if type(x).__name__ == "PackedSequence" else type(x).__name__
        raise TypeError(
            f"tbptt expects a dense tensor with a time dimension, got {kind} "
            "(pad variable-length sequences to windows of fixed length first)"
        )
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"tbptt window k must be an int >= 1, got {k!r}")
    if not -x.dim() <= time_dim < x.dim():
        raise ValueError(f"time_dim {time_dim} is out of range for an input of shape {tuple(x.shape)}")
    steps = x.shape[time_dim]
    if steps == 0:
        raise ValueError(f"tbptt needs at least one step, got an input of shape {tuple(x.shape)}")
    return steps


def tbptt_windows(step: Step, x: Tensor, k: int, state: Any = None, *, time_dim: int = 0) -> Iterator[Window]:
    """Run ``step`` over ``x`` in windows of ``k`` steps along ``time_dim`` (the last window may be
    shorter), carrying the state exactly and detached from one window to the next.

    Args:
        step: called as ``step(x_window, state) -> (output, new_state)``; an evsnn layer, a
            readout, ``nn.GRU``/``nn.LSTM`` or a function of the user's network.
        x: the input sequence, time along ``time_dim`` (0 for time-first ``[T, B, F]``, 1 for
            ``batch_first`` layers).
        k: window length in steps, ``>= 1``.
        state: the state before the first step (``None``: the step's own initial state). It
            enters the first window as given, so gradients reach a learnt initial state.
        time_dim: the time dimension of ``x``.

    Yields:
        `Window` ``(start, stop, output, state)`` per window, lazily: the next window is
        computed when it is asked for, so a ``backward()`` in between frees this window's graph.
    """
    steps = _check(x, k, time_dim)
    for start in range(0, steps, k):
        stop = min(start + k, steps)
        output, new_state = step(x.narrow(time_dim, start, stop - start), state)
        yield Window(start, stop, output, new_state)
        state = detach_state(new_state)


def tbptt_forward(step: Step, x: Tensor, k: int, state: Any = None, *, time_dim: int = 0) -> tuple[Tensor, Any]:
    """``(output, final_state)`` of ``step`` over the whole of ``x``, run in windows of ``k`` steps.

    The values are those of ``step(x, state)``; the gradient of a loss on them is truncated:
    it flows within each window and not through the state across window boundaries. With
    ``k >= T`` it is the full gradient. The windows' outputs are concatenated along ``time_dim``
    (the output must be a tensor with time along that dimension). Arguments as
    `tbptt_windows`.
    """
    outputs, final = [], None
    for window in tbptt_windows(step, x, k, state, time_dim=time_dim):
        if not isinstance(window.output, Tensor):
            raise TypeError(
                f"tbptt_forward concatenates tensor outputs, got {type(window.output).__name__} "
                "(use tbptt_windows for other outputs)"
            )
        outputs.append(window.output)
        final = window.state
    return torch.cat(outputs, dim=time_dim), final
