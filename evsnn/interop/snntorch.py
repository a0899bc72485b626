"""snntorch drop-in neurons: ALIF, EGRU, DeltaGRU and DeltaLSTM as snntorch neurons.

:class:`ALIF` and :class:`EGRU` are ``snntorch.Leaky`` subclasses: code written for
``snn.Leaky`` runs after swapping the class, and snntorch's own helpers (``utils.reset``,
``Leaky.reset_hidden``/``detach_hidden``, ``backprop.TBPTT``, the ``_final_layer_check`` that
counts a network's outputs) treat them as they treat ``snn.Leaky``::

    mem = alif.init_leaky()                   # or reset_mem(): clears the whole state
    spk, mem = alif(cur, mem)                 # the snn.Leaky form; b stays inside (alif.b)
    spk, mem, b = alif(cur, spk, mem, b)      # the full state, explicit
    spk, mem = egru(x, mem)                   # snn.Leaky form: spk = events y, mem = c
    spk, mem = egru(x, spk, mem)              # full state (y, c)
    h, x_hat, h_hat, m = dgru(x, h, x_hat, h_hat, m)          # DeltaGRU:  DeltaGRUState
    h, c, x_hat, h_hat, m = dlstm(x, h, c, x_hat, h_hat, m)   # DeltaLSTM: DeltaLSTMState

The form is chosen by the number of state arguments (or by keyword: ``mem=`` alone, or every
state by name); any other count raises a ``TypeError`` naming both forms. With
``init_hidden=True`` the neuron returns its output only (``output=True``: ``(spk, mem)``, as
``snn.Leaky``) and raises a ``TypeError`` when a state is passed.

``mem`` of ALIF is the membrane ``v``, of EGRU the internal state ``c``. Like ``snn.Leaky``,
whose whole state is ``mem``, writing a membrane the neuron did not produce (``neuron.mem =
zeros``, as ``Leaky.reset_hidden`` does, or passing such a tensor in the Leaky form) starts a new
sequence from it: the rest of the state returns to its initial value. A detached view of the
neuron's own membrane (``mem.detach()``, or ``Leaky.detach_hidden``'s in-place ``detach_()``)
detaches the whole state, values kept (truncated BPTT).

Every step is computed by :mod:`evsnn.functional` (through :mod:`evsnn.nn` cells for the
families that own weights); this module only threads the state the snntorch way. State lives in
non-persistent buffers that are tensors, never ``None``; an empty or wrongly shaped buffer (a new
batch size, a reset) is re-allocated from the *state's own* initial value (ALIF's as its
``convention`` says, accumulators at the biases for delta cells). :func:`reset` and :func:`detach_hidden` also reach
neurons at any depth and the delta neurons, which snntorch's helpers do not know.

Argument conventions checked against snntorch 1.0.0: ``spike_grad`` accepts every factory of
``snntorch.surrogate`` (their spikes are float32 whatever the input dtype, so they are cast
back to the state's dtype here) and evsnn's :mod:`evsnn.surrogate` objects or names.
Arguments of ``snn.Leaky`` that have no meaning for a family are not in its signature, so
passing them raises Python's ``TypeError``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch
from snntorch._neurons.leaky import Leaky
from snntorch._neurons.neurons import LIF, SpikingNeuron
from torch import Tensor, nn

from ..functional.alif import ALIFState, alif_initial_state, alif_step, decay
from ..functional.delta import DeltaGRUState, DeltaLSTMState
from ..functional.egru import EGRUState
from ..nn.delta import DeltaGRUCell as _DeltaGRUCell
from ..nn.delta import DeltaLSTMCell as _DeltaLSTMCell
from ..nn.egru import EGRUCell as _EGRUCell
from ..surrogate import MultiGaussian, SnnTorchSurrogate, Surrogate, Triangle, as_surrogate

__all__ = ["ALIF", "EGRU", "DeltaGRU", "DeltaLSTM", "reset", "detach_hidden"]

_MIN_BETA = math.exp(-1.0)  # decay of a one-step time constant: τ ≥ 1 step (SPEC §2)
# ALIF's two conventions and the default threshold of each: snntorch's 1.0, SPEC's b0 = 0.01.
_CONVENTIONS = {"snntorch": 1.0, "spec": 0.01}


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


def _decay_to_tau(name: str, decay: Any) -> Tensor:
    """``τ = −1/ln(decay)``, so that ``evsnn.functional.decay(τ)`` gives the decay back."""
    d = _as_tensor(name, decay)
    if not d.is_floating_point():
        d = d.to(torch.get_default_dtype())
    if not bool(((d >= _MIN_BETA) & (d < 1.0)).all()):
        raise ValueError(
            f"{name} is a per-step decay exp(-1/tau) and must lie in [exp(-1), 1) = [{_MIN_BETA:.4f}, 1) "
            f"(time constants of at least one step, SPEC §2), got {d.tolist()}"
        )
    return -1.0 / torch.log(d)


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
    """Mixin: snntorch-style state buffers around a step of :mod:`evsnn.functional`.

    A subclass sets ``_state_names`` (buffer names in the order of the explicit full form,
    output first), ``_state_type`` (the NamedTuple of :mod:`evsnn.functional`) and
    ``_state_fields`` (the NamedTuple field held by each buffer), and implements
    ``_initial_state(x)`` and ``_step(x, state) -> (out, state)``.
    """

    _state_names: tuple[str, ...] = ()
    _state_fields: tuple[str, ...] = ()
    _state_type: type = tuple

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
        """The stored state as the :mod:`evsnn.functional` NamedTuple."""
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
        initial = self._initial_state(input_)
        state = {}
        for name, field in zip(self._state_names, self._state_fields):
            init = getattr(initial, field)
            if name in passed:
                value = passed[name]
                if value.numel() > 0 and value.shape != init.shape:
                    raise ValueError(
                        f"{cls} state {name!r} must have shape {tuple(init.shape)} for this input, "
                        f"got {tuple(value.shape)}"
                    )
                setattr(self, name, value)
            buf = getattr(self, name)
            # An empty buffer (fresh or reset) or a stored one of another batch size starts afresh.
            state[field] = buf if buf.shape == init.shape else init
        out, new_state = self._step(input_, self._state_type(**state))
        for name, field in zip(self._state_names, self._state_fields):
            setattr(self, name, getattr(new_state, field))
        return out

    def _returned_state(self) -> tuple[Tensor, ...]:
        return tuple(getattr(self, n) for n in self._state_names)


class _LeakyForm(_StatefulNeuron):
    """Mixin: the ``snn.Leaky`` calling convention over a multi-part state.

    ``_membrane`` names the buffer that snntorch sees as ``mem``; ``_full_names`` are the public
    names of the explicit full form, in the order of ``_state_names``.
    """

    _membrane: str = ""
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
        setattr(self, self._membrane, value)
        self._membrane_had_graph = value.requires_grad

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
        """``("stored" | "leaky" | "full", {public name: value})`` from a call's state arguments."""
        cls = type(self).__name__
        given = {k: v for k, v in keywords.items() if v is not None}
        if positional and given:
            raise TypeError(f"{cls}: pass the state positionally or by keyword, not both. {self._forms}")
        if not positional:
            if not given:
                return "stored", {}
            if set(given) == {"mem"}:
                return "leaky", given
            if set(given) == set(self._full_names):
                return "full", given
            raise TypeError(f"{cls} got the state arguments {sorted(given)}. {self._forms}")
        if len(positional) == 1:
            return "leaky", {"mem": positional[0]}
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
        if form == "leaky" and given["mem"] is not None:
            self._assign_membrane(given["mem"])
        elif form == "full":
            names = dict(zip(self._full_names, self._state_names))
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


