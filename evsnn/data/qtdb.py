"""QTDB ECG segmentation as prepared by Yin, Corradi & Bohté (2021), read from a local folder.

Two MATLAB files, ``QTDB_train.mat`` (618 traces) and ``QTDB_test.mat`` (141 traces), each with
``x`` (int16 ``[N, 1301, 4]``, the already level-encoded input channels) and ``y`` (uint8 one-hot
``[N, 1301, 6]``, one waveform class per step). The task labels every step of a trace
(per-step 6-class classification).

Labels follow the original code (``np.argmax(y, -1)``): a step whose one-hot row is all zero
(about 8 % of the training steps, mostly at the start of a trace) gets class 0, as there.

The files are not downloaded: they come from github.com/byin-cwi/Efficient-spiking-networks,
folder ``data/`` (MIT licence; its notice travels with any copy).
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import TensorDataset

__all__ = ["QTDB_FILES", "QTDB_SOURCE", "QTDBSplit", "load_qtdb"]

QTDB_FILES = {"train": "QTDB_train.mat", "test": "QTDB_test.mat"}
QTDB_SOURCE = "github.com/byin-cwi/Efficient-spiking-networks, folder data/ (MIT licence)"


class QTDBSplit(NamedTuple):
    """Train and test sets of ``(x [T, 4] float32, labels [T] int64)`` samples, one label per step."""

    train: TensorDataset
    test: TensorDataset
    n_features: int
    n_classes: int
    steps: int


def _missing(root: str, what: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"QTDB ECG data: {what}. The folder {root!r} must hold {QTDB_FILES['train']} and {QTDB_FILES['test']}, "
        f"taken from {QTDB_SOURCE}; evsnn never downloads them."
    )


def _read(root: str, split: str, min_steps: int) -> tuple[np.ndarray, np.ndarray, int]:
    """One split: ``x`` float32 ``[N, T, F]``, per-step labels int64 ``[N, T]``, the class count."""
    if not os.path.isdir(root):
        raise _missing(root, f"the folder {root!r} does not exist")
    path = os.path.join(root, QTDB_FILES[split])
    if not os.path.isfile(path):
        raise _missing(root, f"{QTDB_FILES[split]} is missing")
    from scipy.io import loadmat

    try:
        mat = loadmat(path)
    except Exception as err:  # scipy raises ValueError, TypeError, OSError... for a damaged file
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(
            f"{path} is not a readable MATLAB .mat file ({reason}); expected {QTDB_FILES[split]} from {QTDB_SOURCE}"
        ) from None
    for field in ("x", "y"):
        if field not in mat:
            fields = sorted(k for k in mat if not k.startswith("__"))
            raise ValueError(f"{path} has no field {field!r} (fields: {fields}); expected x [N, T, F] and y [N, T, C]")
    x, y = np.asarray(mat["x"]), np.asarray(mat["y"])
    if x.ndim != 3 or y.ndim != 3 or x.shape[:2] != y.shape[:2]:
        raise ValueError(
            f"{path}: expected x [N, T, F] and one-hot y [N, T, C] with the same N and T, "
            f"got x {x.shape} and y {y.shape}"
        )
    if x.shape[0] == 0:
        raise ValueError(f"{path} holds no traces (x has shape {x.shape}); expected at least one")
    if x.shape[1] < min_steps:
        raise ValueError(
            f"{path}: traces of {x.shape[1]} steps; expected at least {min_steps} (the published traces have 1301)"
        )
    if not np.isin(y, (0, 1)).all() or (y.sum(-1) > 1).any():
        raise ValueError(f"{path}: y must be one-hot per step (0/1 with at most one 1 per step)")
    return x.astype(np.float32), np.argmax(y, axis=-1).astype(np.int64), int(y.shape[2])


def load_qtdb(root: str | os.PathLike, *, min_steps: int = 1) -> QTDBSplit:
    """The QTDB ECG train and test sets from ``root`` (see the module doc; nothing is downloaded).

    Args:
        root: the folder holding ``QTDB_train.mat`` and ``QTDB_test.mat``.
        min_steps: the fewest steps per trace a use of the data needs (a model's warm-up steps
            plus one); shorter traces are refused with the file's name.

    Raises:
        FileNotFoundError: the folder or a file is missing.
        ValueError: a file is not a readable ``.mat`` file, lacks ``x`` or ``y``, holds no traces,
            traces shorter than ``min_steps`` or labels that are not one-hot; the message names it.
    """
    if isinstance(min_steps, bool) or not isinstance(min_steps, int) or min_steps < 1:
        raise ValueError(f"min_steps must be an int >= 1, got {min_steps!r}")
    root = os.fspath(root)
    xa, ya, n_classes = _read(root, "train", min_steps)
    xb, yb, n_test_classes = _read(root, "test", min_steps)
    if xa.shape[1:] != xb.shape[1:] or n_classes != n_test_classes:
        raise ValueError(
            f"QTDB train and test files disagree: x {xa.shape[1:]} vs {xb.shape[1:]} per trace, "
            f"{n_classes} vs {n_test_classes} classes"
        )
    return QTDBSplit(
        TensorDataset(torch.from_numpy(xa), torch.from_numpy(ya)),
        TensorDataset(torch.from_numpy(xb), torch.from_numpy(yb)),
        n_features=int(xa.shape[2]),
        n_classes=n_classes,
        steps=int(xa.shape[1]),
    )
