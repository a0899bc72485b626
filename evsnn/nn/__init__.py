"""``torch.nn`` layers and cells: what users import."""

from .alif import ALIF, TAU_INITS, ALIFCell, ALIFReadout, LeakyReadout, init_tau
from .delta import DeltaGRU, DeltaGRUCell, DeltaLSTM, DeltaLSTMCell
from .egru import EGRU, EGRUCell

__all__ = [
    "ALIF",
    "ALIFCell",
    "ALIFReadout",
    "LeakyReadout",
    "init_tau",
    "TAU_INITS",
    "EGRU",
    "EGRUCell",
    "DeltaGRU",
    "DeltaGRUCell",
    "DeltaLSTM",
    "DeltaLSTMCell",
]
