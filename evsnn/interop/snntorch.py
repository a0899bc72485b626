"""snntorch drop-in neurons: ALIF, EGRU, DeltaGRU and DeltaLSTM as ``snntorch.SpikingNeuron``s.

These are single-step neurons with snntorch's calling conventions, so they slot into models
written for snntorch (``nn.Sequential(nn.Linear, neuron, nn.Linear, neuron)`` with
``init_hidden=True``, or explicit state threading as in snntorch's recurrent neurons)::

    spk, mem, b = alif(cur, spk, mem, b)                 # ALIF:      ALIFState(v=mem, b=b, s=spk)
    y, c = egru(x, y, c)                                 # EGRU:      EGRUState(c, y)
    h, x_hat, h_hat, m = dgru(x, h, x_hat, h_hat, m)     # DeltaGRU:  DeltaGRUState
    h, c, x_hat, h_hat, m = dlstm(x, h, c, x_hat, h_hat, m)   # DeltaLSTM: DeltaLSTMState

Every step is computed by :mod:`evsnn.functional` (through :mod:`evsnn.nn` cells for the
families that own weights); this module only threads the state the snntorch way:

- the hidden state lives in non-persistent buffers that are tensors, never ``None``; an empty or
  wrongly shaped buffer (a new batch size, a fresh :func:`reset`) is re-allocated from the
  *state's own* initial value (``b = b0`` for ALIF, accumulators at the biases for delta cells),
  never from the input's shape;
- with ``init_hidden=True`` the neuron returns only its output (``output=True``: output and full
  state) and raises snntorch's ``TypeError`` when a state is passed;
- :func:`reset` and :func:`detach_hidden` work on evsnn and snntorch neurons at any depth,
  deep copies included (snntorch's ``utils.reset`` only looks at direct children of nine
  built-in classes through a class-level instance list that deep copies are missing from).

Argument conventions checked against snntorch 1.0.0: ``spike_grad`` accepts every factory of
``snntorch.surrogate`` (their spikes are float32 whatever the input dtype, so they are cast
back to the state's dtype here) and evsnn's :mod:`evsnn.surrogate` objects or names.
Arguments of ``SpikingNeuron`` that have no meaning for a family are not in its signature, so
passing them raises Python's ``TypeError``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from snntorch._neurons.neurons import LIF, SpikingNeuron
from torch import Tensor, nn

from ..functional.alif import ALIFState, alif_initial_state, alif_step
from ..functional.delta import DeltaGRUState, DeltaLSTMState
from ..functional.egru import EGRUState
from ..nn.delta import DeltaGRUCell as _DeltaGRUCell
from ..nn.delta import DeltaLSTMCell as _DeltaLSTMCell
from ..nn.egru import EGRUCell as _EGRUCell
from ..surrogate import MultiGaussian, SnnTorchSurrogate, Surrogate, Triangle, as_surrogate

__all__ = ["ALIF", "EGRU", "DeltaGRU", "DeltaLSTM", "reset", "detach_hidden"]

_MIN_BETA = math.exp(-1.0)  # decay of a one-step time constant: τ ≥ 1 step (SPEC §2)


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


class _StatefulNeuron:
    """Mixin: snntorch-style state buffers around a step of :mod:`evsnn.functional`.

    A subclass sets ``_state_names`` (buffer names in calling order, output first),
    ``_state_type`` (the NamedTuple of :mod:`evsnn.functional`) and ``_state_fields`` (the
    NamedTuple field held by each buffer), and implements ``_initial_state(x)`` and
    ``_step(x, state) -> (out, state)``.
    """

    _state_names: tuple[str, ...] = ()
    _state_fields: tuple[str, ...] = ()
    _state_type: type = tuple

    def _init_state_buffers(self) -> None:
        for name in self._state_names:
            self.register_buffer(name, torch.zeros(0), persistent=False)

    def reset_mem(self) -> tuple[Tensor, ...]:
        """Clear the hidden state; the next call re-allocates it from the initial state.

        Returns the (empty) state buffers, which may be passed as explicit state like the
        tensors returned by snntorch's ``reset_mem``.
        """
        for name in self._state_names:
            buf = getattr(self, name)
            setattr(self, name, torch.zeros(0, dtype=buf.dtype, device=buf.device))
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

    def state(self) -> NamedTuple:
        """The stored state as the :mod:`evsnn.functional` NamedTuple."""
        values = {f: getattr(self, n) for n, f in zip(self._state_names, self._state_fields)}
        return self._state_type(**{f: values[f] for f in self._state_type._fields})

    def _threaded(self, input_: Tensor, passed: tuple[Tensor | None, ...]) -> tuple[Tensor, ...]:
        cls = type(self).__name__
        if not isinstance(input_, Tensor):
            raise TypeError(f"{cls} expects a torch.Tensor input, got {type(input_).__name__}")
        if self.init_hidden and any(p is not None for p in passed):
            raise TypeError(f"When `init_hidden=True`, {cls} expects 1 input argument.")
        for name, value in zip(self._state_names, passed):
            if value is not None:
                if not isinstance(value, Tensor):
                    raise TypeError(f"{cls} state {name!r} must be a tensor, got {type(value).__name__}")
                setattr(self, name, value)
        initial = self._initial_state(input_)
        state = {}
        for name, field, value in zip(self._state_names, self._state_fields, passed):
            buf = getattr(self, name)
            init = getattr(initial, field)
            if value is not None and value.numel() > 0 and value.shape != init.shape:
                raise ValueError(
                    f"{cls} state {name!r} must have shape {tuple(init.shape)} for this input, got {tuple(value.shape)}"
                )
            # An empty buffer (fresh or reset) or a stored one of another batch size starts afresh.
            state[field] = buf if buf.shape == init.shape else init
        out, new_state = self._step(input_, self._state_type(**state))
        for name, field in zip(self._state_names, self._state_fields):
            setattr(self, name, getattr(new_state, field))
        if self.init_hidden and not self.output:
            return out
        return (out,) + self._returned_state()[1:]

    def _returned_state(self) -> tuple[Tensor, ...]:
        return tuple(getattr(self, n) for n in self._state_names)


class ALIF(_StatefulNeuron, LIF):
    """Adaptive multi-timescale LIF (SPEC.md §2) as a snntorch neuron (subclass of ``snntorch.LIF``).

    Takes the input *current* ``I_t`` (put an ``nn.Linear`` in front, as with ``snn.Leaky``)
    and computes, through :func:`evsnn.functional.alif_step`::

        b_t = ρ·b_{t−1} + (1 − ρ)·s_{t−1};    B_t = threshold + adapt_strength·b_t
        mem_t = β·mem_{t−1} + (1 − β)·I_t − B_t·s_{t−1};    s_t = H(mem_t − B_t)

    ``spk, mem, b = alif(cur, spk, mem, b)``; with ``init_hidden=True``: ``spk = alif(cur)``.

    Args:
        beta: snntorch's membrane decay β = exp(−1/τ_m) ∈ [e⁻¹, 1), a number or a per-neuron
            tensor. It is stored as the time constant ``tau_mem`` (learnable with
            ``learn_beta``), which keeps τ_m ≥ 1 whatever the optimiser does; ``alif.beta``
            reads the decay back.
        rho: adaptation decay ρ = exp(−1/τ_adp) ∈ [e⁻¹, 1); default τ_adp = 150 steps.
        threshold: the baseline threshold ``b0`` (SPEC default 0.01, not snntorch's 1.0).
        adapt_strength: SPEC's β, the threshold increase per unit of adaptation (1.8);
            ``adapt_strength=0`` gives a LIF neuron with the fixed threshold ``threshold``.
        linear_features: if given, the neuron is recurrent with all-to-all weights
            (like ``snn.RLeaky(linear_features=...)``): ``I_t += W_rec s_{t−1} + b_rec``.
        spike_grad: a ``snntorch.surrogate`` function or an evsnn surrogate; default
            :class:`evsnn.surrogate.MultiGaussian` (SPEC's, not snntorch's ``atan``).
        reset_mechanism: only ``"subtract"`` — ALIF's reset subtracts the adaptive threshold.
        graded_spikes_factor: the output (and the ``spk`` argument) is ``s_t · factor``.
    """

    _state_names = ("spk", "mem", "b")
    _state_fields = ("s", "v", "b")
    _state_type = ALIFState

    def __init__(
        self,
        beta: float | Tensor = math.exp(-1.0 / 20.0),
        rho: float | Tensor = math.exp(-1.0 / 150.0),
        threshold: float | Tensor = 0.01,
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
    ):
        if reset_mechanism != "subtract":
            raise ValueError(
                "ALIF resets by subtracting its adaptive threshold (SPEC §2); reset_mechanism must be "
                f"'subtract', got {reset_mechanism!r}"
            )
        thr = _as_tensor("threshold", threshold)
        if not bool((thr > 0).all()):
            raise ValueError(f"threshold (b0) must be > 0, got {thr.tolist()}")
        gsf = _as_tensor("graded_spikes_factor", graded_spikes_factor)
        if bool((gsf == 0).any()):
            raise ValueError("graded_spikes_factor must be nonzero (the spike state is recovered as spk / factor)")
        super().__init__(
            beta=beta,
            threshold=thr,
            spike_grad=spike_grad,
            surrogate_disable=surrogate_disable,
            init_hidden=init_hidden,
            learn_beta=learn_beta,
            learn_threshold=learn_threshold,
            reset_mechanism=reset_mechanism,
            output=output,
            graded_spikes_factor=gsf,
            learn_graded_spikes_factor=learn_graded_spikes_factor,
        )
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
        return torch.exp(-1.0 / self.tau_mem.clamp(min=1.0))

    @property
    def rho(self) -> Tensor:
        """Adaptation decay ``exp(−1/τ_adp)``."""
        return torch.exp(-1.0 / self.tau_adapt.clamp(min=1.0))

    def _initial_state(self, x: Tensor) -> ALIFState:
        return alif_initial_state(x, self.threshold.to(x.dtype))

    def _step(self, current: Tensor, state: ALIFState) -> tuple[Tensor, ALIFState]:
        if self.recurrent is not None:
            current = current + self.recurrent(state.s)
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
        spk: Tensor | None = None,
        mem: Tensor | None = None,
        b: Tensor | None = None,
    ):
        # The buffer keeps the core's 0/1 spike state; snntorch's spk argument is graded.
        if isinstance(spk, Tensor) and spk.numel() > 0:
            spk = spk / self.graded_spikes_factor
        return self._threaded(input_, (spk, mem, b))

    def _returned_state(self) -> tuple[Tensor, ...]:
        return (self.spk * self.graded_spikes_factor, self.mem, self.b)


class _CellNeuron(_StatefulNeuron, SpikingNeuron):
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


class EGRU(_CellNeuron):
    """The event-based GRU (SPEC.md §3) as a snntorch neuron; weights as ``torch.nn.GRU``.

    ``spk, mem = egru(x, spk, mem)`` with ``x [B, input_size]``, ``spk`` the event output
    ``y_t = o_t ⊙ c_t`` (zero except where a unit fires, graded by ``c``) and ``mem`` the internal
    state ``c_t``; the step is :func:`evsnn.functional.egru_step` via :class:`evsnn.nn.EGRUCell`.
    With ``init_hidden=True``: ``spk = egru(x)``.

    Args:
        threshold: mean of the per-unit thresholds θ > 0 (SPEC default 0.3), drawn as
            ``threshold_init`` says (``"beta"`` around the mean, or ``"constant"``).
        learn_threshold: θ is learnable (default ``True`` as in the paper); kept > 0 through
            its logarithm, ``egru.threshold`` reads it.
        spike_grad: a ``snntorch.surrogate`` function or an evsnn surrogate on ``c − θ``; default
            :class:`evsnn.surrogate.Triangle` (ε = 0.3).
        reset_mechanism: ``"output"`` (the paper: ``c_t −= y_{t−1}``, default) or
            ``"subtract"`` (alias ``"threshold"``, the EvNN code: ``c_t = c̃_t − o_t θ``).
    """

    _state_names = ("spk", "mem")
    _state_fields = ("y", "c")
    _state_type = EGRUState

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
        super().__init__(
            threshold=threshold,
            spike_grad=spike_grad,
            surrogate_disable=surrogate_disable,
            init_hidden=init_hidden,
            learn_threshold=learn_threshold,
            reset_mechanism=reset_mechanism,
            output=output,
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

    def forward(self, input_: Tensor, spk: Tensor | None = None, mem: Tensor | None = None):
        return self._threaded(input_, (spk, mem))


class _DeltaNeuron(_CellNeuron):
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


class DeltaGRU(_DeltaNeuron):
    """DeltaGRU (SPEC.md §4) as a snntorch neuron; weights as ``torch.nn.GRU``.

    ``h, x_hat, h_hat, m = dgru(x, h, x_hat, h_hat, m)`` (the fields of
    :class:`evsnn.DeltaGRUState`), computed by :func:`evsnn.functional.delta_gru_step`;
    with ``init_hidden=True``: ``h = dgru(x)``. ``threshold`` is Θ_h and ``threshold_x`` Θ_x
    (default: the same). The output is the dense hidden state ``h``: a delta cell does not
    spike, so ``spike_grad``, ``reset_mechanism`` and ``graded_spikes_factor`` do not apply.
    With thresholds 0 the neuron computes ``torch.nn.GRUCell``.
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
        return self._threaded(input_, (h, x_hat, h_hat, m))


class DeltaLSTM(_DeltaNeuron):
    """DeltaLSTM (SPEC.md §4) as a snntorch neuron; weights as ``torch.nn.LSTM``.

    ``h, c, x_hat, h_hat, m = dlstm(x, h, c, x_hat, h_hat, m)`` (the fields of
    :class:`evsnn.DeltaLSTMState`), computed by :func:`evsnn.functional.delta_lstm_step`;
    with ``init_hidden=True``: ``h = dlstm(x)``. Thresholds as :class:`DeltaGRU`.
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
        return self._threaded(input_, (h, c, x_hat, h_hat, m))


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
