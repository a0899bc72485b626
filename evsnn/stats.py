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
    - ``input_event_fraction``: ``[T]``, fraction of nonzero inputs (or input deltas) per step.
    """

    layer: str
    event_fraction: Tensor
    dense_macs: int
    event_ops: Tensor
    backward_sparsity: Tensor | None = None
    input_event_fraction: Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def mean_event_fraction(self) -> float:
        return float(self.event_fraction.float().mean())

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
            else float(self.input_event_fraction.float().mean()),
        }
