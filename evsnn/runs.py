"""Run folders of ``evsnn train``: claiming one (``O_EXCL`` + lock), resuming an unfinished run,
atomic writes, and reading a finished run back (``evsnn plot``).

A folder holds one run and is never overwritten. ``run.json`` is created first with ``O_EXCL``,
so of two runs started into one folder exactly one owns it; every other file carries its
``run_id``. Every file goes to a unique temporary name in the folder and is moved into place
with ``os.replace``, so a reader sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import socket
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .atomic import RunFolderError, RunFolderInUse, atomic_write, describe_os_error

if TYPE_CHECKING:
    from .train_config import TrainConfig

__all__ = ["RUN_FILES", "RunFolder", "RunFolderError", "RunFolderInUse", "atomic_write", "draw_run_plots", "load_run"]


def _torch_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


RUN_FILES = ("run.json", "checkpoint.pt", "metrics.json", "events.pt", "raster.png", "curves.png")


# Options that define a run: resuming with any of them changed would not continue the same run.
_RUN_DEFINING = (
    "model",
    "data",
    "data_dir",
    "encoding",
    "repeat",
    "hidden",
    "epochs",
    "batch_size",
    "lr",
    "seed",
    "backend",
    "max_steps",
    "extra",
    "adaptive",
    "tbptt",
)
# What a checkpoint written before an option existed ran with: that option's default then.
_DEFINING_BEFORE = {"adaptive": True, "tbptt": None}


def _task_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with ``adaptive=None`` fixed to the task's configuration, as
    `TrainConfig.validate` fixes it, so that a run compares equal to its resolved self."""
    if config.get("adaptive") is None:
        config = {**config, "adaptive": config.get("data") != "ecg"}
    return config