class ALIF(_LeakyForm, Leaky):
    """Adaptive multi-timescale LIF (SPEC.md §2) as a ``snntorch.Leaky`` neuron.

    Takes the input *current* ``I_t`` (put an ``nn.Linear`` in front, as with ``snn.Leaky``) and
    computes, through :func:`evsnn.functional.alif_step`, with the default
    ``convention="snntorch"``::

        b_t = ρ·b_{t−1} + (1 − ρ)·s_{t−1};    B_t = threshold + adapt_strength·b_t
        mem_t = β·mem_{t−1} + I_t − B_t·s_{t−1};    s_t = H(mem_t − B_t)

    with the spike history ``s_{t−1}`` entering the reset and ``b`` without gradient, as
    ``snn.Leaky``'s reset does: with ``adapt_strength=0`` this is ``snn.Leaky`` (subtract reset,
    one step late), values and gradients. ``convention="spec"`` is SPEC §2 and Yin et al.
    exactly: the membrane integrates ``(1 − β)·I_t`` and nothing is detached. Both are the same
    forward dynamics in different voltage units: a "snntorch" neuron with ``(threshold,
    adapt_strength)`` spikes as a "spec" one with ``(threshold·(1−β), adapt_strength·(1−β))``,
    whose ``mem`` is ``(1−β)`` times smaller (``b``, a spike-rate trace, has no units). The
    initial state is SPEC's with "spec" (``b = b0 = threshold``) and snntorch's with "snntorch":
    all zeros, no adaptation before the first spike.

    ``spk, mem = alif(cur, mem)`` (``mem`` is the membrane ``v``; ``b`` and the 0/1 spike state
    stay inside, as ``alif.b`` and ``alif.spk``), or ``spk, mem, b = alif(cur, spk, mem, b)``
    with the full state; with ``init_hidden=True``: ``spk = alif(cur)`` (``output=True``:
    ``spk, mem = alif(cur)``).

    Args:
        beta: membrane decay β = exp(−1/τ_m) ∈ [e⁻¹, 1), a number or a per-neuron tensor; default
            exp(−1/20) ≈ 0.951. Stored as the time constant ``tau_mem`` (learnable with
            ``learn_beta``), which keeps τ_m ≥ 1 whatever the optimiser does; ``alif.beta`` reads
            the decay back.
        rho: adaptation decay ρ = exp(−1/τ_adp) ∈ [e⁻¹, 1); default τ_adp = 150 steps.
        threshold: the base threshold (SPEC's ``b0`` in "spec" units); default snntorch's 1.0
            with ``convention="snntorch"``, SPEC's 0.01 with ``"spec"``. Must be > 0.
        adapt_strength: the threshold increase per unit of the adaptation trace (SPEC's β,
            default 1.8); ``0`` gives a LIF neuron with the fixed threshold ``threshold``.
        linear_features: if given, the neuron is recurrent with all-to-all weights
            (like ``snn.RLeaky(linear_features=...)``): ``I_t += W_rec s_{t−1} + b_rec``.
        spike_grad: a ``snntorch.surrogate`` function, an evsnn surrogate or its name; default
            :class:`evsnn.surrogate.MultiGaussian` (SPEC's, not snntorch's ``atan``).
        surrogate_disable: the Heaviside without gradient (snntorch's option).
        init_hidden: keep the state inside and return only the spikes (``nn.Sequential``).
        learn_beta: learn τ_m. learn_rho: learn τ_adp. learn_threshold: learn the base
            threshold. learn_adapt_strength: learn ``adapt_strength``.
        reset_mechanism: only ``"subtract"`` — ALIF's reset subtracts the adaptive threshold.
        output: with ``init_hidden=True``, return ``(spk, mem)`` instead of ``spk``.
        graded_spikes_factor: the output (and the ``spk`` argument) is ``s_t · factor``.
        learn_graded_spikes_factor: learn that factor.
        convention: ``"snntorch"`` (``mem = β·mem + I``, detached reset; default) or
            ``"spec"`` (``mem = β·mem + (1 − β)·I``, nothing detached: SPEC §2).
        detach_reset: override the convention's choice of passing the spike history to the
            reset and to ``b`` without gradient (snntorch's choice). Measured on snntorch's
            tutorial-5 network (digits, 3 epochs, non-adaptive, atan): test accuracy 0.74 detached,
            identical to ``snn.Leaky``, against 0.46 attached.
    """

    _state_names = ("spk", "v", "b")
    _state_fields = ("s", "v", "b")
    _state_type = ALIFState
    _membrane = "v"
    _full_names = ("spk", "mem", "b")
    _forms = (
        "ALIF takes `spk, mem = alif(cur, mem)` (the snn.Leaky form; b stays inside as alif.b) "
        "or `spk, mem, b = alif(cur, spk, mem, b)` (the full state)"
    )

    def __init__(
        self,
        beta: float | Tensor = math.exp(-1.0 / 20.0),
        rho: float | Tensor = math.exp(-1.0 / 150.0),
        threshold: float | Tensor | None = None,
        adapt_strength: float | Tensor = 1.8,
        linear_features: int | None = None,
        spike_grad: Any = None,
        surrogate_disable: bool = False,
        init_hidden: bool = False,
        learn_beta: bool = False,
        learn_rho: bool = False,
        learn_threshold: bool = False,
        learn_adapt_strength: bool = False,
        reset_mechanism: str = "subtract",
        output: bool = False,
        graded_spikes_factor: float | Tensor = 1.0,
        learn_graded_spikes_factor: bool = False,
        convention: str = "snntorch",
        detach_reset: bool | None = None,
    ):
        if convention not in _CONVENTIONS:
            raise ValueError(f"ALIF convention must be one of {list(_CONVENTIONS)}, got {convention!r}")
        if reset_mechanism != "subtract":
            raise ValueError(
                "ALIF resets by subtracting its adaptive threshold (SPEC §2); reset_mechanism must be "
                f"'subtract', got {reset_mechanism!r}"
            )
        if threshold is None:
            threshold = _CONVENTIONS[convention]
        thr = _as_tensor("threshold", threshold)
        if not bool((thr > 0).all()):
            raise ValueError(f"ALIF threshold must be > 0, got {thr.tolist()}")
        gsf = _as_tensor("graded_spikes_factor", graded_spikes_factor)
        if bool((gsf == 0).any()):
            raise ValueError("graded_spikes_factor must be nonzero (the spike state is recovered as spk / factor)")
        with _unregister_on_error(self):
            # LIF's constructor, not Leaky's: Leaky's only adds its own `mem` buffer and step function.
            LIF.__init__(
                self,
                beta,
                thr,
                spike_grad,
                surrogate_disable,
                init_hidden,
                False,  # inhibition
                learn_beta,
                learn_threshold,
                reset_mechanism,
                False,  # state_quant
                output,
                gsf,
                learn_graded_spikes_factor,
            )
            self.convention = convention
            self.detach_reset = convention == "snntorch" if detach_reset is None else bool(detach_reset)
            self.spike_grad = _resolve_spike_grad(spike_grad, surrogate_disable, MultiGaussian(), self._surrogate_bypass)
            tau_adapt = _decay_to_tau("rho", rho)
            if learn_rho:
                self.tau_adapt = nn.Parameter(tau_adapt)
            else:
                self.register_buffer("tau_adapt", tau_adapt)
            strength = _as_tensor("adapt_strength", adapt_strength)
            if bool((strength < 0).any()):
                raise ValueError(f"adapt_strength must be >= 0, got {strength.tolist()}")
            if learn_adapt_strength:
                self.adapt_strength = nn.Parameter(strength)
            else:
                self.register_buffer("adapt_strength", strength)
            if linear_features is not None:
                if isinstance(linear_features, bool) or not isinstance(linear_features, int) or linear_features <= 0:
                    raise ValueError(f"linear_features must be a positive int or None, got {linear_features!r}")
                self.recurrent = nn.Linear(linear_features, linear_features)
            else:
                self.recurrent = None
            self.linear_features = linear_features
            self._init_state_buffers()

    def _beta_buffer(self, beta: Any, learn_beta: bool) -> None:
        # snntorch stores β itself; we store τ_m = −1/ln β so that τ ≥ 1 can be enforced (SPEC §2).
        tau = _decay_to_tau("beta", beta)
        if learn_beta:
            self.tau_mem = nn.Parameter(tau)
        else:
            self.register_buffer("tau_mem", tau)

    @property
    def beta(self) -> Tensor:  # type: ignore[override]
        """Membrane decay ``exp(−1/τ_m)``."""
        return decay(self.tau_mem)

    @property
    def rho(self) -> Tensor:
        """Adaptation decay ``exp(−1/τ_adp)``."""
        return decay(self.tau_adapt)

    def _initial_state(self, x: Tensor) -> ALIFState:
        # SPEC §2 starts the trace at b0; snntorch starts every state at zero, and b0 = threshold
        # would be a large head start in snntorch's units (threshold 1.0 vs SPEC's 0.01).
        b_initial = self.threshold.to(x.dtype) if self.convention == "spec" else 0.0
        return alif_initial_state(x, b_initial)

    def _step(self, current: Tensor, state: ALIFState) -> tuple[Tensor, ALIFState]:
        if self.recurrent is not None:
            current = current + self.recurrent(state.s)
        if self.convention == "snntorch":
            # alif_step integrates (1 − β)·I (SPEC §2); snn.Leaky integrates I itself.
            current = current / (1.0 - self.beta)
        if self.detach_reset:
            state = state._replace(s=state.s.detach())
        s, new_state = alif_step(
            current,
            state,
            tau_mem=self.tau_mem,
            tau_adapt=self.tau_adapt,
            b0=self.threshold,
            beta=self.adapt_strength,
            surrogate=self.spike_grad,
        )
        return s * self.graded_spikes_factor, new_state

    def forward(
        self,
        input_: Tensor,
        *state: Tensor,
        spk: Tensor | None = None,
        mem: Tensor | None = None,
        b: Tensor | None = None,
    ):
        """``spk, mem = alif(cur, mem)``, ``spk, mem, b = alif(cur, spk, mem, b)``, or with
        ``init_hidden=True`` ``spk = alif(cur)``; see the class docstring."""
        return self._leaky_call(input_, state, {"spk": spk, "mem": mem, "b": b})

    def _state_argument(self, name: str, value: Any) -> Any:
        # The buffer keeps the core's 0/1 spike state; snntorch's spk argument is graded.
        if name == "spk" and isinstance(value, Tensor) and value.numel() > 0:
            return value / self.graded_spikes_factor
        return value

    def _returned_state(self) -> tuple[Tensor, ...]:
        return (self.spk * self.graded_spikes_factor, self.v, self.b)


