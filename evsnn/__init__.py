"""evsnn: event-driven neurons (ALIF, EGRU, delta cells) for PyTorch, snntorch and norse."""

import importlib

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
    "plot",
    "metrics",
    "regularizers",
]

# Heavy or optional-dependency submodules load on first use (matplotlib only when plotting).
_LAZY_SUBMODULES = ("plot", "metrics", "regularizers", "streaming", "interop", "data")


def __getattr__(name: str):
    if name in _LAZY_SUBMODULES:
        module = importlib.import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module 'evsnn' has no attribute {name!r}")
