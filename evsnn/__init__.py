"""evsnn: event-driven neurons (ALIF, EGRU, delta cells) for PyTorch, snntorch and norse."""

from . import functional, surrogate
from .functional import ALIFState, DeltaGRUState, DeltaLSTMState, EGRUState
from .nn import (
    ALIF,
    EGRU,
    ALIFCell,
    DeltaGRU,
    DeltaGRUCell,
    DeltaLSTM,
    DeltaLSTMCell,
    EGRUCell,
    LeakyReadout,
)
from .stats import LayerStats

__version__ = "0.1.0"

__all__ = [
    "functional",
    "surrogate",
    "ALIF",
    "ALIFCell",
    "LeakyReadout",
    "EGRU",
    "EGRUCell",
    "DeltaGRU",
    "DeltaGRUCell",
    "DeltaLSTM",
    "DeltaLSTMCell",
    "ALIFState",
    "EGRUState",
    "DeltaGRUState",
    "DeltaLSTMState",
    "LayerStats",
    "__version__",
]
