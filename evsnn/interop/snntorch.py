"""snntorch drop-in neurons: ALIF, EGRU, DeltaGRU and DeltaLSTM as snntorch neurons.

`ALIF` (and `RALIF`, its ``snn.RLeaky`` form) and `EGRU` are
``snntorch.Leaky`` subclasses: code written for ``snn.Leaky`` runs after swapping the class, and snntorch's own helpers (``utils.reset``,
``Leaky.reset_hidden``/``detach_hidden``, ``backprop.TBPTT``, the ``_final_layer_check`` that
counts a network's outputs) treat them as they treat ``snn.Leaky``:

    mem = alif.init_leaky()                   # or reset_mem(): clears the whole state
    spk, mem = alif(cur, mem)                 # the snn.Leaky form; b stays inside (alif.b)
    spk, mem, b = alif(cur, spk, mem, b)      # the full state, explicit
    spk, mem = ralif(cur, spk, mem)           # RALIF: the snn.RLeaky form
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
sequence from it: the rest of the state returns to its initial value, except ALIF's last spike,
which is ``H(mem − threshold)`` as ``snn.Leaky``'s reset reads it. A detached view of the
neuron's own membrane (``mem.detach()``, or ``Leaky.detach_hidden``'s in-place ``detach_()``)
detaches the whole state, values kept (truncated BPTT).

Every step is computed by [`evsnn.functional`][evsnn.functional] (through [`evsnn.nn`][evsnn.nn] cells for the
families that own weights; ALIF's in snntorch's units by
[`evsnn.functional.alif_leaky_dynamics`][evsnn.functional.alif_leaky_dynamics]); this module only
threads the state the snntorch way. State lives in
non-persistent buffers that are tensors, never ``None``; an empty or wrongly shaped buffer (a new
batch size, a reset) is re-allocated from the *state's own* initial value (ALIF's as its
``convention`` says, accumulators at the biases for delta cells). `reset` and `detach_hidden` also reach
neurons at any depth and the delta neurons, which snntorch's helpers do not know.

Argument conventions checked against snntorch 1.0.0: ``spike_grad`` accepts every factory of
``snntorch.surrogate`` (their spikes are float32 whatever the input dtype, so they are cast
back to the state's dtype here) and evsnn's [`evsnn.surrogate`][evsnn.surrogate] objects or names.
Arguments of ``snn.Leaky`` that have no meaning for a family are not in its signature, so
passing them raises Python's ``TypeError``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from snntorch._neurons.leaky import Leaky
from snntorch._neurons.neurons import LIF, SpikingNeuron
from torch import Tensor, nn

from ..functional.alif import (
    ALIFState,
    alif_dynamics,
    alif_initial_state,
    alif_leaky_dynamics,
    decay,
    decay_time_constant,
)
from ..functional.delta import DeltaGRUState, DeltaLSTMState
from ..functional.egru import EGRUState
from ..metrics import synaptic_ops
from ..nn.delta import DeltaGRUCell as _DeltaGRUCell
from ..nn.delta import DeltaLSTMCell as _DeltaLSTMCell
from ..nn.egru import EGRUCell as _EGRUCell
from ..stats import LayerStats
from ..surrogate import MultiGaussian, Surrogate, Triangle, heaviside
from ._snntorch_state import (
    _as_tensor,
    _CellNeuron,
    _LeakyForm,
    _resolve_spike_grad,
    _unregister_on_error,
    detach_hidden,
    reset,
)

__all__ = ["ALIF", "RALIF", "EGRU", "DeltaGRU", "DeltaLSTM", "reset", "detach_hidden"]

_MIN_SPEC_BETA = math.exp(-1.0)  # SPEC §2: the decay of a one-step time constant, τ_m ≥ 1 step
# ALIF's two conventions and the default threshold of each: snntorch's 1.0, SPEC's b0 = 0.01.
_CONVENTIONS = {"snntorch": 1.0, "spec": 0.01}
_LEAKY_RESETS = ("subtract", "zero", "none")


def _decay_to_tau(name: str, decay: Any) -> Tensor:
    """``τ = −1/ln(decay)``, so that ``evsnn.functional.decay(τ)`` gives the decay back."""
    d = _as_tensor(name, decay)
    if not d.is_floating_point():
        d = d.to(torch.get_default_dtype())
    if not bool(((d >= _MIN_SPEC_BETA) & (d < 1.0)).all()):
        raise ValueError(
            f"{name} is a per-step decay exp(-1/tau) and must lie in [exp(-1), 1) = [{_MIN_SPEC_BETA:.4f}, 1) "
            f"(time constants of at least one step, SPEC §2), got {d.tolist()}"
        )
    return decay_time_constant(d)


class _SurrogateSpike(torch.autograd.Function):
    """``H(x)`` forward, ``g(x)`` backward, for an evsnn surrogate, as one autograd node.

    [`evsnn.surrogate.Surrogate`][evsnn.surrogate.Surrogate] differentiates ``H(x) + G(x) − G(x).detach()`` through
    autograd, which evaluates the primitive ``G`` in the forward pass and backpropagates through
    every operation of it. A neuron called once per step pays that on every step; this node
    computes only the spike forward and ``g`` in the backward pass (the same gradient: ``G' = g``),
    as snntorch's own surrogates do. A NaN input has a zero gradient, as with ``Surrogate``.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, surrogate: Surrogate) -> Tensor:
        ctx.save_for_backward(x)
        ctx.surrogate = surrogate
        return heaviside(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        surrogate_grad = torch.nan_to_num(ctx.surrogate.grad(x), nan=0.0)
        if torch.is_grad_enabled():  # create_graph: keep the product differentiable
            return grad * surrogate_grad, None
        return surrogate_grad.mul_(grad), None


def _spike_function(surrogate: Surrogate) -> Any:
    """``surrogate`` itself, or the one-node form of it where its call is ``Surrogate``'s own."""
    if type(surrogate).__call__ is not Surrogate.__call__:
        return surrogate  # snntorch closures and other spike functions keep their own call

    def spike(x: Tensor) -> Tensor:
        return _SurrogateSpike.apply(x, surrogate)

    return spike


class ALIF(_LeakyForm, Leaky):
    """Adaptive multi-timescale LIF (SPEC.md §2) as a ``snntorch.Leaky`` neuron.

    Takes the input *current* ``I_t`` (put an ``nn.Linear`` in front, as with ``snn.Leaky``) and
    computes, with the default ``convention="snntorch"``:

        b_t = ρ·b_{t−1} + (1 − ρ)·s_{t−1};    B_t = threshold + adapt_strength·b_t
        mem_t = β·mem_{t−1} + I_t − B_t·s_{t−1};    s_t = H(mem_t − B_t)

    with the spike history ``s_{t−1}`` entering the reset and ``b`` without gradient, as
    ``snn.Leaky``'s reset does: with ``adapt_strength=0`` this is ``snn.Leaky``, values and
    gradients, for every ``reset_mechanism`` (``"zero"``: ``mem_t = β·(1 − s_{t−1})·mem_{t−1} + I_t``;
    ``"none"``: no reset term). ``convention="spec"`` is SPEC §2 and Yin et al. exactly,
    computed by [`evsnn.functional.alif_dynamics`][evsnn.functional.alif_dynamics]: the membrane integrates ``(1 − β)·I_t``
    and nothing is detached. Both are the same forward dynamics in different voltage units: a
    "snntorch" neuron with ``(threshold, adapt_strength)`` spikes as a "spec" one with
    ``(threshold·(1−β), adapt_strength·(1−β))``, whose ``mem`` is ``(1−β)`` times smaller
    (``b``, a spike-rate trace, has no units). The initial state is SPEC's with "spec" (``b = b0 =
    threshold``) and snntorch's with "snntorch": all zeros, no adaptation before the first spike.

    ``spk, mem = alif(cur, mem)`` (``mem`` is the membrane ``v``; ``b`` and the 0/1 spike state
    stay inside, as ``alif.b`` and ``alif.spk``), or ``spk, mem, b = alif(cur, spk, mem, b)``
    with the full state; with ``init_hidden=True``: ``spk = alif(cur)`` (``output=True``:
    ``spk, mem = alif(cur)``). As an output layer, ``mem`` is the membrane: with
    ``reset_mechanism="none"`` and ``adapt_strength=0`` it is the leaky integral of the input
    current (a non-spiking readout), with the defaults it is reset by each spike, as
    ``snn.Leaky``'s.

    Args:
        beta: membrane decay β, a number or a per-neuron tensor, stored as given (``alif.beta``,
            an ``nn.Parameter`` with ``learn_beta``). As ``snn.Leaky`` does, the forward pass uses
            β clamped to [0, 1], so any β in (0, 1] is the decay it says (a learned β that leaves
            the range acts as its bound). With ``convention="spec"`` β is ``exp(−1/τ_m)`` and must
            lie in [e⁻¹, 1) (τ_m ≥ 1 step, SPEC §2); the forward clamps it there. Default 0.95
            (τ_m ≈ 20 steps).
        rho: adaptation decay ρ = exp(−1/τ_adp) ∈ [e⁻¹, 1); default τ_adp = 150 steps.
        threshold: the base threshold (SPEC's ``b0`` in "spec" units); default snntorch's 1.0
            with ``convention="snntorch"``, SPEC's 0.01 with ``"spec"``. Must be > 0.
        adapt_strength: the threshold increase per unit of the adaptation trace (SPEC's β,
            default 1.8); ``0`` gives a LIF neuron with the fixed threshold ``threshold``.
        linear_features: if given, the neuron is recurrent with all-to-all weights
            (like ``snn.RLeaky(linear_features=...)``): ``I_t += W_rec s_{t−1} + b_rec``;
            `RALIF` takes ``snn.RLeaky``'s arguments and call form.
        spike_grad: a ``snntorch.surrogate`` function, an evsnn surrogate or its name; default
            [`evsnn.surrogate.MultiGaussian`][evsnn.surrogate.MultiGaussian] (SPEC's, not snntorch's ``atan``).
        surrogate_disable: the Heaviside without gradient (snntorch's option).
        init_hidden: keep the state inside and return only the spikes (``nn.Sequential``).
        learn_beta: learn β. learn_rho: learn τ_adp. learn_threshold: learn the base
            threshold. learn_adapt_strength: learn ``adapt_strength``.
        reset_mechanism: ``"subtract"`` (subtract the adaptive threshold ``B_t``; default),
            ``"zero"`` or ``"none"``, as ``snn.Leaky`` defines them; ``"spec"`` only subtracts.
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
    # snn.Leaky's "zero" reset clears the decayed membrane only; snn.RLeaky's clears the new value.
    _zero_reset_clears_input = False

    def __init__(
        self,
        beta: float | Tensor = 0.95,
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
        if reset_mechanism not in _LEAKY_RESETS:
            raise ValueError(f"ALIF reset_mechanism must be one of {list(_LEAKY_RESETS)}, got {reset_mechanism!r}")
        if convention == "spec" and reset_mechanism != "subtract":
            raise ValueError(
                "ALIF with convention='spec' resets by subtracting its adaptive threshold (SPEC §2); "
                f"reset_mechanism must be 'subtract', got {reset_mechanism!r}"
            )
        b = _as_tensor("beta", beta)
        if not bool(torch.isfinite(b).all()):
            raise ValueError(f"ALIF beta must be finite, got {b.tolist()}")
        if convention == "spec" and not bool(((b >= _MIN_SPEC_BETA) & (b < 1.0)).all()):
            raise ValueError(
                f"with convention='spec', beta is exp(-1/tau_mem) and must lie in [exp(-1), 1) = "
                f"[{_MIN_SPEC_BETA:.4f}, 1) (time constants of at least one step, SPEC §2), got {b.tolist()}"
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
                b,
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
            self.spike_grad = _resolve_spike_grad(
                spike_grad, surrogate_disable, MultiGaussian(), self._surrogate_bypass
            )
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
            self.recurrent = self._recurrent_module(linear_features)
            self.linear_features = linear_features
            self._init_state_buffers()

    def _recurrent_module(self, linear_features: int | None) -> nn.Module | None:
        if linear_features is None:
            return None
        if isinstance(linear_features, bool) or not isinstance(linear_features, int) or linear_features <= 0:
            raise ValueError(f"linear_features must be a positive int or None, got {linear_features!r}")
        return nn.Linear(linear_features, linear_features)

    @property
    def tau_mem(self) -> Tensor:
        """Membrane time constant ``−1/ln β`` in steps (SPEC §2's τ_m), read from β."""
        return decay_time_constant(self.beta.detach())

    @property
    def rho(self) -> Tensor:
        """Adaptation decay ``exp(−1/τ_adp)``."""
        return decay(self.tau_adapt)

    def _initial_state(self, x: Tensor) -> ALIFState:
        # SPEC §2 starts the trace at b0; snntorch starts every state at zero, and b0 = threshold
        # would be a large head start in snntorch's units (threshold 1.0 vs SPEC's 0.01).
        b_initial = self.threshold.to(x.dtype) if self.convention == "spec" else 0.0
        return alif_initial_state(x, b_initial)

    def _state_shapes(self, x: Tensor) -> tuple[torch.Size, ...]:
        return (x.shape,) * len(self._state_names)

    def _step(self, current: Tensor, state: ALIFState) -> tuple[Tensor, ALIFState]:
        out_dtype = current.dtype
        compute = state.v.dtype
        if self.recurrent is not None:
            current = current + self.recurrent(state.s.to(out_dtype) * self.graded_spikes_factor)
        if current.dtype != compute:
            current = current.to(compute)
        if self.detach_reset:
            state = state._replace(s=state.s.detach())
        rho = decay(self.tau_adapt.to(compute))
        if self.convention == "snntorch":
            s, new_state = alif_leaky_dynamics(
                current,
                state,
                self.beta.clamp(0.0, 1.0).to(compute),
                rho,
                self.threshold.to(compute),
                self.adapt_strength.to(compute),
                self.reset_mechanism,
                _spike_function(self.spike_grad),
                self._zero_reset_clears_input,
            )
        else:
            alpha = self.beta.clamp(_MIN_SPEC_BETA, 1.0).to(compute)
            threshold, strength = self.threshold.to(compute), self.adapt_strength.to(compute)
            s, new_state, _ = alif_dynamics(
                current, state, alpha, rho, threshold, strength, _spike_function(self.spike_grad)
            )
        return s.to(out_dtype) * self.graded_spikes_factor, new_state

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

    def _start_from_membrane(self, mem: Tensor) -> None:
        # snn.Leaky resets a membrane it is given by H(mem − threshold): a membrane above the
        # threshold is reset at the next step as if it had just spiked.
        if self.convention == "snntorch":
            with torch.no_grad():
                self._buffers["spk"] = heaviside(mem - self.threshold.to(mem.dtype))

    def _step_stats(self, input_: Tensor, before: ALIFState, after: ALIFState) -> LayerStats:
        # The neuron's own synapses are its recurrence only (the Linear before it is a layer of
        # its own); the last spikes drive it, one weight row each (synaptic_ops).
        with torch.no_grad():
            batch = input_.shape[0]
            neurons = input_[0].numel()
            events = (after.s != 0).sum()
            if self.recurrent is None:
                dense, rec_ops = 0, torch.zeros((), dtype=torch.long)
            elif isinstance(self.recurrent, _OneToOne):
                dense, rec_ops = batch * neurons, (before.s != 0).sum()
            else:
                dense, rec_ops = synaptic_ops(self.recurrent, before.s)
            fraction = (events / (batch * neurons)).reshape(1).float()
        extra = {"neurons": neurons, "input_event_ops": 0, "binary_events": True}
        return LayerStats(type(self).__name__, fraction, dense, rec_ops, extra=extra)

    def _state_argument(self, name: str, value: Any) -> Any:
        # The buffer keeps the core's 0/1 spike state; snntorch's spk argument is graded.
        if name == "spk" and isinstance(value, Tensor) and value.numel() > 0:
            return value / self.graded_spikes_factor
        return value

    def _returned_state(self) -> tuple[Tensor, ...]:
        return (self.spk * self.graded_spikes_factor, self.v, self.b)


class _OneToOne(nn.Module):
    """``snn.RLeaky(all_to_all=False)``'s recurrence: each neuron's spike scaled by ``V``."""

    def forward(self, spk: Tensor) -> Tensor:
        return spk * self.V


class RALIF(ALIF):
    """ALIF with ``snn.RLeaky``'s recurrence, arguments and call form.

    ``snn.RLeaky`` code runs after swapping the class:

        lif = RALIF(beta=0.9, linear_features=n)       # or all_to_all=False, V=...
        spk, mem = lif.init_rleaky()
        spk, mem = lif(cur, spk, mem)                  # b stays inside (lif.b)
        spk, mem, b = lif(cur, spk, mem, b)            # the full state

    The recurrent input is ``snn.RLeaky``'s: the last output spikes through ``lif.recurrent``
    (an ``nn.Linear`` with ``linear_features``, an ``nn.Conv2d`` with ``conv2d_channels`` and
    ``kernel_size``, or ``spk · V`` with ``all_to_all=False``), with their gradient:

        mem_t = β·mem_{t−1} + I_t + recurrent(s_{t−1}) − B_t·s_{t−1}

    with ALIF's adaptive threshold ``B_t`` (see `ALIF`); ``adapt_strength=0`` is
    ``snn.RLeaky``, values and gradients. ``reset_mechanism="zero"`` clears the whole new value
    after a spike, as ``snn.RLeaky`` does (``snn.Leaky`` keeps the input).

    Args:
        beta: membrane decay β, clamped to [0, 1] in the forward pass as ``snn.RLeaky`` does; a
            number or a per-neuron tensor; default 0.95.
        V: the one-to-one recurrent weight (``all_to_all=False``), a number or per-neuron tensor.
        all_to_all: dense (``linear_features``) or convolutional (``conv2d_channels``,
            ``kernel_size``) recurrent weights; ``False``: one-to-one through ``V``.
        linear_features: the number of neurons, for an ``nn.Linear`` recurrence.
        conv2d_channels: channels of a convolutional recurrence (input ``[B, C, H, W]``).
        kernel_size: kernel of that ``nn.Conv2d`` (padded to keep the shape).
        threshold: the base threshold; default 1.0 (snntorch's). Must be > 0.
        spike_grad: a ``snntorch.surrogate`` function, an evsnn surrogate or its name; default
            [`evsnn.surrogate.MultiGaussian`][evsnn.surrogate.MultiGaussian].
        surrogate_disable: the Heaviside without gradient (snntorch's option).
        init_hidden: keep the state inside and return only the spikes.
        learn_beta: learn β. learn_threshold: learn the base threshold.
        learn_recurrent: learn the recurrent weights (default ``True``, as ``snn.RLeaky``).
        reset_mechanism: ``"subtract"``, ``"zero"`` or ``"none"``, as ``snn.RLeaky`` defines them.
        output: with ``init_hidden=True``, return ``(spk, mem)`` instead of ``spk``.
        rho: adaptation decay ρ = exp(−1/τ_adp) ∈ [e⁻¹, 1); default τ_adp = 150 steps.
        adapt_strength: the threshold increase per unit of the adaptation trace (default 1.8).
        learn_rho: learn τ_adp. learn_adapt_strength: learn ``adapt_strength``.
        detach_reset: pass the spike history to the reset and to ``b`` without gradient
            (default ``True``, as snntorch's reset); the recurrent input keeps its gradient.
    """

    _short_names = ("spk", "mem")
    _forms = (
        "RALIF takes `spk, mem = lif(cur, spk, mem)` (the snn.RLeaky form; b stays inside as lif.b) "
        "or `spk, mem, b = lif(cur, spk, mem, b)` (the full state)"
    )
    _zero_reset_clears_input = True

    def __init__(
        self,
        beta: float | Tensor = 0.95,
        V: float | Tensor = 1.0,
        all_to_all: bool = True,
        linear_features: int | None = None,
        conv2d_channels: int | None = None,
        kernel_size: int | tuple[int, int] | None = None,
        threshold: float | Tensor = 1.0,
        spike_grad: Any = None,
        surrogate_disable: bool = False,
        init_hidden: bool = False,
        learn_beta: bool = False,
        learn_threshold: bool = False,
        learn_recurrent: bool = True,
        reset_mechanism: str = "subtract",
        output: bool = False,
        rho: float | Tensor = math.exp(-1.0 / 150.0),
        adapt_strength: float | Tensor = 1.8,
        learn_rho: bool = False,
        learn_adapt_strength: bool = False,
        detach_reset: bool | None = None,
    ):
        conv = conv2d_channels is not None or kernel_size is not None
        if all_to_all:
            if linear_features is None and not conv:
                raise TypeError(
                    "RALIF with all_to_all=True needs linear_features (an nn.Linear recurrence) or conv2d_channels "
                    "and kernel_size (an nn.Conv2d one), as snn.RLeaky; got none of them"
                )
            if linear_features is not None and conv:
                raise TypeError("RALIF takes linear_features or (conv2d_channels, kernel_size), not both")
            if conv and (conv2d_channels is None or kernel_size is None):
                raise TypeError(
                    f"RALIF needs both conv2d_channels and kernel_size, got conv2d_channels={conv2d_channels!r}, "
                    f"kernel_size={kernel_size!r}"
                )
        elif linear_features is not None or conv:
            raise TypeError(
                "RALIF with all_to_all=False scales each spike by V; linear_features, conv2d_channels and "
                "kernel_size must be None"
            )
        with _unregister_on_error(self):
            super().__init__(
                beta=beta,
                rho=rho,
                threshold=threshold,
                adapt_strength=adapt_strength,
                linear_features=linear_features,
                spike_grad=spike_grad,
                surrogate_disable=surrogate_disable,
                init_hidden=init_hidden,
                learn_beta=learn_beta,
                learn_rho=learn_rho,
                learn_threshold=learn_threshold,
                learn_adapt_strength=learn_adapt_strength,
                reset_mechanism=reset_mechanism,
                output=output,
                detach_reset=detach_reset,
            )
            self.all_to_all = bool(all_to_all)
            self.conv2d_channels = conv2d_channels
            self.kernel_size = kernel_size
            if not all_to_all:
                # V belongs to the neuron and to its recurrence, as in snn.RLeaky (same names in state_dict).
                self.recurrent = _OneToOne()
                weight = _as_tensor("V", V)
                if learn_recurrent:
                    self.V = self.recurrent.V = nn.Parameter(weight)
                else:
                    self.register_buffer("V", weight)
                    self.recurrent.register_buffer("V", weight)
            elif conv:
                k = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
                self.recurrent = nn.Conv2d(conv2d_channels, conv2d_channels, k, padding=(k[0] // 2, k[1] // 2))
            for p in self.recurrent.parameters():
                p.requires_grad_(bool(learn_recurrent))

    def init_rleaky(self) -> tuple[Tensor, Tensor]:
        """Clear the whole state; returns the (empty) ``spk, mem`` to pass to the first call, as
        ``snn.RLeaky.init_rleaky`` does."""
        self.reset_mem()
        return self.spk, self.mem


_EGRU_RESETS = {"output": "output", "subtract": "threshold", "threshold": "threshold"}


class EGRU(_LeakyForm, _CellNeuron, Leaky):
    """The event-based GRU (SPEC.md §3) as a ``snntorch.Leaky`` neuron; weights as ``torch.nn.GRU``.

    ``spk, mem = egru(x, mem)`` with ``x [B, input_size]``: ``spk`` is the event output
    ``y_t = o_t ⊙ c_t`` (zero except where a unit fires, graded by ``c``), ``mem`` the internal
    state ``c_t``; the events stay inside as ``egru.spk`` (they feed the gates at the next
    step). The full state: ``spk, mem = egru(x, spk, mem)``. With ``init_hidden=True``:
    ``spk = egru(x)``. The step is [`evsnn.functional.egru_step`][evsnn.functional.egru_step] via
    [`evsnn.nn.EGRUCell`][evsnn.nn.EGRUCell]. EGRU has no membrane decay: its gates set the timescale, so there
    is no ``beta``; unlike ``snn.Leaky`` it owns its weights, hence ``input_size, hidden_size``.

    As an output layer, ``mem`` is ``c``: a GRU state, a gated mix of ``c_{t−1}`` and a
    ``tanh`` candidate, so it stays within about (−1, 1), where ``snn.Leaky``'s membrane
    integrates an unbounded current. A loss that reads ``mem`` as logits (snntorch tutorial 5's
    cross-entropy) therefore sees logits of at most about ±1: the swapped network learns, more
    slowly per step than with ``snn.Leaky``: on the 8×8 digits in tutorial 5's loop (hidden
    ``snn.Leaky``, output neuron swapped; 3 seeds) 0.76 ± 0.06 test accuracy by spike count
    against 0.92 ± 0.01 for ``snn.Leaky`` after 20 epochs, 0.26 ± 0.11 against 0.48 ± 0.08
    after 3. Where the readout must learn at ``snn.Leaky``'s pace, keep
    EGRU for hidden layers and read out with ``snn.Leaky``, `ALIF` or an ``nn.Linear``.

    The defaults are those of [`evsnn.nn.EGRU`][evsnn.nn.EGRU] (per-unit thresholds drawn
    log-uniformly around 0.03, so some units fire whatever the scale of the input) with
    snntorch's default reset, ``"subtract"``: an event subtracts θ and keeps the rest of ``c``.

    Args:
        input_size: features of ``x``.
        hidden_size: number of units.
        bias: use ``bias_ih``/``bias_hh`` (as ``nn.GRU``).
        threshold: typical per-unit threshold θ > 0 (default 0.03), drawn as ``threshold_init``
            says: the geometric mean of the ``"log_uniform"`` draw (three decades), the mean of
            the ``"beta"`` draw, the value of ``"constant"``.
        threshold_init: ``"log_uniform"`` (default), ``"beta"`` or ``"constant"``.
        spike_grad: a ``snntorch.surrogate`` function or an evsnn surrogate on ``c − θ``; default
            [`evsnn.surrogate.Triangle`][evsnn.surrogate.Triangle] (ε = 0.3).
        surrogate_disable: the Heaviside without gradient (snntorch's option).
        init_hidden: keep the state inside and return only the events (``nn.Sequential``).
        learn_threshold: θ is learnable (default ``True`` as in the paper); kept > 0 through
            its logarithm, ``egru.threshold`` reads it.
        reset_mechanism: ``"subtract"`` (default, snntorch's; alias ``"threshold"``, the EvNN
            code: ``c_t = c̃_t − o_t θ``) or ``"output"`` (the paper's equations:
            ``c_t −= y_{t−1}``, the whole value).
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
        threshold: float = 0.03,
        threshold_init: str = "log_uniform",
        spike_grad: Any = None,
        surrogate_disable: bool = False,
        init_hidden: bool = False,
        learn_threshold: bool = True,
        reset_mechanism: str = "subtract",
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
            self.cell = _EGRUCell(
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
    def reset_mechanism(self) -> str:
        return self._reset_mechanism

    @reset_mechanism.setter
    def reset_mechanism(self, value: str) -> None:
        self._reset_cases(value)
        self._reset_mechanism = value
        if "cell" in self._modules:
            self.cell.reset = _EGRU_RESETS[value]

    @property
    def threshold(self) -> Tensor:
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
    def threshold(self) -> float:
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
        # The output h is the state's first field: returned once, so that the call unpacks into
        # the same names it takes, as snntorch's neurons do.
        return self._returned_state()


class DeltaGRU(_DeltaNeuron):
    """DeltaGRU (SPEC.md §4) as a snntorch neuron; weights as ``torch.nn.GRU``.

    ``h, x_hat, h_hat, m = dgru(x, h, x_hat, h_hat, m)`` (the fields of
    [`evsnn.DeltaGRUState`][evsnn.DeltaGRUState]), computed by [`evsnn.functional.delta_gru_step`][evsnn.functional.delta_gru_step];
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
        output: with ``init_hidden=True``, return the full state (``h`` first) instead of ``h``.
    """

    _cell_type = _DeltaGRUCell
    _gates = 3
    _delta_encoded = True
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
    [`evsnn.DeltaLSTMState`][evsnn.DeltaLSTMState]), computed by [`evsnn.functional.delta_lstm_step`][evsnn.functional.delta_lstm_step];
    with ``init_hidden=True``: ``h = dlstm(x)``. With thresholds 0 the neuron computes
    ``torch.nn.LSTMCell``.

    Args:
        input_size: features of ``x``.
        hidden_size: number of units.
        bias: use ``bias_ih``/``bias_hh`` (as ``nn.LSTM``).
        threshold: Θ_h, the delta threshold of the hidden state (0: every change propagates).
        threshold_x: Θ_x, the delta threshold of the input; default ``threshold``.
        init_hidden: keep the state inside and return only ``h`` (``nn.Sequential``).
        output: with ``init_hidden=True``, return the full state (``h`` first) instead of ``h``.
    """

    _cell_type = _DeltaLSTMCell
    _gates = 4
    _delta_encoded = True
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
