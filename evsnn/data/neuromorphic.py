"""Loaders for neuromorphic data sets already on disk — SHD, DVS Gesture, N-MNIST — via tonic.

Each function returns a ``tonic`` dataset object (a subclass of tonic's own class) whose samples
are ``(frames [T, F] float32 tensor, label)``: events are binned with ``tonic.transforms.ToFrame``
and flattened per step. Nothing downloads: where tonic would fetch the archive, these subclasses
raise ``FileNotFoundError`` naming the folder and the files they looked for. They accept the
extracted files alone (tonic itself also wants the archive next to them).

Expected layout under ``root`` (the folder you give, as for tonic's ``save_to``):

- SHD: ``root/SHD/shd_train.h5`` and ``shd_test.h5`` (HDF5: ``spikes/times``, ``spikes/units``,
  ``labels``, ``extra/keys``, ``extra/speaker``);
- DVS Gesture: ``root/DVSGesture/ibmGestureTrain/user01_fluorescent/<label>.npy`` (and
  ``ibmGestureTest``), each an ``[N, 4]`` array of ``x, y, p, t`` with ``t`` in ms;
- N-MNIST: ``root/NMNIST/Train/<digit>/*.bin`` (and ``Test``), 5-byte ATIS events.

Binning: with ``n_time_bins`` tonic's bins are half-open, so the events at exactly the last
timestamp of a recording fall outside them; with ``time_window`` every event is kept (the last,
partial window included). Variable lengths: `pad_collate` pads a batch with zero frames to the longest sample.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["NEUROMORPHIC", "shd", "dvs_gesture", "nmnist", "pad_collate", "FlattenFrames"]

NEUROMORPHIC = ("shd", "dvsgesture", "nmnist")


def _tonic():
    try:
        import tonic
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError('the neuromorphic loaders need tonic: pip install "evsnn[data]"') from err
    return tonic


class FlattenFrames:
    """``frames [T, P, H, W]`` (tonic's ToFrame output) → ``float32 tensor [T, P·H·W]``,
    clipped to ``max_count`` events per bin when given (binary frames with ``max_count=1``)."""

    def __init__(self, max_count: float | None = None):
        self.max_count = max_count

    def __call__(self, frames: np.ndarray) -> Tensor:
        x = torch.from_numpy(np.asarray(frames, dtype=np.float32)).flatten(1)
        return x.clamp(max=self.max_count) if self.max_count is not None else x


def _missing(name: str, where: str, what: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{name} data not found: expected {what} under {where} (evsnn never downloads; "
        f"fetch it once with tonic.datasets.{name}(save_to=...) or copy the extracted files there)"
    )


def _check_root(root: str | os.PathLike) -> str:
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root must be a path, got {type(root).__name__}")
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"data folder {root!r} does not exist")
    return root


def _frames(
    tonic,
    sensor_size,
    time_window: float | None,
    n_time_bins: int | None,
    extra: Sequence[Callable] = (),
    max_count: float | None = None,
):
    if (time_window is None) == (n_time_bins is None):
        raise ValueError("give exactly one of time_window (µs per frame) or n_time_bins (frames per sample)")
    # include_incomplete keeps the events of the last, partial time window (tonic drops them by default).
    to_frame = tonic.transforms.ToFrame(
        sensor_size=sensor_size,
        time_window=time_window,
        n_time_bins=n_time_bins,
        include_incomplete=time_window is not None,
    )
    return tonic.transforms.Compose([*extra, to_frame, FlattenFrames(max_count)])


def shd(
    root: str | os.PathLike,
    train: bool = True,
    *,
    time_window: float | None = 10_000.0,
    n_time_bins: int | None = None,
    n_channels: int = 700,
    max_count: float | None = None,
):
    """Spiking Heidelberg Digits from ``root/SHD/shd_{train,test}.h5`` through ``tonic.datasets.SHD``.

    Samples are ``[T, n_channels]`` spike counts per ``time_window`` µs (default 10 ms) or per
    one of ``n_time_bins`` bins; ``n_channels < 700`` sums neighbouring channels
    (``tonic.transforms.Downsample``).
    """
    tonic = _tonic()
    root = _check_root(root)
    if not 1 <= n_channels <= 700:
        raise ValueError(f"n_channels must be in [1, 700], got {n_channels}")
    extra = [tonic.transforms.Downsample(spatial_factor=n_channels / 700)] if n_channels != 700 else []
    transform = _frames(tonic, (n_channels, 1, 1), time_window, n_time_bins, extra, max_count)

    class SHD(tonic.datasets.SHD):
        def _check_exists(self) -> bool:
            return os.path.isfile(os.path.join(self.location_on_system, self.data_filename))

        def download(self) -> None:
            raise _missing("SHD", self.location_on_system, self.data_filename)

    # The subclass keeps tonic's class name: tonic places the data under root/<class name>/.
    return SHD(root, train=train, transform=transform)


def dvs_gesture(
    root: str | os.PathLike,
    train: bool = True,
    *,
    time_window: float | None = None,
    n_time_bins: int | None = 20,
    size: int = 32,
    max_count: float | None = None,
):
    """DVS Gesture (tonic's preprocessed ``.npy`` version) through ``tonic.datasets.DVSGesture``.

    Events are downsampled from 128×128 to ``size``×``size`` and binned into ``n_time_bins``
    frames (or ``time_window`` µs each); samples are ``[T, 2·size·size]``.
    """
    tonic = _tonic()
    root = _check_root(root)
    if not 1 <= size <= 128:
        raise ValueError(f"size must be in [1, 128], got {size}")
    extra = [tonic.transforms.Downsample(spatial_factor=size / 128)] if size != 128 else []
    transform = _frames(tonic, (size, size, 2), time_window, n_time_bins, extra, max_count)

    class DVSGesture(tonic.datasets.DVSGesture):
        def _check_exists(self) -> bool:
            return any(Path(self.location_on_system, self.folder_name).glob("*/*.npy"))

        def download(self) -> None:
            raise _missing("DVSGesture", os.path.join(self.location_on_system, self.folder_name), "user*/<label>.npy")

    return DVSGesture(root, train=train, transform=transform)


def nmnist(
    root: str | os.PathLike,
    train: bool = True,
    *,
    time_window: float | None = None,
    n_time_bins: int | None = 30,
    first_saccade_only: bool = False,
    max_count: float | None = None,
):
    """N-MNIST from ``root/NMNIST/{Train,Test}/<digit>/*.bin`` through ``tonic.datasets.NMNIST``;
    samples are ``[T, 2·34·34]``."""
    tonic = _tonic()
    root = _check_root(root)
    transform = _frames(tonic, tonic.datasets.NMNIST.sensor_size, time_window, n_time_bins, (), max_count)

    class NMNIST(tonic.datasets.NMNIST):
        def _check_exists(self) -> bool:
            return any(Path(self.location_on_system, self.folder_name).glob("*/*.bin"))

        def download(self) -> None:
            raise _missing("NMNIST", os.path.join(self.location_on_system, self.folder_name), "<digit>/*.bin")

    return NMNIST(root, train=train, first_saccade_only=first_saccade_only, transform=transform)


def pad_collate(batch: Sequence[tuple[Tensor, int]], *, time_first: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """Stack ``(x [T_i, F], label)`` samples into ``(x [B, T_max, F], labels [B], lengths [B])``,
    padding with zero frames at the end (``[T_max, B, F]`` with ``time_first=True``)."""
    if len(batch) == 0:
        raise ValueError("pad_collate got an empty batch")
    xs = [torch.as_tensor(x, dtype=torch.float32) for x, _ in batch]
    for x in xs:
        if x.dim() != 2 or x.shape[1] != xs[0].shape[1]:
            raise ValueError(
                f"pad_collate expects samples [T, F] with one F, got shapes {[tuple(v.shape) for v in xs]}"
            )
    lengths = torch.tensor([x.shape[0] for x in xs])
    out = torch.nn.utils.rnn.pad_sequence(xs, batch_first=not time_first)
    labels = torch.tensor([int(y) for _, y in batch])
    return out, labels, lengths
