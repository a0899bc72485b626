"""Training-time sparsity regularisers: add their value to the task loss.

- `EGRUActivityRegularizer` — EGRU (Subramoney et al., ICLR 2023): mean event rate
  ``ā`` towards a target, ``λ·(ā − a*)²`` (or only above it: ``λ·max(0, ā − a*)²``);
- `FiringRateRegularizer` — spiking (ALIF) layers: per-neuron firing rate towards a
  target, ``λ·mean_j (r_j − r*)²`` (the firing-rate regulariser of Bellec et al., 2018/2020,
  averaged over neurons instead of summed so λ does not depend on the layer width);
- `DeltaL1Regularizer` — delta cells (SPEC §4, Neil et al. 2017): ``β·Σ|Δh|`` on the
  hidden deltas, recomputed differentiably from the layer's output so no second forward pass
  is needed.

Every loss is differentiable with respect to the layer's parameters: the spike and event
indicators carry the layer's surrogate pseudo-derivative, and the deltas are differences of
outputs (their masks are piecewise constant, as in the reference).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .functional.delta import DeltaTrace, check_delta_rule, delta_encode
from .functional.egru import EGRUTrace
from .nn import EGRU, DeltaGRU, DeltaLSTM
from .nn._stack import single_direction_state

__all__ = [
    "event_indicator",
    "rate_penalty",
    "hidden_deltas",
    "delta_l1",
    "EGRUActivityRegularizer",
    "FiringRateRegularizer",
    "DeltaL1Regularizer",
]

_REDUCTIONS = ("sum", "mean")


def _check_tensor(name: str, x: Any) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor (it carries the gradient), got {x.dtype}")
    return x


def _check_rate(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a rate in [0, 1], got {value!r}")
    return float(value)


def _check_strength(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"strength must be a number, got {type(value).__name__}")
    if not value >= 0.0 or value == float("inf"):
        raise ValueError(f"strength must be a finite number >= 0, got {value!r}")
    return float(value)


def event_indicator(y: Tensor) -> Tensor:
    """``1[y ≠ 0]`` whose gradient flows through the event values: ``y / sg(y)`` at events, 0
    elsewhere (``sg`` = stop-gradient).

    For an EGRU output ``y = o ⊙ c`` this is ``o`` at events with gradient ``∂o + ∂c / c``, so
    the surrogate pseudo-derivative of ``o`` is kept. Units without an event contribute no
    gradient: their ``c`` is not visible in ``y``. Use the layer's trace for that.
    """
    y = _check_tensor("y", y)
    nz = y != 0
    safe = torch.where(nz, y.detach(), torch.ones_like(y))
    return torch.where(nz, y / safe, torch.zeros_like(y))


def rate_penalty(rate: Tensor, target: float, one_sided: bool = False) -> Tensor:
    """``(rate − target)²``, or ``max(0, rate − target)²`` when ``one_sided``; mean over entries."""
    diff = rate - target
    if one_sided:
        diff = torch.relu(diff)
    return (diff * diff).mean()


class EGRUActivityRegularizer(nn.Module):
    """EGRU activity regulariser: ``strength · (ā − target)²`` with ``ā`` the mean event rate.

    ``forward(y, layer=None, trace=None)``:

    - from the event output ``y`` alone (any layout): ``ā = mean(event_indicator(y))``; the
      gradient reaches the parameters through the units that emitted an event (it lowers
      activity; it can raise it only by strengthening existing events);
    - with ``trace`` (an [`EGRUTrace`][evsnn.functional.EGRUTrace] of the same pass, e.g. from
      [`evsnn.metrics.reference_traces`][evsnn.metrics.reference_traces]) and the ``layer``:
      ``ā = mean(surrogate(c − θ))``, whose gradient also reaches units near threshold.

    ``one_sided=True`` penalises only rates above the target. The value of ``ā`` equals the
    mean of the layer's ``last_stats.event_fraction``.
    """

    def __init__(self, target: float = 0.05, strength: float = 1.0, *, one_sided: bool = False):
        super().__init__()
        self.target = _check_rate("target", target)
        self.strength = _check_strength(strength)
        self.one_sided = bool(one_sided)

    def extra_repr(self) -> str:
        return f"target={self.target}, strength={self.strength}, one_sided={self.one_sided}"

    def rate(self, y: Tensor, layer: nn.Module | None = None, trace: EGRUTrace | None = None) -> Tensor:
        """The differentiable mean event rate ``ā`` (a scalar tensor)."""
        if trace is None:
            return event_indicator(y).mean()
        if not isinstance(trace, EGRUTrace):
            raise TypeError(f"trace must be an EGRUTrace, got {type(trace).__name__}")
        if not isinstance(layer, EGRU):
            raise TypeError(f"a trace needs its EGRU layer (for θ and the surrogate), got {type(layer).__name__}")
        return layer.surrogate(trace.c_pre - layer.threshold).mean()

    def forward(self, y: Tensor, layer: nn.Module | None = None, trace: EGRUTrace | None = None) -> Tensor:
        return self.strength * rate_penalty(self.rate(y, layer, trace), self.target, self.one_sided)


class FiringRateRegularizer(nn.Module):
    """Firing-rate regulariser for spiking layers (ALIF): ``strength · mean_j (r_j − target)²``.

    ``forward(spikes)`` with ``spikes`` ``[..., N]`` (any layout with units last, e.g. an ALIF
    output in either ``batch_first`` mode): ``r_j`` is neuron j's mean spikes per step over all
    other dimensions. The spikes carry the surrogate pseudo-derivative of the layer, so the
    penalty's gradient reaches the weights and time constants. ``per_neuron=False`` uses the
    population rate instead; ``one_sided=True`` penalises only rates above the target.
    """

    def __init__(
        self, target: float = 0.02, strength: float = 1.0, *, per_neuron: bool = True, one_sided: bool = False
    ):
        super().__init__()
        self.target = _check_rate("target", target)
        self.strength = _check_strength(strength)
        self.per_neuron = bool(per_neuron)
        self.one_sided = bool(one_sided)

    def extra_repr(self) -> str:
        return (
            f"target={self.target}, strength={self.strength}, per_neuron={self.per_neuron}, one_sided={self.one_sided}"
        )

    def rates(self, spikes: Tensor) -> Tensor:
        """Per-neuron rates ``[N]`` (or the population rate, a scalar)."""
        spikes = _check_tensor("spikes", spikes)
        if spikes.dim() < 1 or spikes.shape[-1] == 0:
            raise ValueError(f"spikes must have units in the last dimension, got shape {tuple(spikes.shape)}")
        if not self.per_neuron:
            return spikes.mean()
        return spikes.reshape(-1, spikes.shape[-1]).mean(dim=0)

    def forward(self, spikes: Tensor) -> Tensor:
        return self.strength * rate_penalty(self.rates(spikes), self.target, self.one_sided)


def hidden_deltas(
    output: Tensor,
    theta_h: float | Tensor,
    h0: Tensor | None = None,
    h_hat0: Tensor | None = None,
    delta_rule: str = "strict",
) -> Tensor:
    """The hidden deltas ``Δh`` of a delta cell, recomputed differentiably from its output.

    ``output`` is the time-first hidden sequence ``h [T, B, H]``. The cell's step t encodes
    ``h_{t−1}`` against the memory ``ĥ_{t−1}`` (SPEC §4):

        Δh = (h_{t−1} − ĥ) ⊙ 1[|h_{t−1} − ĥ| > Θ_h],   ĥ ← ĥ + Δh

    starting from ``h_{−1} = h0`` and ``ĥ = h_hat0`` (zeros by default, as the layer's initial
    state). ``delta_rule="inclusive"`` uses ``≥`` as the layer option of that name. The result
    equals ``DeltaTrace.delta_h`` of the same pass, ``[T, B, H]``.
    """
    check_delta_rule(delta_rule)
    output = _check_tensor("output", output)
    if output.dim() != 3:
        raise ValueError(f"output must be a time-first hidden sequence [T, B, H], got shape {tuple(output.shape)}")
    prev = output.new_zeros(output.shape[1:]) if h0 is None else h0
    h_hat = output.new_zeros(output.shape[1:]) if h_hat0 is None else h_hat0
    for name, t in (("h0", prev), ("h_hat0", h_hat)):
        if tuple(t.shape) != tuple(output.shape[1:]):
            raise ValueError(f"{name} must have shape {tuple(output.shape[1:])}, got {tuple(t.shape)}")
    deltas = []
    for t in range(output.shape[0]):
        dh, h_hat = delta_encode(prev, h_hat, theta_h, delta_rule)
        deltas.append(dh)
        prev = output[t]
    return torch.stack(deltas)


def delta_l1(
    output: Tensor,
    theta_h: float | Tensor,
    h0: Tensor | None = None,
    h_hat0: Tensor | None = None,
    reduction: str = "sum",
    delta_rule: str = "strict",
) -> Tensor:
    """``Σ|Δh|`` (``reduction="sum"``, SPEC §4) or ``mean|Δh|`` of `hidden_deltas`."""
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    dh = hidden_deltas(output, theta_h, h0, h_hat0, delta_rule).abs()
    return dh.sum() if reduction == "sum" else dh.mean()


class DeltaL1Regularizer(nn.Module):
    """L1 cost on the hidden deltas of a delta cell: ``strength · Σ|Δh|`` (SPEC §4).

    ``forward(output, layer, state=None, trace=None)``: ``output`` is what the
    ``DeltaGRU``/``DeltaLSTM`` ``layer`` returned (its ``batch_first`` layout), ``state`` the
    initial state passed to that forward (``None`` for the default). ``Θ_h`` is read from the
    layer. Fewer, smaller hidden changes mean fewer deltas above ``Θ_h``, i.e. fewer operations.
    With ``trace`` (the [`DeltaTrace`][evsnn.functional.DeltaTrace] of the same pass, e.g. from
    [`evsnn.metrics.reference_traces`][evsnn.metrics.reference_traces], whose ``delta_h`` carries the reference's graph) its
    ``Δh`` are used as they are instead of being recomputed from ``output``.
    """

    def __init__(self, strength: float = 1e-3, *, reduction: str = "sum"):
        super().__init__()
        self.strength = _check_strength(strength)
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction

    def extra_repr(self) -> str:
        return f"strength={self.strength}, reduction={self.reduction!r}"

    def forward(
        self,
        output: Tensor,
        layer: nn.Module,
        state: Tensor | tuple[Tensor, Tensor] | None = None,
        trace: DeltaTrace | None = None,
    ) -> Tensor:
        if not isinstance(layer, (DeltaGRU, DeltaLSTM)):
            raise TypeError(f"DeltaL1Regularizer needs the DeltaGRU/DeltaLSTM layer, got {type(layer).__name__}")
        output = _check_tensor("output", output)
        if output.dim() != 3 or output.shape[-1] != layer.hidden_size:
            raise ValueError(
                f"output must be the layer's [T, B, {layer.hidden_size}] sequence "
                f"([B, T, {layer.hidden_size}] with batch_first), got {tuple(output.shape)}"
            )
        if layer.batch_first:
            output = output.transpose(0, 1)
        if trace is not None:
            if not isinstance(trace, DeltaTrace):
                raise TypeError(f"trace must be a DeltaTrace, got {type(trace).__name__}")
            if tuple(trace.delta_h.shape) != tuple(output.shape):
                raise ValueError(
                    f"trace.delta_h must be the same pass's time-first {tuple(output.shape)}, "
                    f"got {tuple(trace.delta_h.shape)}"
                )
            dh = trace.delta_h.abs()
            return self.strength * (dh.sum() if self.reduction == "sum" else dh.mean())
        h0 = h_hat0 = None
        # the layer's [1, B, H] state (or the [B, H] form) as one direction's [B, H] fields
        state = single_direction_state(layer, state, output.shape[1], output, "DeltaL1Regularizer")
        if state is not None:
            h0, h_hat0 = state.h, state.h_hat
        return self.strength * delta_l1(output, layer.theta_h, h0, h_hat0, self.reduction, layer.delta_rule)
