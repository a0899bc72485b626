"""``torch.nn`` layers and cells: what users import."""

from . import _stack
from ._stack import CellStep, DeltaCellHidden, DeltaHidden, DeltaLSTMHidden, EGRUHidden, StateTensor
from .alif import ALIF, TAU_INITS, ALIFCell, ALIFReadout, LeakyReadout, init_tau
from .delta import DeltaGRU, DeltaGRUCell, DeltaLSTM, DeltaLSTMCell
from .egru import EGRU, EGRUCell, _fill_thresholds_of_torch_checkpoint

#: The layers that nn.GRU / nn.LSTM code can take in their place: ``isinstance(m, (nn.GRU, nn.LSTM,
#: *evsnn.nn.RNN_LAYERS))`` in initialisation code (they do not subclass ``nn.RNNBase``, whose
#: flat cuDNN weights and kernels they do not have; their parameter names are nn.GRU's).
RNN_LAYERS = (EGRU, DeltaGRU, DeltaLSTM)

# ``torch.load(path)`` (``weights_only=True``) of a saved model holding evsnn layers works once
# evsnn's layers are imported, with no allowlisting by the user beyond their own classes.
_stack.register_safe_globals(
    [ALIF, ALIFCell, ALIFReadout, LeakyReadout, EGRU, EGRUCell, DeltaGRU, DeltaGRUCell, DeltaLSTM, DeltaLSTMCell],
    hooks=[_fill_thresholds_of_torch_checkpoint],
)

__all__ = [
    "RNN_LAYERS",
    "CellStep",
    "DeltaCellHidden",
    "DeltaHidden",
    "DeltaLSTMHidden",
    "EGRUHidden",
    "StateTensor",
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