def _lock(fd: int, path: Path) -> None:
    """Hold an exclusive lock on ``run.json`` while the run writes the folder (released by the
    kernel when the process ends, so a killed run leaves no stale lock)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: the O_EXCL claim alone guards fresh runs
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunFolderInUse(f"run folder {os.fspath(path)} is being written by another running evsnn train") from None


class RunFolder:
    """The folder of one run, claimed by creating ``run.json`` with ``O_EXCL`` and locked while
    the run writes it.

    Args:
        path: the folder (created with its parents if missing).
        run_id: the id written into every file of the run.
        created: whether `claim` created the folder (then `release` may remove it).
        lock_fd: the open, locked ``run.json`` (closed by `close`).
    """

    def __init__(self, path: Path, run_id: str, created: bool, lock_fd: int | None = None):
        self.path = path
        self.run_id = run_id
        self.created = created
        self.lock_fd = lock_fd

    def close(self) -> None:
        """Release the lock on the folder."""
        if self.lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.lock_fd)
            self.lock_fd = None

    @classmethod
    def claim(cls, path: str | os.PathLike, config: TrainConfig) -> RunFolder:
        """Create or adopt an empty-of-runs folder and mark it as this run's; refuse a folder that
        holds (or is being written by) another run, with a message naming it."""
        path = Path(path)
        created = not path.exists()
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RunFolderError(f"cannot create run folder {os.fspath(path)}: {describe_os_error(err)}") from None
        taken = [name for name in RUN_FILES if (path / name).exists()]
        if taken:
            raise RunFolderInUse(cls._taken_message(path, taken))
        run_id = uuid.uuid4().hex
        marker = path / "run.json"
        try:
            fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            raise RunFolderInUse(cls._taken_message(path, ["run.json"])) from None
        except OSError as err:
            raise RunFolderError(f"cannot write to run folder {os.fspath(path)}: {describe_os_error(err)}") from None
        info = {
            "run_id": run_id,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "config": asdict(config),
        }
        try:
            _lock(fd, path)
            data = json.dumps(info, indent=2).encode()
            if os.write(fd, data) != len(data):
                raise OSError(errno.EIO, "short write")
        except OSError as err:
            with contextlib.suppress(OSError):
                os.close(fd)
            with contextlib.suppress(OSError):
                marker.unlink()
            raise RunFolderError(f"cannot write {os.fspath(marker)}: {describe_os_error(err)}") from None
        return cls(path, run_id, created, fd)

    @classmethod
    def resume(cls, path: str | os.PathLike, config: TrainConfig) -> tuple[RunFolder, dict[str, Any]]:
        """Take over the interrupted run in ``path`` (``run.json`` and ``checkpoint.pt``, no
        ``metrics.json``) when ``config`` asks for the same run: ``(folder, checkpoint)``."""
        path = Path(path)
        marker, ckpt = path / "run.json", path / "checkpoint.pt"
        if not marker.is_file() or not ckpt.is_file():
            raise RunFolderError(
                f"cannot resume {os.fspath(path)}: no interrupted run there (run.json and checkpoint.pt expected)"
            )
        if (path / "metrics.json").exists():
            raise RunFolderError(
                f"cannot resume {os.fspath(path)}: its run has finished (metrics.json is there); "
                "choose a new --out for a new run"
            )
        info = _read_json(marker)
        run_id = info.get("run_id") if isinstance(info, dict) else None
        try:
            fd = os.open(marker, os.O_RDONLY)
        except OSError as err:
            raise RunFolderError(f"cannot open {os.fspath(marker)}: {describe_os_error(err)}") from None
        _lock(fd, path)
        folder = cls(path, run_id, False, fd)
        try:
            try:
                state = torch.load(ckpt, map_location="cpu", weights_only=True)
            except Exception as err:  # torch raises several types for a corrupt file
                raise RunFolderError(
                    f"cannot resume {os.fspath(path)}: {os.fspath(ckpt)} is unreadable ({type(err).__name__})"
                ) from None
            if not isinstance(state, dict) or run_id is None or state.get("run_id") != run_id:
                raise RunFolderError(f"cannot resume {os.fspath(path)}: checkpoint.pt is not from the run of run.json")
            if "scheduler" not in state or "history" not in state:
                raise RunFolderError(
                    f"cannot resume {os.fspath(path)}: its checkpoint has no scheduler state or "
                    "history (written by an older evsnn)"
                )
            saved = state.get("config", {})
            saved = _task_defaults({**_DEFINING_BEFORE, **saved})
            asked = _task_defaults(asdict(config))
            differ = [k for k in _RUN_DEFINING if saved.get(k) != asked[k]]
            if differ:
                raise ValueError(
                    f"cannot resume {os.fspath(path)}: its run used "
                    f"{', '.join(f'{k}={saved.get(k)!r}' for k in differ)}, this command asks "
                    f"{', '.join(f'{k}={asked[k]!r}' for k in differ)} (give the options "
                    "of the run you resume)"
                )
        except BaseException:
            folder.close()
            raise
        return folder, state

    @staticmethod
    def _taken_message(path: Path, taken: list[str]) -> str:
        unfinished = "checkpoint.pt" in taken and "metrics.json" not in taken
        what = "an unfinished run" if unfinished else "a run"
        choice = (
            "continue it with --resume or choose a new --out"
            if unfinished
            else "choose a new --out (or remove the folder)"
        )
        return f"run folder {os.fspath(path)} already holds {what} ({', '.join(taken)}); runs are never overwritten: {choice}"

    def write(self, name: str, data: bytes) -> Path:
        target = self.path / name
        atomic_write(target, data)
        return target

    def save(self, name: str, obj: dict[str, Any]) -> Path:
        return self.write(name, _torch_bytes({**obj, "run_id": self.run_id}))

    def release(self) -> None:
        """Undo `claim` for a run that wrote nothing else: remove ``run.json`` (and the
        folder when the claim created it and it is now empty)."""
        if any((self.path / name).exists() for name in RUN_FILES[1:]):
            return
        with contextlib.suppress(OSError):
            (self.path / "run.json").unlink()
        if self.created:
            with contextlib.suppress(OSError):
                self.path.rmdir()


_HISTORY_KEYS = ("epoch", "loss", "test_loss", "accuracy", "activity")


def load_run(run_dir: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(metrics, events)`` of a finished run folder, checked: a clear error naming the file when
    one is missing, unreadable, not what ``evsnn train`` writes, or from another run."""
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run folder {os.fspath(run)!r} does not exist")
    metrics_path, events_path = run / "metrics.json", run / "events.pt"
    for p in (metrics_path, events_path):
        if not p.is_file():
            raise FileNotFoundError(f"{os.fspath(p)!r} is missing: is {os.fspath(run)!r} a finished evsnn run folder?")
    metrics = _read_json(metrics_path)
    if not isinstance(metrics, dict) or not isinstance(metrics.get("history"), list):
        raise ValueError(f"{os.fspath(metrics_path)!r} has no 'history' list: not an evsnn metrics file")
    for row in metrics["history"]:
        if (
            not isinstance(row, dict)
            or not all(
                isinstance(row.get(k), (int, float)) and not isinstance(row.get(k), bool)
                for k in _HISTORY_KEYS
                if k in row
            )
            or "epoch" not in row
        ):
            raise ValueError(
                f"{os.fspath(metrics_path)!r}: a history row is not a dict of numbers with an 'epoch': {str(row)[:80]}"
            )
    try:
        events = torch.load(events_path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a corrupt file
        raise ValueError(f"{os.fspath(events_path)!r} is unreadable ({type(err).__name__})") from None
    if not isinstance(events, dict) or not isinstance(events.get("events"), Tensor):
        raise ValueError(f"{os.fspath(events_path)!r} has no 'events' tensor")
    ev = events["events"]
    if ev.dim() != 3 or 0 in ev.shape:
        raise ValueError(
            f"{os.fspath(events_path)!r}: 'events' must be a non-empty [T, samples, units] tensor, "
            f"got shape {tuple(ev.shape)}"
        )
    labels = events.get("labels")
    if labels is not None and not (isinstance(labels, Tensor) and labels.dim() == 1 and labels.numel() >= 1):
        raise ValueError(
            f"{os.fspath(events_path)!r}: 'labels' must be a non-empty 1-d tensor, got "
            f"{tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__}"
        )
    ids = {"metrics.json": metrics.get("run_id"), "events.pt": events.get("run_id")}
    marker = run / "run.json"
    if marker.is_file():
        info = _read_json(marker)
        ids["run.json"] = info.get("run_id") if isinstance(info, dict) else None
    known = {name: rid for name, rid in ids.items() if rid is not None}
    if len(set(known.values())) > 1:
        raise ValueError(
            f"run folder {os.fspath(run)!r} mixes files of different runs "
            f"({', '.join(f'{n}: {r}' for n, r in known.items())})"
        )
    return metrics, events


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{os.fspath(path)!r} is not valid JSON ({err})") from None
    except OSError as err:
        raise RunFolderError(f"cannot read {os.fspath(path)}: {describe_os_error(err)}") from None


PLOT_FORMATS = ("png", "pdf", "svg", "eps")
PLOT_SIZES = ("column", "page")


def draw_run_plots(
    run_dir: str | os.PathLike, *, format: str = "png", dpi: int = 120, size: str = "column"
) -> list[Path]:
    """(Re)draw `raster.<format>` (the first layer's events on one test sample) and
    `curves.<format>` (loss, accuracy and activity per epoch) in a run folder, with `evsnn.plot`;
    each file is replaced atomically.

    Args:
        run_dir: the run folder written by `evsnn train`.
        format: `"png"`, `"pdf"`, `"svg"` or `"eps"`: the vector formats suit a paper.
        dpi: resolution of PNG output and of the raster's marks inside vector output.
        size: `"column"` (3.5 in wide, one paper column) or `"page"` (7 in).
    """
    from . import plot

    if format not in PLOT_FORMATS:
        raise ValueError(f"format must be one of {', '.join(PLOT_FORMATS)}, got {format!r}")
    if isinstance(dpi, bool) or not isinstance(dpi, int) or dpi <= 0:
        raise ValueError(f"dpi must be a positive integer, got {dpi!r}")
    if size not in PLOT_SIZES:
        raise ValueError(f"size must be one of {', '.join(PLOT_SIZES)}, got {size!r}")
    metrics, events = load_run(run_dir)
    run = Path(run_dir)
    ev = events["events"]
    label = int(events["labels"][0]) if events.get("labels") is not None else None
    title = f"{events.get('model', '')} events, test sample 0" + (f" (label {label})" if label is not None else "")
    if events.get("model") == "alif":
        ax = plot.raster(ev, sample=0, title=title, size=size)
    else:
        ax = plot.event_raster(ev, sample=0, title=title, size=size)
    out = [Path(plot.save(ax, run / f"raster.{format}", dpi=dpi))]
    log = [{k: v for k, v in row.items() if k in _HISTORY_KEYS} for row in metrics["history"]]
    curves = plot.training_curves(log, title="training", size=size)
    out.append(Path(plot.save(curves, run / f"curves.{format}", dpi=dpi)))
    return out
