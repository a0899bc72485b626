"""One record per neuron family of SPEC.md: everything dispatch, the layers, `evsnn.streaming` and
[`evsnn.metrics`][evsnn.metrics] need to know about it, in one place instead of a table in each.

A `Family` holds its reference scan (the oracle every backend computes), the accelerated scans
and their checks per backend, the operands of its products (what `run_lowered` rounds to a low
dtype), the measured regions where ``backend="auto"`` picks ``"cpu_event"``, and the
``"cpu_event"`` streaming runner. The accelerated modules are named by import path
(``"egru.cpu:egru_scan_cpu"``, under ``evsnn.ops``) and imported on first use: they import
``cpu_common``, which reads the measured regions from here, and CuPy or numba load only when a
backend runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from ..functional import alif_scan, delta_gru_scan, delta_lstm_scan, egru_scan

__all__ = [
    "AUTO_MAX_BATCH",
    "AUTO_MIN_HIDDEN",
    "AutoRule",
    "Family",
    "FAMILIES",
    "ALIF_FAMILY",
    "EGRU_FAMILY",
    "DELTA_GRU_FAMILY",
    "DELTA_LSTM_FAMILY",
    "family",
]


class AutoRule(NamedTuple):
    """One region where ``"auto"`` picks cpu_event: ``min_batch <= batch <= max_batch`` and
    ``hidden >= min_hidden``."""

    min_batch: int
    max_batch: int
    min_hidden: int


@dataclass(frozen=True, eq=False)
class Family:
    """A neuron family of SPEC.md (one instance each: compared by identity).

    Args:
        name: its op family in [`evsnn.ops.dispatch`][evsnn.ops.dispatch].
        gates: weight rows per unit that one input or recurrent event touches (``gates·H`` rows).
        binary_events: its events are 0/1 spikes (an event selects a weight column: an
            accumulate) rather than graded values (a multiply-accumulate).
        delta_encoded: its inputs and recurrence enter as deltas (graded; every operation a MAC).
        reference: its reference scan in [`evsnn.functional`][evsnn.functional]; its signature
            is the one every backend of the family has.
        scans: backend -> ``"module:function"`` (under ``evsnn.ops``) of its accelerated scan.
        checks: backend -> ``"module:function"`` of the check that says whether that scan can run
            a call (``None``) or why not.
        product_operands: the arguments of the scan that are operands of its products, rounded to
            the low dtype before a float32 kernel runs a low-precision call (SPEC §6).
        auto_inference: the regions where ``"auto"`` picks cpu_event in inference (empty: never).
        auto_training: the same for calls that record gradients.
        runner: ``"module:Class"`` of its ``"cpu_event"`` streaming runner, built by
            ``Class.from_scan_arguments(*args, **kwargs)`` from the arguments the reference scan
            takes after ``(input, state)``; it has ``load``, ``state``, ``stream_step`` and
            ``stream_chunk``.
    """

    name: str
    gates: int
    binary_events: bool
    delta_encoded: bool
    reference: Callable[..., Any]
    scans: Mapping[str, str]
    checks: Mapping[str, str]
    product_operands: tuple[str, ...]
    auto_inference: tuple[AutoRule, ...]
    auto_training: tuple[AutoRule, ...]
    runner: str

    def auto_rules(self, training: bool) -> tuple[AutoRule, ...]:
        """The measured regions for a call that records gradients (``training``) or not."""
        return self.auto_training if training else self.auto_inference

    def scan(self, backend: str) -> Callable[..., Any]:
        """The scan of ``backend`` (``"torch"``: the reference); imports its module."""
        return self.reference if backend == "torch" else _load(self.scans[backend])

    def check(self, backend: str) -> Callable[..., str | None]:
        """The check of the accelerated ``backend``; imports its module."""
        return _load(self.checks[backend])

    def runner_type(self) -> type:
        """The class of the ``"cpu_event"`` streaming runner; imports its module."""
        return _load(self.runner)


def _load(path: str) -> Any:
    module, name = path.split(":")
    return getattr(importlib.import_module(f"{__package__}.{module}"), name)


# The measured regions below come from ``benchmarks/cpu_crossover.py`` (docs/benchmarks.md, "CPU
# backend choice", and the inference table of "CPU streaming"). A shape outside every measured
# region stays on the reference: "auto" must never pick a path that may be slower. Training is
# decided apart from inference because it runs other kernels.

# Inference: the event path ties or beats the dense reference from H = 128 up for every measured
# batch up to 32, and only ties at H = 64, so "auto" declines below 128 and above the largest
# measured batch (``benchmarks/cpu_streaming.py --crossover``).
AUTO_MAX_BATCH = 32
AUTO_MIN_HIDDEN = 128
_INFERENCE = (AutoRule(1, 16, AUTO_MIN_HIDDEN), AutoRule(17, AUTO_MAX_BATCH, 256))
# Both delta cells train with the fused kernels of evsnn.ops.delta.cpu_train, as fast or faster
# from H = 128 up ("CPU training of the delta cells").
_DELTA_TRAINING = (AutoRule(1, AUTO_MAX_BATCH, AUTO_MIN_HIDDEN),)
# ALIF runs the fused numba kernels of evsnn.ops.alif.cpu_train in both modes; they beat the
# reference at every measured B up to 64 and H from 32 up, with one and two threads
# (``benchmarks/cpu_crossover.py --families alif``). Every ALIF call without numba stays on the
# reference (evsnn.ops.alif.cpu.check_cpu).
_ALIF = (AutoRule(1, 64, 32),)


# cpu_event first: dispatch loads (and registers) the backends in this order


def _scans(module: str, scan: str) -> dict[str, str]:
    return {"cpu_event": f"{module}.cpu:{scan}_cpu", "cupy": f"{module}.cuda:{scan}_cuda"}


def _checks(module: str) -> dict[str, str]:
    return {"cpu_event": f"{module}.cpu:check_cpu", "cupy": f"{module}.cuda:check_cuda"}


ALIF_FAMILY = Family(
    "alif",
    gates=1,
    binary_events=True,
    delta_encoded=False,
    reference=alif_scan,
    scans=_scans("alif", "alif_scan"),
    checks=_checks("alif"),
    # the current W_ih x + b_ih is formed by the layer; the scan's product is the recurrent one
    product_operands=("weight_hh",),
    auto_inference=_ALIF,
    auto_training=_ALIF,
    runner="alif.cpu:ALIFRunner",
)
EGRU_FAMILY = Family(
    "egru",
    gates=3,
    binary_events=False,
    delta_encoded=False,
    reference=egru_scan,
    scans=_scans("egru", "egru_scan"),
    checks=_checks("egru"),
    product_operands=("x", "weight_ih", "weight_hh"),
    auto_inference=_INFERENCE,
    # the fused kernel of evsnn.ops.egru.cpu_train is faster from H = 64 up
    # ("CPU training of EGRU and recurrent ALIF")
    auto_training=(AutoRule(1, AUTO_MAX_BATCH, 64),),
    runner="egru.cpu:EGRURunner",
)
# The delta cells' products take Δx, Δh, which the kernel forms from float32 x, memories and h
# (SPEC §6): only their weights are rounded.
DELTA_GRU_FAMILY = Family(
    "delta_gru",
    gates=3,
    binary_events=False,
    delta_encoded=True,
    reference=delta_gru_scan,
    scans=_scans("delta", "delta_gru_scan"),
    checks=_checks("delta"),
    product_operands=("weight_ih", "weight_hh"),
    auto_inference=_INFERENCE,
    auto_training=_DELTA_TRAINING,
    runner="delta.cpu:DeltaGRURunner",
)
DELTA_LSTM_FAMILY = Family(
    "delta_lstm",
    gates=4,
    binary_events=False,
    delta_encoded=True,
    reference=delta_lstm_scan,
    scans=_scans("delta", "delta_lstm_scan"),
    checks=_checks("delta"),
    product_operands=("weight_ih", "weight_hh"),
    auto_inference=_INFERENCE,
    auto_training=_DELTA_TRAINING,
    runner="delta.cpu:DeltaLSTMRunner",
)

FAMILIES: Mapping[str, Family] = {f.name: f for f in (ALIF_FAMILY, EGRU_FAMILY, DELTA_GRU_FAMILY, DELTA_LSTM_FAMILY)}


def family(name: str) -> Family:
    """The record of the op family ``name`` (``"alif"``, ``"egru"``, ``"delta_gru"``, ``"delta_lstm"``)."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown op family {name!r}; expected one of {tuple(FAMILIES)}") from None