class _CellNeuron(_StatefulNeuron):
    """Shared plumbing of the families that own weights: an :mod:`evsnn.nn` cell does the step."""

    cell: nn.Module

    def _initial_state(self, x: Tensor) -> NamedTuple:
        if x.dim() != 2:
            raise ValueError(
                f"{type(self).__name__} is a single-step neuron and expects an input of shape "
                f"[batch, {self.cell.input_size}], got shape {tuple(x.shape)}"
            )
        return self.cell.initial_state(x.shape[0])

    def _step(self, x: Tensor, state: NamedTuple) -> tuple[Tensor, NamedTuple]:
        return self.cell(x, state)

    @property
    def input_size(self) -> int:
        return self.cell.input_size

    @property
    def hidden_size(self) -> int:
        return self.cell.hidden_size


_EGRU_RESETS = {"output": "output", "subtract": "threshold", "threshold": "threshold"}


class _EGRUCellWithInitial(_EGRUCell):
    def initial_state(self, batch: int) -> EGRUState:
        z = self.weight_ih.new_zeros(batch, self.hidden_size)
        return EGRUState(z, z)


class EGRU(_LeakyForm, _CellNeuron, Leaky):
    """The event-based GRU (SPEC.md §3) as a ``snntorch.Leaky`` neuron; weights as ``torch.nn.GRU``.

    ``spk, mem = egru(x, mem)`` with ``x [B, input_size]``: ``spk`` is the event output
    ``y_t = o_t ⊙ c_t`` (zero except where a unit fires, graded by ``c``), ``mem`` the internal
    state ``c_t``; the events stay inside as ``egru.spk`` (they feed the gates at the next
    step). The full state: ``spk, mem = egru(x, spk, mem)``. With ``init_hidden=True``:
    ``spk = egru(x)``. The step is :func:`evsnn.functional.egru_step` via
    :class:`evsnn.nn.EGRUCell`. EGRU has no membrane decay: its gates set the timescale, so there
    is no ``beta``; unlike ``snn.Leaky`` it owns its weights, hence ``input_size, hidden_size``.

    Args:
        input_size: features of ``x``.
        hidden_size: number of units.
        bias: use ``bias_ih``/``bias_hh`` (as ``nn.GRU``).
        threshold: mean of the per-unit thresholds θ > 0 (SPEC default 0.3), drawn as
            ``threshold_init`` says (``"beta"`` around the mean, or ``"constant"``).
        threshold_init: ``"beta"`` or ``"constant"``.
        spike_grad: a ``snntorch.surrogate`` function or an evsnn surrogate on ``c − θ``; default
            :class:`evsnn.surrogate.Triangle` (ε = 0.3).
        surrogate_disable: the Heaviside without gradient (snntorch's option).
        init_hidden: keep the state inside and return only the events (``nn.Sequential``).
        learn_threshold: θ is learnable (default ``True`` as in the paper); kept > 0 through
            its logarithm, ``egru.threshold`` reads it.
        reset_mechanism: ``"output"`` (the paper: ``c_t −= y_{t−1}``, default) or
            ``"subtract"`` (alias ``"threshold"``, the EvNN code: ``c_t = c̃_t − o_t θ``).
        output: with ``init_hidden=True``, return ``(spk, mem)`` instead of ``spk``.
    """

    _state_names = ("spk", "c")
    _state_fields = ("y", "c")
    _state_type = EGRUState
    _membrane = "c"
    _full_names = ("spk", "mem")
    _forms = (
        "EGRU takes `spk, mem = egru(x, mem)` (the snn.Leaky form; mem is c, the events stay inside as "
        "egru.spk) or `spk, mem = egru(x, spk, mem)` (the full state)"
    )

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        threshold: float = 0.3,
        threshold_init: str = "beta",
        spike_grad: Any = None,
        surrogate_disable: bool = False,
        init_hidden: bool = False,
        learn_threshold: bool = True,
        reset_mechanism: str = "output",
        output: bool = False,
    ):
        with _unregister_on_error(self):
            LIF.__init__(
                self,
                None,  # beta: EGRU has none (see _beta_buffer)
                threshold,
                spike_grad,
                surrogate_disable,
                init_hidden,
                False,  # inhibition
                False,  # learn_beta
                learn_threshold,
                reset_mechanism,
                False,  # state_quant
                output,
            )
            surrogate = _resolve_spike_grad(spike_grad, surrogate_disable, Triangle(0.3), self._surrogate_bypass)
            self.cell = _EGRUCellWithInitial(
                input_size,
                hidden_size,
                bias,
                threshold=threshold,
                threshold_init=threshold_init,
                reset=_EGRU_RESETS[reset_mechanism],
                surrogate=surrogate,
            )
            self.cell.log_threshold.requires_grad_(bool(learn_threshold))
            self.spike_grad = surrogate
            self._init_state_buffers()

    def _beta_buffer(self, beta: Any, learn_beta: bool) -> None:
        pass

    # SpikingNeuron registers a scalar threshold buffer; EGRU's θ lives in the cell.
    def _threshold_buffer(self, threshold: Any, learn_threshold: bool) -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise TypeError(f"EGRU threshold must be a number (the mean θ), got {type(threshold).__name__}")

    def _reset_cases(self, reset_mechanism: str) -> None:
        if reset_mechanism not in _EGRU_RESETS:
            raise ValueError(f"EGRU reset_mechanism must be one of {sorted(_EGRU_RESETS)}, got {reset_mechanism!r}")

    def _reset_mechanism_buffer(self, reset_mechanism: str) -> None:
        # snntorch encodes its three resets as 0/1/2; EGRU's are not among them.
        pass

    @property
    def reset_mechanism(self) -> str:  # type: ignore[override]
        return self._reset_mechanism

    @reset_mechanism.setter
    def reset_mechanism(self, value: str) -> None:
        self._reset_cases(value)
        self._reset_mechanism = value
        if "cell" in self._modules:
            self.cell.reset = _EGRU_RESETS[value]

    @property
    def threshold(self) -> Tensor:  # type: ignore[override]
        """Per-unit thresholds θ > 0, ``[hidden_size]``."""
        return self.cell.threshold

    @property
    def y(self) -> Tensor:
        """The last events (the same tensor as ``spk``)."""
        return self._buffers["spk"]

    def forward(self, input_: Tensor, *state: Tensor, spk: Tensor | None = None, mem: Tensor | None = None):
        """``spk, mem = egru(x, mem)``, ``spk, mem = egru(x, spk, mem)``, or with
        ``init_hidden=True`` ``spk = egru(x)``; see the class docstring."""
        return self._leaky_call(input_, state, {"spk": spk, "mem": mem})


