"""Data for evsnn: offline digits as sequences and spikes, a temporal-order task, tonic loaders.

Every loader returns samples ``(x [T, F] float32, label)``; batches from
`pad_collate` (or a `torch.utils.data.TensorDataset`) are batch-first
``[B, T, F]``, which the layers take with ``batch_first=True`` or after ``x.transpose(0, 1)``.
"""

from .digits import DIGIT_ENCODINGS, SequenceSplit, load_digits_sequences
from .encode import ENCODINGS, delta_encode, encode, latency_encode, rate_encode
from .mnist_1d import load_mnist1d
from .neuromorphic import NEUROMORPHIC, dvs_gesture, nmnist, pad_collate, shd
from .qtdb import QTDBSplit, load_qtdb
from .temporal import temporal_pattern_task
from .vowels import VariableLengthDataset, VowelsSplit, load_japanese_vowels

__all__ = [
    "DIGIT_ENCODINGS",
    "ENCODINGS",
    "NEUROMORPHIC",
    "SequenceSplit",
    "QTDBSplit",
    "load_qtdb",
    "load_digits_sequences",
    "encode",
    "rate_encode",
    "latency_encode",
    "delta_encode",
    "temporal_pattern_task",
    "load_japanese_vowels",
    "VowelsSplit",
    "VariableLengthDataset",
    "load_mnist1d",
    "shd",
    "dvs_gesture",
    "nmnist",
    "pad_collate",
]
