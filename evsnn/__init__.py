"""evsnn: event-driven neurons (ALIF, EGRU, delta cells) for PyTorch, snntorch and norse."""

import importlib
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the names below load on first use (see __getattr__)
    from . import functional, surrogate
    from .functional import ALIFState, DeltaGRUState, DeltaLSTMState, EGRUState
    from .nn import (
        ALIF,
        EGRU,
        ALIFCell,
        ALIFReadout,
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
    "ALIFReadout",
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

# Everything loads on first use: `import evsnn` (and so `evsnn --help`) does not import torch,
# and matplotlib loads only when plotting.
_LAZY_SUBMODULES = (
    "functional",
    "surrogate",
    "nn",
    "ops",
    "stats",
    "plot",
    "metrics",
    "regularizers",
    "streaming",
    "tbptt",
    "interop",
    "data",
    "train",
    "cli",
)
_LAZY_NAMES = {
    **dict.fromkeys(("ALIFState", "EGRUState", "DeltaGRUState", "DeltaLSTMState"), "functional"),
    **dict.fromkeys(
        (
            "ALIF",
            "ALIFCell",
            "EGRU",
            "EGRUCell",
            "DeltaGRU",
            "DeltaGRUCell",
            "DeltaLSTM",
            "DeltaLSTMCell",
            "ALIFReadout",
            "LeakyReadout",
        ),
        "nn",
    ),
    "LayerStats": "stats",
}


def __getattr__(name: str):
    if name in _LAZY_SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    elif name in _LAZY_NAMES:
        value = getattr(importlib.import_module(f".{_LAZY_NAMES[name]}", __name__), name)
    else:
        raise AttributeError(f"module 'evsnn' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


# A program that has imported torch is using the layers: load them now, so that
# `torch.load(path)` (weights_only, PyTorch's default) of a saved whole model finds evsnn's
# classes among its safe globals after a plain `import evsnn`. Without torch imported (the CLI
# parsing its arguments) everything stays lazy.
if "torch" in sys.modules:
    from . import nn  # noqa: E402,F401  (registers the safe globals)
