"""JapaneseVowels (UCI; Kudo, Toyama & Shimbo 1999): speaker identification from short utterances.

Nine male speakers said the Japanese vowels "ae"; each utterance is a sequence of 7 to 29
frames of 12 LPC cepstral coefficients; the task is the speaker (9 classes). The standard split
has 270 training utterances (30 per speaker) and 370 test utterances.

The data is read from the ``.ts`` files that the ``aeon`` package ships
(``aeon/datasets/data/JapaneseVowels/JapaneseVowels_{TRAIN,TEST}.ts``), located without importing
aeon, or from a folder you give holding those two files. Nothing is downloaded. Samples are
``(x [T_i, 12] float32, label int64 in 0..8)`` with their own lengths; `pad_collate` pads a
batch (and returns the lengths), and ``torch.nn.utils.rnn.pack_padded_sequence`` turns that into
the ``PackedSequence`` every evsnn layer takes.
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["VariableLengthDataset", "VowelsSplit", "load_japanese_vowels", "read_ts"]

_NAME = "JapaneseVowels"
_INSTALL = "pip install aeon"


class VariableLengthDataset(Dataset):
    """Samples ``(x [T_i, F] float32, label int64)`` of different lengths ``T_i``.

    Args:
        sequences: one ``[T_i, F]`` tensor per sample, all with the same ``F``.
        labels: one integer class per sample.
    """

    def __init__(self, sequences: Sequence[Tensor], labels: Sequence[int] | Tensor):
        labels = torch.as_tensor(labels, dtype=torch.int64)
        if len(sequences) != len(labels):
            raise ValueError(f"got {len(sequences)} sequences but {len(labels)} labels")
        features = {int(x.shape[-1]) for x in sequences}
        if any(x.dim() != 2 or x.shape[0] == 0 for x in sequences) or len(features) > 1:
            raise ValueError(
                f"sequences must be non-empty [T_i, F] tensors with one F, got shapes "
                f"{sorted({tuple(x.shape) for x in sequences})[:5]}"
            )
        self.sequences = [x.to(torch.float32) for x in sequences]
        self.labels = labels
        self.lengths = torch.tensor([x.shape[0] for x in self.sequences], dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.sequences[i], self.labels[i]


class VowelsSplit(NamedTuple):
    """Train and test sets of variable-length ``(x [T_i, 12], label)`` samples."""

    train: VariableLengthDataset
    test: VariableLengthDataset
    n_features: int
    n_classes: int
    max_steps: int


def _header_value(path: Path, number: int, line: str) -> str:
    parts = line.split()
    if len(parts) < 2:
        raise ValueError(f"{path}, line {number}: the header {parts[0]} has no value (expected e.g. '{parts[0]} true')")
    return parts[1]


def read_ts(path: str | os.PathLike, *, missing: str = "error") -> tuple[list[Tensor], list[str], list[str]]:
    """Read a multivariate ``.ts`` file (the sktime/aeon time-series format, no timestamps).

    Returns ``(sequences, labels, class_names)``: one ``[T_i, dims]`` float32 tensor per line of
    ``@data`` (the dimensions are separated by ``:``, the values of one dimension by ``,``, the
    last field is the class), the class of each sample as written, and the class names of the
    ``@classLabel`` header in their order.

    Args:
        path: the ``.ts`` file.
        missing: what to do with a missing value (``?`` or ``NaN``, as the format allows):
            ``"error"`` refuses it, naming the file, line, sample and dimension; ``"keep"`` reads
            it as ``NaN``. Infinite values are refused either way.

    Raises:
        ValueError: the file breaks the format; the message names the file and line.
    """
    if missing not in ("error", "keep"):
        raise ValueError(f"missing must be 'error' or 'keep', got {missing!r}")
    path = Path(path)
    sequences: list[Tensor] = []
    labels: list[str] = []
    class_names: list[str] = []
    dims: int | None = None
    in_data = False
    try:
        with open(path, encoding="utf-8") as f:
            lines = list(enumerate(f, 1))
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not a text .ts file (byte {err.start} is not UTF-8)") from None
    for number, line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not in_data:
            low = line.lower()
            if low.startswith("@classlabel"):
                parts = line.split()
                flag = _header_value(path, number, line).lower()
                if flag not in ("true", "false"):
                    raise ValueError(f"{path}, line {number}: @classLabel takes true or false, got {parts[1]!r}")
                class_names = parts[2:] if flag == "true" else []
            elif low.startswith("@dimensions"):
                value = _header_value(path, number, line)
                if not value.isdigit() or int(value) < 1:
                    raise ValueError(f"{path}, line {number}: @dimensions takes a positive integer, got {value!r}")
                dims = int(value)
            elif low.startswith("@timestamps"):
                if _header_value(path, number, line).lower() == "true":
                    raise ValueError(f"{path}, line {number}: .ts files with timestamps are not supported")
            elif low.startswith("@data"):
                in_data = True
            continue
        *fields, label = line.split(":")
        sample = len(sequences)
        where = f"{path}, line {number} (sample {sample})"
        if not fields:
            raise ValueError(f"{where}: expected dimensions separated by ':' and the class last, got no ':'")
        rows = []
        for dim, text in enumerate(fields):
            row = []
            for value in text.split(","):
                value = value.strip()
                try:
                    number_value = float("nan") if value == "?" else float(value)
                except ValueError:
                    raise ValueError(f"{where}, dimension {dim}: {value!r} is not a number") from None
                if math.isinf(number_value):
                    raise ValueError(f"{where}, dimension {dim}: the value {value!r} is infinite")
                if math.isnan(number_value) and missing == "error":
                    raise ValueError(
                        f"{where}, dimension {dim}: a missing value ({value!r}); this data set "
                        "has none, so the file is damaged (read_ts(..., missing='keep') reads it as NaN)"
                    )
                row.append(number_value)
            rows.append(row)
        expected = dims if dims is not None else (sequences[0].shape[1] if sequences else len(rows))
        if len(rows) != expected:
            source = "@dimensions" if dims is not None else "the first sample"
            raise ValueError(f"{where}: expected {expected} dimensions (from {source}), got {len(rows)}")
        if len({len(r) for r in rows}) != 1:
            raise ValueError(f"{where}: the dimensions have different lengths {sorted({len(r) for r in rows})}")
        sequences.append(torch.tensor(rows, dtype=torch.float32).T.contiguous())
        labels.append(label.strip())
    if not in_data or not sequences:
        raise ValueError(f"{path}: no @data section with samples (not a .ts file?)")
    return sequences, labels, class_names


def _aeon_folder() -> Path | None:
    """aeon's bundled JapaneseVowels folder, found without importing aeon (its import is heavy
    and pins numpy/numba versions that evsnn does not need)."""
    spec = importlib.util.find_spec("aeon")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        folder = Path(location) / "datasets" / "data" / _NAME
        if folder.is_dir():
            return folder
    return None


def _find_files(root: str | os.PathLike | None) -> tuple[Path, Path]:
    if root is None:
        folder = _aeon_folder()
        if folder is None:
            raise ImportError(
                f"JapaneseVowels is read from the files the aeon package ships: {_INSTALL} "
                f"(or pass root=, a folder holding {_NAME}_TRAIN.ts and {_NAME}_TEST.ts)"
            )
        candidates = [folder]
    else:
        if not isinstance(root, (str, os.PathLike)):
            raise TypeError(f"root must be a path or None, got {type(root).__name__}")
        if not os.path.isdir(root):
            raise FileNotFoundError(f"data folder {os.fspath(root)!r} does not exist")
        candidates = [Path(root), Path(root) / _NAME]
    for folder in candidates:
        train, test = folder / f"{_NAME}_TRAIN.ts", folder / f"{_NAME}_TEST.ts"
        if train.is_file() and test.is_file():
            return train, test
    raise FileNotFoundError(
        f"{_NAME}_TRAIN.ts and {_NAME}_TEST.ts not found in {', '.join(map(os.fspath, candidates))} "
        f"(they ship with the aeon package, {_INSTALL}, under aeon/datasets/data/{_NAME}/; evsnn never downloads)"
    )


def load_japanese_vowels(root: str | os.PathLike | None = None, *, standardize: bool = True) -> VowelsSplit:
    """The JapaneseVowels train/test split (see the module docstring).

    Args:
        root: a folder holding ``JapaneseVowels_TRAIN.ts`` and ``JapaneseVowels_TEST.ts`` (or a
            ``JapaneseVowels/`` subfolder with them); ``None`` reads the copy aeon installs.
        standardize: scale every coefficient to zero mean and unit variance with the mean and
            standard deviation of the training frames (applied to both splits).

    Labels ``1..9`` of the files become ``0..8``.
    """
    train_path, test_path = _find_files(root)
    (x_train, y_train, names), (x_test, y_test, _) = read_ts(train_path), read_ts(test_path)
    dims_train, dims_test = x_train[0].shape[1], x_test[0].shape[1]
    if dims_train != dims_test:
        raise ValueError(
            f"{_NAME}: {train_path} has {dims_train} dimensions per step, {test_path} has {dims_test}; "
            "train and test must have the same"
        )
    classes = names or sorted(set(y_train), key=lambda s: (len(s), s))
    index = {name: i for i, name in enumerate(classes)}
    for path, found in ((train_path, y_train), (test_path, y_test)):
        unknown = sorted(set(found) - set(index))
        if unknown:
            raise ValueError(f"{path}: labels {unknown} are not among the declared classes {classes}")
    if standardize:
        frames = torch.cat(x_train)
        mean, std = frames.mean(0), frames.std(0).clamp_min(1e-6)
        x_train = [(x - mean) / std for x in x_train]
        x_test = [(x - mean) / std for x in x_test]
    train = VariableLengthDataset(x_train, [index[y] for y in y_train])
    test = VariableLengthDataset(x_test, [index[y] for y in y_test])
    max_steps = int(max(train.lengths.max(), test.lengths.max()))
    return VowelsSplit(train, test, train.sequences[0].shape[-1], len(classes), max_steps)
