"""Per-layer statistics of the last forward pass (SPEC.md §5).

Values are kept as detached tensors so that recording them never synchronises the host with
the device; the float properties synchronise only when read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

__all__ = ["LayerStats"]


@dataclass
class LayerStats:
    """What one layer did in its last forward pass.

    - ``event_fraction``: ``[T]``, fraction of nonzero events per step (spikes, EGRU events,
      nonzero hidden deltas), averaged over batch and units; step ``t`` is input step ``t`` for
      every direction (a reverse direction's scan order is undone), and with packed input it
      averages over the sequences that reach step ``t`` (padding is not counted);
    - ``dense_macs``: multiply-accumulates the same layer would do densely;
    - ``event_ops``: synaptic operations it actually needed (one per active input or recurrent
      event and target row);
    - ``backward_sparsity``: in training, fraction of (step, sample, unit) whose
      pseudo-derivative was exactly zero, so no gradient passes through that event; ``None``
      when the forward pass recorded no graph;
    - ``input_event_fraction``: ``[T]``, fraction of nonzero inputs (or input deltas) per step;
    - ``samples_per_step``: ``[T]``, how many samples reach each step (summed over the layers
      and directions), where that differs between steps (packed input of several lengths);
      ``None`` when every step covers the whole batch. The means over time weight each step by
      it, so that they are fractions over every computed (step, sample, unit).
    """

    layer: str
    event_fraction: Tensor
    dense_macs: int
    event_ops: Tensor
    backward_sparsity: Tensor | None = None
    input_event_fraction: Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    samples_per_step: Tensor | None = None

    def mean_over_steps(self, per_step: Tensor) -> Tensor:
        """The mean of a ``[T]`` per-step fraction over every computed (step, sample, unit):
        weighted by `samples_per_step` when the steps cover different numbers of samples."""
        per_step = per_step.float()
        if self.samples_per_step is None:
            return per_step.mean()
        weights = self.samples_per_step.to(per_step)
        return (per_step * weights).sum() / weights.sum()

    @property
    def mean_event_fraction(self) -> float:
        """Fraction of nonzero events over every computed (step, sample, unit)."""
        return float(self.mean_over_steps(self.event_fraction))

    @property
    def ops_saved_fraction(self) -> float:
        """``1 − event_ops / dense_macs``."""
        if self.dense_macs == 0:
            return 0.0
        return 1.0 - float(self.event_ops) / self.dense_macs

    def as_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "mean_event_fraction": self.mean_event_fraction,
            "event_fraction": self.event_fraction.float().cpu().tolist(),
            "dense_macs": int(self.dense_macs),
            "event_ops": int(self.event_ops),
            "ops_saved_fraction": self.ops_saved_fraction,
            "backward_sparsity": None if self.backward_sparsity is None else float(self.backward_sparsity),
            "input_event_fraction": None
            if self.input_event_fraction is None
            else float(self.mean_over_steps(self.input_event_fraction)),
        }
