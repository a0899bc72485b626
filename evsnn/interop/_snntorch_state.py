"""The snntorch way of threading state, shared by the neurons of [`evsnn.interop.snntorch`][evsnn.interop.snntorch].

State buffers around a step of [`evsnn.functional`][evsnn.functional] (`_StatefulNeuron`), ``snn.Leaky``'s
call forms (`_LeakyForm`), the plumbing of the families whose step is an [`evsnn.nn`][evsnn.nn]
cell (`_CellNeuron`), snntorch's ``spike_grad`` argument, and `reset` /
`detach_hidden` over a whole network. No equation lives here: every step is computed by
[`evsnn.functional`][evsnn.functional] or an [`evsnn.nn`][evsnn.nn] cell.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch
from snntorch._neurons.neurons import SpikingNeuron
from torch import Tensor, nn

from ..stats import LayerStats
from ..surrogate import SnnTorchSurrogate, Surrogate, as_surrogate

__all__ = ["reset", "detach_hidden"]


class _CastSnnTorchSurrogate(SnnTorchSurrogate):
    """A snntorch surrogate closure whose spikes come back in the dtype of their input.

    snntorch's autograd functions return ``(x > 0).float()``, float32 even for float64 ``x``;
    without the cast a float64 model would feed float32 spikes into its next ``nn.Linear``.
    """

    def __call__(self, x: Tensor) -> Tensor:
        return self.fn(x).to(x.dtype)


def _resolve_spike_grad(spike_grad: Any, surrogate_disable: bool, default: Surrogate, bypass: Callable) -> Surrogate:
    """The spike function of a neuron from snntorch's ``spike_grad``/``surrogate_disable`` pair."""
    if surrogate_disable:
        # snntorch's own bypass: the Heaviside with no gradient at all.
        return _CastSnnTorchSurrogate(bypass)
    if spike_grad is None:
        return default
    if isinstance(spike_grad, (Surrogate, str)):
        return as_surrogate(spike_grad)
    if callable(spike_grad):
        return _CastSnnTorchSurrogate(spike_grad)
    raise TypeError(
        "spike_grad must be a snntorch.surrogate function, an evsnn.surrogate.Surrogate, a surrogate name "
        f"or None, got {type(spike_grad).__name__}"
    )


def _as_tensor(name: str, value: Any) -> Tensor:
    if isinstance(value, Tensor):
        return value.detach().clone()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number or a tensor, got {type(value).__name__}")
    return torch.as_tensor(float(value), dtype=torch.get_default_dtype())


@contextmanager
def _unregister_on_error(neuron: nn.Module) -> Iterator[None]:
    """Around a constructor: SpikingNeuron.__init__ registers the neuron in the class-level list
    that snntorch's helpers (utils.reset, Leaky.reset_hidden) walk; a neuron whose construction
    fails must not stay there half-built."""
    try:
        yield
    except BaseException:
        SpikingNeuron.instances[:] = [n for n in SpikingNeuron.instances if n is not neuron]
        raise


