"""Input checks the reference scans share with every backend (one message for one mistake)."""

from __future__ import annotations

from torch import Tensor

__all__ = ["check_steps"]


def check_steps(owner: str, x: Tensor, time_dim: int = 0) -> None:
    """Refuse a sequence with no time step: ``ValueError`` naming ``owner`` and the shape.

    Every layer, scan, Stream and readout refuses ``T = 0`` with this error, as ``nn.GRU`` does.
    """
    if x.shape[time_dim] == 0:
        raise ValueError(
            f"{owner} expects at least one time step (T >= 1), got an input of shape {tuple(x.shape)} with T = 0"
        )