class _DeltaNeuron(_CellNeuron, SpikingNeuron):
    _cell_type: type = _DeltaGRUCell

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        threshold: float = 0.0,
        threshold_x: float | None = None,
        init_hidden: bool = False,
        output: bool = False,
    ):
        with _unregister_on_error(self):
            super().__init__(threshold=threshold, init_hidden=init_hidden, output=output)
            theta_x = threshold if threshold_x is None else threshold_x
            self.cell = self._cell_type(input_size, hidden_size, bias, theta_x=theta_x, theta_h=threshold)
            self._init_state_buffers()

    # The delta thresholds Θ_x, Θ_h are plain numbers of the cell (a mask has no gradient).
    def _threshold_buffer(self, threshold: Any, learn_threshold: bool) -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise TypeError(f"{type(self).__name__} threshold must be a number, got {type(threshold).__name__}")

    @property
    def threshold(self) -> float:  # type: ignore[override]
        """Θ_h, the hidden-state delta threshold."""
        return self.cell.theta_h

    @property
    def threshold_x(self) -> float:
        """Θ_x, the input delta threshold."""
        return self.cell.theta_x

    def _call(self, input_: Tensor, values: tuple[Tensor | None, ...]):
        passed = {n: v for n, v in zip(self._state_names, values) if v is not None}
        self._reject_state_with_init_hidden(bool(passed))
        out = self._advance(input_, passed)
        if self.init_hidden and not self.output:
            return out
        return (out,) + self._returned_state()