class _StatefulNeuron:
    """Mixin: snntorch-style state buffers around a step of [`evsnn.functional`][evsnn.functional].

    A subclass sets ``_state_names`` (buffer names in the order of the explicit full form,
    output first), ``_state_type`` (the NamedTuple of [`evsnn.functional`][evsnn.functional]) and
    ``_state_fields`` (the NamedTuple field held by each buffer), and implements
    ``_initial_state(x)`` and ``_step(x, state) -> (out, state)``.
    """

    _state_names: tuple[str, ...] = ()
    _state_fields: tuple[str, ...] = ()
    _state_type: type = tuple
    # Statistics cost a few reductions per step: recorded only while asked, as
    # evsnn.metrics.profile (and the NeuroBench adapter through it) asks for its pass.
    record_stats: bool = False
    last_stats: LayerStats | None = None
    _stats_on_request = True

    def _init_state_buffers(self) -> None:
        for name in self._state_names:
            self.register_buffer(name, torch.zeros(0), persistent=False)

    def _clear_state(self) -> None:
        for name in self._state_names:
            buf = getattr(self, name)
            setattr(self, name, torch.zeros(0, dtype=buf.dtype, device=buf.device))

    def reset_mem(self) -> tuple[Tensor, ...]:
        """Clear the hidden state; the next call re-allocates it from the initial state.

        Returns the (empty) state buffers, which may be passed as explicit state like the
        tensors returned by snntorch's ``reset_mem``.
        """
        self._clear_state()
        return tuple(getattr(self, n) for n in self._state_names)

    def detach_hidden_state(self) -> None:
        """Cut the graph behind the stored state (truncated BPTT); values are kept."""
        for name in self._state_names:
            setattr(self, name, getattr(self, name).detach())

    def __getstate__(self) -> dict[str, Any]:
        # deepcopy/pickle only accept graph leaves; a state computed in a forward pass is not one.
        # Copies carry the state's values, detached (snntorch's own neurons cannot be copied then).
        state = super().__getstate__().copy()  # type: ignore[misc]
        buffers = state["_buffers"].copy()
        for name in self._state_names:
            if buffers.get(name) is not None:
                buffers[name] = buffers[name].detach()
        state["_buffers"] = buffers
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)  # type: ignore[misc]
        # snntorch's class-level helpers find neurons through SpikingNeuron.instances, which only
        # __init__ fills: a copy registers there like the original.
        SpikingNeuron.instances.append(self)

    def state(self) -> NamedTuple:
        """The stored state as the [`evsnn.functional`][evsnn.functional] NamedTuple."""
        values = {f: getattr(self, n) for n, f in zip(self._state_names, self._state_fields)}
        return self._state_type(**{f: values[f] for f in self._state_type._fields})

    def _reject_state_with_init_hidden(self, passed: bool) -> None:
        if self.init_hidden and passed:
            cls = type(self).__name__
            raise TypeError(
                f"When `init_hidden=True`, {cls} expects 1 input argument: it keeps its state inside "
                f"(reachable as {', '.join('.' + n for n in self._public_names())}); call it as neuron(input_)"
            )

    def _public_names(self) -> tuple[str, ...]:
        return self._state_names

    def _advance(self, input_: Tensor, passed: dict[str, Tensor]) -> Tensor:
        """One step from the stored state, with the buffers in ``passed`` replaced first."""
        cls = type(self).__name__
        if not isinstance(input_, Tensor):
            raise TypeError(f"{cls} expects a torch.Tensor input, got {type(input_).__name__}")
        for name, value in passed.items():
            if not isinstance(value, Tensor):
                raise TypeError(f"{cls} state {name!r} must be a tensor, got {type(value).__name__}")
        buffers = self._buffers  # type: ignore[attr-defined]
        initial = None
        state = {}
        for name, field, shape in zip(self._state_names, self._state_fields, self._state_shapes(input_)):
            if name in passed:
                value = passed[name]
                if value.numel() > 0 and value.shape != shape:
                    raise ValueError(
                        f"{cls} state {name!r} must have shape {tuple(shape)} for this input, got {tuple(value.shape)}"
                    )
                buffers[name] = value
            buf = buffers[name]
            if buf.shape != shape:
                # An empty buffer (fresh or reset) or a stored one of another batch size starts afresh.
                if initial is None:
                    initial = self._initial_state(input_)
                buf = getattr(initial, field)
            state[field] = buf
        before = self._state_type(**state)
        out, new_state = self._step(input_, before)
        for name, field in zip(self._state_names, self._state_fields):
            buffers[name] = getattr(new_state, field)
        if self.record_stats:
            self.last_stats = self._step_stats(input_, before, new_state)
        return out

    def _step_stats(self, input_: Tensor, before: NamedTuple, after: NamedTuple) -> LayerStats:
        """The [`LayerStats`][evsnn.stats.LayerStats] of one step (see [`evsnn.metrics.profile`][evsnn.metrics.profile])."""
        raise NotImplementedError

    def _state_shapes(self, x: Tensor) -> tuple[torch.Size, ...]:
        """The shape of each state buffer for the input ``x``, in the order of ``_state_names``."""
        initial = self._initial_state(x)
        return tuple(getattr(initial, f).shape for f in self._state_fields)

    def _returned_state(self) -> tuple[Tensor, ...]:
        return tuple(getattr(self, n) for n in self._state_names)


