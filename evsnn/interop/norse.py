"""norse-style cells and layers: ALIF, EGRU, DeltaGRU and DeltaLSTM for ``norse.torch``.

norse threads state explicitly: every stateful module is called as
``out, state = module(input_tensor, state)`` and ``norse.torch.SequentialState`` decides that a
module is stateful by looking for a forward argument *named* ``state``
(``norse.torch.utils.state._is_module_stateful``, norse 1.1.0). These classes keep that
contract, with states that are the NamedTuples of [`evsnn.functional`][evsnn.functional]
(``ALIFState(v, b, s)``, ``EGRUState(c, y)``, ``DeltaGRUState``, ``DeltaLSTMState``):

- cells (``ALIFCell``, ``EGRUCell``, ``DeltaGRUCell``, ``DeltaLSTMCell``) take one step
  ``[B, input_size]``; ``norse.torch.Lift(cell)`` runs them over time;
- layers (``ALIF``, ``EGRU``, ``DeltaGRU``, ``DeltaLSTM``) take a whole time-first sequence
  ``[T, B, input_size]`` and return ``(out [T, B, H], final_state)`` like norse's ``LIF``; the
  final state is what the [`evsnn.nn`][evsnn.nn] layer returns (``ALIFState`` with fields in
  ``nn.GRU``'s ``h_n`` layout ``[num_layers·num_directions, B, H]``; the ``h_n`` tensor carrying
  the rest of the state for EGRU and DeltaGRU; ``(h_n, c_n)`` for DeltaLSTM), and is accepted
  back as the next call's state.

Unlike norse's ``LIFParameters`` (a NamedTuple of tensors that ``module.to()`` does not move),
every parameter here is an ``nn.Parameter`` of the module and moves with ``.to()``.
Each class is the [`evsnn.nn`][evsnn.nn] class of the same name with norse's argument naming; the
constructor arguments are those of [`evsnn.nn`][evsnn.nn]. No equation lives here.
"""

from __future__ import annotations

from typing import Any

import norse.torch  # noqa: F401  (the adapters are meant to be used beside norse; fail early without it)
from torch import Tensor

from .. import nn as _enn
from ..functional import ALIFState, DeltaGRUState, DeltaLSTMState, EGRUState

__all__ = ["ALIFCell", "EGRUCell", "DeltaGRUCell", "DeltaLSTMCell", "ALIF", "EGRU", "DeltaGRU", "DeltaLSTM"]


class ALIFCell(_enn.ALIFCell):
    """One ALIF step (SPEC.md §2): ``forward(input_tensor [B, I], state=None) -> (spikes, ALIFState)``.

    ``I_t = W_ih x_t + b_ih (+ W_hh s_{t−1} + b_hh)``, then [`evsnn.functional.alif_step`][evsnn.functional.alif_step].
    """

    def forward(self, input_tensor: Tensor, state: ALIFState | None = None) -> tuple[Tensor, ALIFState]:
        return super().forward(input_tensor, state)


class EGRUCell(_enn.EGRUCell):
    """One EGRU step (SPEC.md §3): ``forward(input_tensor [B, I], state=None) -> (y, EGRUState(c, y))``."""

    def forward(self, input_tensor: Tensor, state: EGRUState | None = None) -> tuple[Tensor, EGRUState]:
        return self.step(input_tensor, state)


class DeltaGRUCell(_enn.DeltaGRUCell):
    """One DeltaGRU step (SPEC.md §4): ``forward(input_tensor [B, I], state=None) -> (h, DeltaGRUState)``."""

    def forward(self, input_tensor: Tensor, state: DeltaGRUState | None = None) -> tuple[Tensor, DeltaGRUState]:
        return self.step(input_tensor, state)


class DeltaLSTMCell(_enn.DeltaLSTMCell):
    """One DeltaLSTM step (SPEC.md §4): ``forward(input_tensor [B, I], state=None) -> (h, DeltaLSTMState)``."""

    def forward(self, input_tensor: Tensor, state: DeltaLSTMState | None = None) -> tuple[Tensor, DeltaLSTMState]:
        return self.step(input_tensor, state)


class ALIF(_enn.ALIF):
    """ALIF over a time-first sequence: ``forward(input_tensor [T, B, I], state=None) -> (spikes, ALIFState)``."""

    def forward(self, input_tensor: Tensor, state: ALIFState | None = None) -> tuple[Tensor, ALIFState]:
        return super().forward(input_tensor, state)


class EGRU(_enn.EGRU):
    """EGRU over a time-first sequence: ``forward(input_tensor [T, B, I], state=None) -> (y, EGRUState)``."""

    def forward(self, input_tensor: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        return super().forward(input_tensor, state)


class DeltaGRU(_enn.DeltaGRU):
    """DeltaGRU over a time-first sequence: ``forward(input_tensor [T, B, I], state=None) -> (h, h_n)``."""

    def forward(self, input_tensor: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        return super().forward(input_tensor, state)


class DeltaLSTM(_enn.DeltaLSTM):
    """DeltaLSTM over a time-first sequence: ``forward(input_tensor [T, B, I], state=None) -> (h, (h_n, c_n))``."""

    def forward(self, input_tensor: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        return super().forward(input_tensor, state)
