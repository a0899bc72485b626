"""Atomic file writes for run folders and plots: a reader sees the old file or the new one, never half.

A module of its own, without torch, because both `evsnn.runs` and [`evsnn.plot`][evsnn.plot] write
through it and `evsnn.runs` draws with [`evsnn.plot`][evsnn.plot].
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path

__all__ = ["RunFolderError", "RunFolderInUse", "atomic_write", "describe_os_error"]


class RunFolderError(OSError):
    """A run folder cannot be used or written; the message names the folder or file."""


class RunFolderInUse(RunFolderError):
    """The run folder already holds, or is being written by, another run."""


def describe_os_error(err: OSError) -> str:
    """The reason of an ``OSError`` in words, for a message that also names the file."""
    if err.errno == errno.ENOSPC:
        return "no space left on the device (disk full)"
    return err.strerror or str(err) or type(err).__name__


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a unique temporary file next to ``path``, then ``os.replace`` it there:
    readers see the old file or the new one. On failure the temporary file is removed and a
    `RunFolderError` names ``path``."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise RunFolderError(f"cannot write {os.fspath(path)}: {describe_os_error(err)}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_UMASK)  # mkstemp makes 0600; the result is an ordinary file
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise RunFolderError(f"cannot write {os.fspath(path)}: {describe_os_error(err)}") from None
        raise
