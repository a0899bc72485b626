"""When ``backend="auto"`` picks the ``"cpu_event"`` backend on the CPU: a table of measured regions.

``"auto"`` picks the event path only for CPU tensors with the batch/hidden sizes where it was
measured to beat the dense reference, in training and in inference separately (`AUTO_RULES`,
`auto_reason`; "CPU backend choice" in docs/benchmarks.md); ``backend="cpu_event"`` runs it
on any CPU shape.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["AUTO_MAX_BATCH", "AUTO_MIN_HIDDEN", "AUTO_RULES", "AutoRule", "auto_reason"]


# Inference crossover measured with ``benchmarks/cpu_streaming.py --crossover`` (docs/benchmarks.md,
# CPU section; 2 threads, T = 100, EGRU at 10-28 % activity): the event path ties or beats the dense
# reference for every B in {1, 4, 8, 16, 32} once H >= 128 (1.0-3.6x); at H = 64 it is a tie
# (0.94-1.22x), so "auto" declines there. Batches above 32 were not measured, so "auto" declines.
AUTO_MAX_BATCH = 32
AUTO_MIN_HIDDEN = 128


class AutoRule(NamedTuple):
    """One region where ``"auto"`` picks cpu_event: ``min_batch <= batch <= max_batch`` and
    ``hidden >= min_hidden``."""

    min_batch: int
    max_batch: int
    min_hidden: int


# (family, training) -> the regions where the event path measured faster than the dense
# reference (an empty tuple: never), from ``benchmarks/cpu_crossover.py`` (docs/benchmarks.md,
# "CPU backend choice"; reference time / event time, one thread, 10 % activity, T = 50, and the
# 2-thread inference table of the CPU streaming section). Unmeasured shapes stay on the
# reference. Training is decided apart from inference: EGRU trains with the fused kernel of
# :mod:`evsnn.ops.egru.cpu_train` (5.9-65x the reference at every measured B in {1, 8, 32},
# H in {64, 128, 256, 1024}, T = 50, 10 % events, one thread); ALIF runs the fused kernels of
# :mod:`evsnn.ops.alif.cpu_kernels` in both modes (``_ALIF`` below); both delta cells train
# with the fused kernels of :mod:`evsnn.ops.delta.cpu_train` (DeltaGRU 1.7-11x, DeltaLSTM
# 0.98-6.0x the reference at B in {1, 8, 32}, H in {128, 256, 1024}).
_INFERENCE = (AutoRule(1, 16, AUTO_MIN_HIDDEN), AutoRule(17, AUTO_MAX_BATCH, 256))
# ALIF on the fused numba kernels (inference loop; training forward and backward): faster than the
# reference at every measured B in {1, 8, 32, 64} and H in {32, 128, 1024}, in inference and in
# training, with one and two threads (``benchmarks/cpu_crossover.py --families alif``, T = 50,
# 10 % spikes; docs/benchmarks.md). Unmeasured B > 64 or H < 32 stay on the reference, and so
# does every ALIF call without numba (:func:`evsnn.ops.alif.cpu.check_cpu`).
_ALIF = (AutoRule(1, 64, 32),)
AUTO_RULES: dict[tuple[str, bool], tuple[AutoRule, ...]] = {
    ("egru", False): _INFERENCE,
    ("delta_gru", False): _INFERENCE,
    ("delta_lstm", False): _INFERENCE,
    ("alif", False): _ALIF,
    ("egru", True): (AutoRule(1, AUTO_MAX_BATCH, 64),),
    ("delta_gru", True): (AutoRule(1, AUTO_MAX_BATCH, AUTO_MIN_HIDDEN),),
    ("delta_lstm", True): (AutoRule(1, AUTO_MAX_BATCH, AUTO_MIN_HIDDEN),),
    ("alif", True): _ALIF,
}


def auto_reason(family: str | None, training: bool, batch: int, hidden: int) -> str | None:
    """``None`` when ``"auto"`` should run ``family`` on cpu_event for a ``[T, batch, hidden]``
    call, else why not, read from the measured table `AUTO_RULES` (pure: no timing)."""
    mode = "training" if training else "inference"
    rules = AUTO_RULES.get((family, bool(training)))
    if rules is None:
        return f"no measured crossover for family {family!r} in {mode}"
    if not rules:
        return f"in {mode} the dense reference was faster at every measured shape (docs/benchmarks.md)"
    if any(r.min_batch <= batch <= r.max_batch and hidden >= r.min_hidden for r in rules):
        return None
    measured = "; ".join(f"B {r.min_batch}-{r.max_batch} with H >= {r.min_hidden}" for r in rules)
    return (
        f"batch {batch}, hidden {hidden} is outside where it beat the dense reference in {mode} ({measured}; "
        "measured crossover, docs/benchmarks.md)"
    )
