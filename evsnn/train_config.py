"""The options of ``evsnn train`` (`TrainConfig`) and their choices, without importing torch.

``evsnn train --help`` builds its options from this module alone, so that it answers at once;
the training loop (`evsnn.train`) and the run folders (`evsnn.runs`) take their
configuration from here too.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields
from typing import Any

__all__ = [
    "BACKENDS",
    "DATASETS",
    "DEVICE_HELP",
    "ENCODED_DATA",
    "ENCODINGS",
    "MODELS",
    "TASK_DEFAULTS",
    "TBPTT_UPDATES",
    "TrainConfig",
    "check_device",
]

# The same tuples as evsnn.models.MODELS, evsnn.data.encode.ENCODINGS and evsnn.ops.dispatch.BACKENDS
# (tests/project/test_startup.py holds them equal); repeated here because those modules import torch.
MODELS = ("alif", "egru", "deltagru", "deltalstm")
ENCODINGS = ("none", "rate", "latency", "delta")
BACKENDS = ("auto", "torch", "cupy", "cpu_event")
DATASETS = (
    "digits",
    "digits-pixels",
    "digits-permuted",
    "temporal",
    "shd",
    "dvsgesture",
    "nmnist",
    "vowels",
    "mnist1d",
    "ecg",
)
# The data sets with an encoding step: --encoding and --repeat apply to these alone.
ENCODED_DATA = ("digits", "digits-pixels", "digits-permuted")

# How truncated BPTT updates the weights: "window", an optimiser step after every window (Williams &
# Peng's TBPTT, as Yin et al.'s training scripts do it); "sequence", the windows' gradients summed
# into one step per batch.
TBPTT_UPDATES = ("window", "sequence")
# What `evsnn train` uses for an option the command line leaves out, where a task's recipe differs
# from the TrainConfig defaults: Yin et al.'s ECG network has 36 hidden neurons and trains with
# truncated BPTT in windows of 50 steps (docs/reproductions.md, ECG section).
TASK_DEFAULTS: dict[str, dict[str, Any]] = {"ecg": {"hidden": 36, "epochs": 100, "tbptt": 50}}

# torch.finfo(torch.float32).max: the optimiser keeps lr in float32, a larger value overflows there.
_FLOAT32_MAX = 3.4028234663852886e38
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
DEVICE_HELP = "auto, cpu, cuda or cuda:N"


def check_device(name: object) -> str:
    """``name`` when evsnn can train on it (``auto``, ``cpu``, ``cuda``, ``cuda:N``), else a
    ``ValueError`` naming the accepted devices: other torch devices (``meta``, ``mps``, ...) have
    no evsnn kernels or cannot run a training step."""
    if not isinstance(name, str) or not _DEVICE.fullmatch(name):
        raise ValueError(f"device must be {DEVICE_HELP}, got {name!r}")
    return name


@dataclass
class TrainConfig:
    """Everything a run depends on; stored in the checkpoint and in ``metrics.json``.

    ``adaptive=None`` takes the task's published configuration, fixed by `validate`: an
    adaptive ALIF hidden layer (β = 1.8) for the sequence tasks, a non-adaptive one (β = 0) for
    ``data="ecg"`` (Yin et al.'s ECG network adapts in its readout only). ``tbptt`` is the window
    of truncated backpropagation through time in steps (``None``: through the whole sequence);
    ``tbptt_update`` says when the optimiser steps with it (`TBPTT_UPDATES`: after every window,
    or once per batch on the windows' summed gradients). The command line takes a task's recipe
    from `TASK_DEFAULTS` for the options it is not given; this class keeps one set of defaults.
    """

    model: str = "alif"
    data: str = "digits"
    data_dir: str | None = None
    encoding: str = "none"
    repeat: int = 3
    hidden: int = 128
    epochs: int = 25
    batch_size: int = 64
    lr: float = 1e-2
    seed: int = 0
    device: str = "auto"
    backend: str = "auto"
    out: str | None = None
    max_steps: int | None = None
    threads: int | None = None
    adaptive: bool | None = None
    tbptt: int | None = None
    tbptt_update: str = "window"
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> TrainConfig:
        """Check every option (a ``ValueError`` naming the option, what it takes and what came) and
        fix ``adaptive=None`` to the task's configuration; returns ``self``."""
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; expected one of {', '.join(MODELS)}")
        if self.data not in DATASETS:
            raise ValueError(f"unknown data {self.data!r}; expected one of {', '.join(DATASETS)}")
        if self.encoding not in ENCODINGS:
            raise ValueError(f"unknown encoding {self.encoding!r}; expected one of {', '.join(ENCODINGS)}")
        for name in ("repeat", "hidden", "epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        for name in ("max_steps", "tbptt"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be an int >= 1 or None, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be an int in [0, 2**32), got {self.seed!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and 0 < self.lr <= _FLOAT32_MAX):
            raise ValueError(f"lr must be a finite number in (0, {_FLOAT32_MAX:.3g}], got {self.lr!r}")
        if self.threads is not None and (
            isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1
        ):
            raise ValueError(f"threads must be an int >= 1 or None, got {self.threads!r}")
        check_device(self.device)
        if self.data not in ENCODED_DATA:
            # These data sets come as they are: an encoding or repeat count would be recorded in
            # run.json and metrics.json without having been applied.
            used = [
                f"{name}={getattr(self, name)!r}"
                for name, default in (("encoding", "none"), ("repeat", 3))
                if getattr(self, name) != default
            ]
            if used:
                raise ValueError(
                    f"{' and '.join(used)} apply to the digits data ({', '.join(ENCODED_DATA)}) only; "
                    f"--data {self.data} is used as it is: leave out --encoding and --repeat"
                )
        if self.data in ("shd", "dvsgesture", "nmnist") and not self.data_dir:
            raise ValueError(f"--data {self.data} needs --data-dir, the folder holding the data set")
        if self.data == "ecg":
            if not self.data_dir:
                from .data.qtdb import QTDB_SOURCE

                raise ValueError(
                    f"--data ecg needs --data-dir, the folder holding QTDB_train.mat and QTDB_test.mat "
                    f"(from {QTDB_SOURCE})"
                )
            if self.model != "alif":
                raise ValueError(
                    f"--data ecg trains Yin et al.'s ALIF network (--model alif), got --model {self.model}"
                )
        if self.tbptt_update not in TBPTT_UPDATES:
            raise ValueError(f"tbptt_update must be one of {', '.join(TBPTT_UPDATES)}, got {self.tbptt_update!r}")
        if self.tbptt is None and self.tbptt_update != "window":
            raise ValueError(
                f"tbptt_update={self.tbptt_update!r} (--tbptt-update) says how truncated BPTT steps; "
                "it needs a window, tbptt (--tbptt K)"
            )
        if self.tbptt is not None and self.data == "vowels":
            raise ValueError("tbptt needs sequences of one length; --data vowels has utterances of 7 to 29 steps")
        if self.adaptive is not None and not isinstance(self.adaptive, bool):
            raise ValueError(f"adaptive must be True, False or None, got {self.adaptive!r}")
        if self.adaptive is False and self.model != "alif":
            raise ValueError(f"adaptive=False (--no-adaptation) sets ALIF's beta to 0; got --model {self.model}")
        if self.adaptive is None:
            self.adaptive = self.data != "ecg"
        return self

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """A configuration from a stored dict (``run.json``, ``metrics.json``); unknown keys are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