class _LeakyForm(_StatefulNeuron):
    """Mixin: the ``snn.Leaky`` calling convention over a multi-part state.

    ``_membrane`` names the buffer that snntorch sees as ``mem``; ``_full_names`` are the public
    names of the explicit full form, in the order of ``_state_names``.
    """

    _membrane: str = ""
    # The state arguments of snntorch's own form (snn.Leaky: mem; snn.RLeaky: spk, mem); it
    # returns (output, mem) and keeps the rest of the state inside.
    _short_names: tuple[str, ...] = ("mem",)
    _full_names: tuple[str, ...] = ()
    _forms: str = ""
    _membrane_had_graph: bool = False

    def _public_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(("mem",) + self._state_names))

    @property
    def mem(self) -> Tensor:
        """snntorch's ``mem``: the state a ``snn.Leaky`` user reads and writes (see the class doc)."""
        return getattr(self, self._membrane)

    @mem.setter
    def mem(self, value: Tensor) -> None:
        self._assign_membrane(value)

    def _assign_membrane(self, value: Tensor) -> None:
        cls = type(self).__name__
        if not isinstance(value, Tensor):
            raise TypeError(f"{cls}.mem must be a tensor, got {type(value).__name__}")
        current = getattr(self, self._membrane)
        if value is current:
            return
        if value.numel() == 0:
            self.reset_mem()
            return
        own = (
            value.shape == current.shape
            and current.numel() > 0
            and value.untyped_storage().data_ptr() == current.untyped_storage().data_ptr()
        )
        if own and not value.requires_grad and current.requires_grad:
            self.detach_hidden_state()  # a detached view of the neuron's own membrane: truncated BPTT
        elif not own:
            # A membrane the neuron did not produce starts a new sequence from it, as it does for
            # snn.Leaky, whose whole state it is (Leaky.reset_hidden writes zeros here).
            self._clear_state()
            self._start_from_membrane(value)
        setattr(self, self._membrane, value)
        self._membrane_had_graph = value.requires_grad

    def _start_from_membrane(self, mem: Tensor) -> None:
        """Set the rest of the state for a sequence that starts from the membrane ``mem``."""

    def reset_mem(self) -> Tensor:  # type: ignore[override]
        """Clear the whole state (``init_leaky()`` calls this); the next call starts afresh.

        Returns the (empty) membrane, which may be passed back as ``mem`` like the tensor
        returned by ``snn.Leaky.reset_mem``.
        """
        self._clear_state()
        self._membrane_had_graph = False
        return self.mem

    def detach_hidden_state(self) -> None:
        super().detach_hidden_state()
        self._membrane_had_graph = False

    def _bind(self, positional: tuple[Any, ...], keywords: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """``("stored" | "short" | "full", {public name: value})`` from a call's state arguments."""
        cls = type(self).__name__
        given = {k: v for k, v in keywords.items() if v is not None}
        if positional and given:
            raise TypeError(f"{cls}: pass the state positionally or by keyword, not both. {self._forms}")
        if not positional:
            if not given:
                return "stored", {}
            if set(given) == set(self._short_names):
                return "short", given
            if set(given) == set(self._full_names):
                return "full", given
            raise TypeError(f"{cls} got the state arguments {sorted(given)}. {self._forms}")
        if len(positional) == len(self._short_names):
            return "short", dict(zip(self._short_names, positional))
        if len(positional) == len(self._full_names):
            return "full", dict(zip(self._full_names, positional))
        raise TypeError(f"{cls} got {len(positional)} state arguments. {self._forms}")

    def _leaky_call(self, input_: Tensor, positional: tuple[Any, ...], keywords: dict[str, Any]):
        form, given = self._bind(positional, keywords)
        self._reject_state_with_init_hidden(form != "stored" and any(v is not None for v in given.values()))
        if self._membrane_had_graph and not self.mem.requires_grad:
            # snntorch's Leaky.detach_hidden detached the membrane in place: the rest follows it.
            self.detach_hidden_state()
        passed: dict[str, Tensor] = {}
        names = dict(zip(self._full_names, self._state_names))
        if form == "short":
            if given.get("mem") is not None:
                self._assign_membrane(given["mem"])
            passed = {names[k]: self._state_argument(k, v) for k, v in given.items() if k != "mem" and v is not None}
        elif form == "full":
            passed = {names[k]: self._state_argument(k, v) for k, v in given.items() if v is not None}
        out = self._advance(input_, passed)
        self._membrane_had_graph = self.mem.requires_grad
        if form == "full":
            return (out,) + self._returned_state()[1:]
        if self.init_hidden and not self.output:
            return out
        return out, self.mem

    def _state_argument(self, name: str, value: Any) -> Any:
        return value


class _CellNeuron(_StatefulNeuron):
    """Shared plumbing of the families that own weights: an [`evsnn.nn`][evsnn.nn] cell does the step."""

    cell: nn.Module

    def _initial_state(self, x: Tensor) -> NamedTuple:
        if x.dim() != 2:
            raise ValueError(
                f"{type(self).__name__} is a single-step neuron and expects an input of shape "
                f"[batch, {self.cell.input_size}], got shape {tuple(x.shape)}"
            )
        return self.cell.initial_state(x.shape[0])

    def _step(self, x: Tensor, state: NamedTuple) -> tuple[Tensor, NamedTuple]:
        return self.cell.step(x, state)

    _gates: int = 3
    _delta_encoded: bool = False

    def _step_stats(self, input_: Tensor, before: NamedTuple, after: NamedTuple) -> LayerStats:
        # One weight row per gate and unit for each input or recurrent event (W_ih, W_hh dense).
        with torch.no_grad():
            batch, hidden, rows = input_.shape[0], self.hidden_size, self._gates * self.hidden_size
            dense = batch * rows * (self.input_size + hidden)
            if self._delta_encoded:
                # The memories change exactly where a delta passed its threshold.
                input_events = (after.x_hat != before.x_hat).sum()
                events = (after.h_hat != before.h_hat).sum()
                recurrent_events = events  # this step's Δh is what multiplies W_hh
            else:
                input_events = (input_ != 0).sum()
                recurrent_events = (before.y != 0).sum()
                events = (after.y != 0).sum()
            fraction = (events / (batch * hidden)).reshape(1).float()
            input_ops = input_events * rows
        extra = {"neurons": hidden, "input_event_ops": input_ops, "delta_encoded": self._delta_encoded}
        return LayerStats(type(self).__name__, fraction, dense, input_ops + recurrent_events * rows, extra=extra)

    @property
    def input_size(self) -> int:
        return self.cell.input_size

    @property
    def hidden_size(self) -> int:
        return self.cell.hidden_size


def _check_module(net: Any, fn: str) -> None:
    if not isinstance(net, nn.Module):
        raise TypeError(f"{fn} expects a torch.nn.Module, got {type(net).__name__}")


def _snntorch_state_buffers(module: nn.Module) -> list[str]:
    # snntorch registers every hidden state (mem, spk, syn, ...) as a non-persistent buffer.
    return [n for n in module._non_persistent_buffers_set if module._buffers.get(n) is not None]


def reset(net: nn.Module) -> nn.Module:
    """Clear the hidden state of every evsnn and snntorch neuron in ``net``, at any depth.

    evsnn neurons re-allocate their initial state at the next call; snntorch neurons get their
    own ``reset_mem()`` (zeros). Every state is detached from the previous graph, so consecutive
    batches never backpropagate into a freed graph. Returns ``net``.
    """
    _check_module(net, "reset")
    for module in net.modules():
        if isinstance(module, _StatefulNeuron):
            module.reset_mem()
        elif isinstance(module, SpikingNeuron):
            if hasattr(module, "reset_mem"):
                module.reset_mem()
            for name in _snntorch_state_buffers(module):
                setattr(module, name, getattr(module, name).detach())
    return net


def detach_hidden(net: nn.Module) -> nn.Module:
    """Detach the hidden state of every evsnn and snntorch neuron in ``net`` from the graph,
    keeping its values (truncated BPTT), at any depth. Returns ``net``."""
    _check_module(net, "detach_hidden")
    for module in net.modules():
        if isinstance(module, _StatefulNeuron):
            module.detach_hidden_state()
        elif isinstance(module, SpikingNeuron):
            for name in _snntorch_state_buffers(module):
                setattr(module, name, getattr(module, name).detach())
    return net
