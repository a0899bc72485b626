"""One description per neuron family: what dispatch, the statistics, [`evsnn.metrics`][evsnn.metrics] and
the replay of a layer need to know about it, in one place instead of a switch in each of them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..functional import alif_scan, delta_gru_scan, delta_lstm_scan, egru_scan

__all__ = ["NeuronFamily", "ALIF_FAMILY", "EGRU_FAMILY", "DELTA_GRU_FAMILY", "DELTA_LSTM_FAMILY"]


@dataclass(frozen=True)
class NeuronFamily:
    """A neuron family of SPEC.md.

    Args:
        name: its op family in [`evsnn.ops.dispatch`][evsnn.ops.dispatch].
        gates: weight rows per unit that one input or recurrent event touches (``gates·H`` rows).
        binary_events: its events are 0/1 spikes (an event selects a weight column: an
            accumulate) rather than graded values (a multiply-accumulate).
        delta_encoded: its inputs and recurrence enter as deltas (graded; every operation a MAC).
        reference: its reference scan in [`evsnn.functional`][evsnn.functional].
    """

    name: str
    gates: int
    binary_events: bool
    delta_encoded: bool
    reference: Callable[..., Any]


ALIF_FAMILY = NeuronFamily("alif", 1, binary_events=True, delta_encoded=False, reference=alif_scan)
EGRU_FAMILY = NeuronFamily("egru", 3, binary_events=False, delta_encoded=False, reference=egru_scan)
DELTA_GRU_FAMILY = NeuronFamily("delta_gru", 3, binary_events=False, delta_encoded=True, reference=delta_gru_scan)
DELTA_LSTM_FAMILY = NeuronFamily("delta_lstm", 4, binary_events=False, delta_encoded=True, reference=delta_lstm_scan)
