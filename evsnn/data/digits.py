"""The 8×8 handwritten digits that ship with scikit-learn (1797 images), as sequences.

Orders (``order=``):

- ``"rows"``: one image row per step, ``[8·repeat, 8]``;
- ``"pixels"``: one pixel per step in raster order, ``[64·repeat, 1]`` (sequential MNIST style);
- ``"permuted"``: one pixel per step in a fixed random order (seeded), ``[64·repeat, 1]``.

``repeat`` shows every row (pixel) for that many consecutive steps, which gives leaky
neurons time to integrate. Intensities are scaled to ``[0, 1]``. ``spikes=`` turns the
sequence into events (`evsnn.data.encode`): ``"rate"`` draws ``Bernoulli(x)`` at every
step (once, seeded, at load time), ``"latency"`` puts one spike per row and feature inside the
row's ``repeat`` steps (bright first), ``"delta"`` emits ±1 on changes larger than ``threshold``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .encode import ENCODINGS, delta_encode, latency_encode

__all__ = ["DIGIT_ENCODINGS", "SequenceSplit", "load_digits_sequences"]

DIGIT_ENCODINGS = ("rows", "pixels", "permuted")


class SequenceSplit(NamedTuple):
    """Train and test sets of ``(x [T, F] float32, label int64)`` samples."""

    train: TensorDataset
    test: TensorDataset
    n_features: int
    n_classes: int
    steps: int


def _as_sequences(images: np.ndarray, order: str, permutation_seed: int) -> np.ndarray:
    n = images.shape[0]
    if order == "rows":
        return images.reshape(n, 8, 8)
    flat = images.reshape(n, 64, 1)
    if order == "pixels":
        return flat
    perm = np.random.default_rng(permutation_seed).permutation(64)
    return flat[:, perm]


def load_digits_sequences(
    order: str = "rows",
    *,
    repeat: int = 1,
    spikes: str = "none",
    threshold: float = 0.1,
    test_size: float = 0.2,
    seed: int = 0,
    permutation_seed: int = 1234,
) -> SequenceSplit:
    """The scikit-learn digits as a stratified train/test split of sequences (see module doc).

    ``seed`` fixes the split and the rate-code draws; ``permutation_seed`` the pixel order of
    ``"permuted"``. Nothing is downloaded: the images are part of scikit-learn.
    """
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError('the digits need scikit-learn: pip install "evsnn[data]"') from err
    if order not in DIGIT_ENCODINGS:
        raise ValueError(f"unknown digits order {order!r}; expected one of {DIGIT_ENCODINGS}")
    if spikes not in ENCODINGS:
        raise ValueError(f"unknown spike encoding {spikes!r}; expected one of {ENCODINGS}")
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise ValueError(f"repeat must be an int >= 1, got {repeat!r}")
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must be in (0, 1), got {test_size!r}")
    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0
    seq = torch.from_numpy(_as_sequences(images, order, permutation_seed).copy())
    if spikes == "latency":
        # [N, T0, F] -> [N, T0, repeat, F]: one spike per feature inside each row's window.
        x = latency_encode(seq, repeat).flatten(1, 2)
    else:
        x = seq.repeat_interleave(repeat, dim=1)
        if spikes == "rate":
            x = torch.bernoulli(x, generator=torch.Generator().manual_seed(seed))
        elif spikes == "delta":
            x = delta_encode(x, threshold)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    idx_train, idx_test = train_test_split(
        np.arange(len(labels)), test_size=test_size, random_state=seed, stratify=digits.target
    )
    idx_train, idx_test = torch.from_numpy(idx_train), torch.from_numpy(idx_test)
    return SequenceSplit(
        TensorDataset(x[idx_train], labels[idx_train]),
        TensorDataset(x[idx_test], labels[idx_test]),
        n_features=x.shape[-1],
        n_classes=10,
        steps=x.shape[1],
    )