class DeltaGRU(_DeltaNeuron):
    """DeltaGRU (SPEC.md §4) as a snntorch neuron; weights as ``torch.nn.GRU``.

    ``h, x_hat, h_hat, m = dgru(x, h, x_hat, h_hat, m)`` (the fields of
    :class:`evsnn.DeltaGRUState`), computed by :func:`evsnn.functional.delta_gru_step`;
    with ``init_hidden=True``: ``h = dgru(x)``. ``threshold`` is Θ_h and ``threshold_x`` Θ_x
    (default: the same). The output is the dense hidden state ``h``: a delta cell does not
    spike, so ``spike_grad``, ``reset_mechanism`` and ``graded_spikes_factor`` do not apply.
    With thresholds 0 the neuron computes ``torch.nn.GRUCell``.

    Args:
        input_size: features of ``x``.
        hidden_size: number of units.
        bias: use ``bias_ih``/``bias_hh`` (as ``nn.GRU``).
        threshold: Θ_h, the delta threshold of the hidden state (0: every change propagates).
        threshold_x: Θ_x, the delta threshold of the input; default ``threshold``.
        init_hidden: keep the state inside and return only ``h`` (``nn.Sequential``).
        output: with ``init_hidden=True``, return ``h`` and the full state.
    """

    _cell_type = _DeltaGRUCell
    _state_names = ("h", "x_hat", "h_hat", "m")
    _state_fields = ("h", "x_hat", "h_hat", "m")
    _state_type = DeltaGRUState

    def forward(
        self,
        input_: Tensor,
        h: Tensor | None = None,
        x_hat: Tensor | None = None,
        h_hat: Tensor | None = None,
        m: Tensor | None = None,
    ):
        return self._call(input_, (h, x_hat, h_hat, m))


class DeltaLSTM(_DeltaNeuron):
    """DeltaLSTM (SPEC.md §4) as a snntorch neuron; weights as ``torch.nn.LSTM``.

    ``h, c, x_hat, h_hat, m = dlstm(x, h, c, x_hat, h_hat, m)`` (the fields of
    :class:`evsnn.DeltaLSTMState`), computed by :func:`evsnn.functional.delta_lstm_step`;
    with ``init_hidden=True``: ``h = dlstm(x)``. With thresholds 0 the neuron computes
    ``torch.nn.LSTMCell``.

    Args:
        input_size: features of ``x``.
        hidden_size: number of units.
        bias: use ``bias_ih``/``bias_hh`` (as ``nn.LSTM``).
        threshold: Θ_h, the delta threshold of the hidden state (0: every change propagates).
        threshold_x: Θ_x, the delta threshold of the input; default ``threshold``.
        init_hidden: keep the state inside and return only ``h`` (``nn.Sequential``).
        output: with ``init_hidden=True``, return ``h`` and the full state.
    """

    _cell_type = _DeltaLSTMCell
    _state_names = ("h", "c", "x_hat", "h_hat", "m")
    _state_fields = ("h", "c", "x_hat", "h_hat", "m")
    _state_type = DeltaLSTMState

    def forward(
        self,
        input_: Tensor,
        h: Tensor | None = None,
        c: Tensor | None = None,
        x_hat: Tensor | None = None,
        h_hat: Tensor | None = None,
        m: Tensor | None = None,
    ):
        return self._call(input_, (h, c, x_hat, h_hat, m))


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
