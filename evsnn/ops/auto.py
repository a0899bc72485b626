"""When ``backend="auto"`` picks the ``"cpu_event"`` backend on the CPU: a table of measured regions.

``"auto"`` picks the event path only for CPU tensors with the batch/hidden sizes where it was
measured to beat the dense reference, in training and in inference separately (`AUTO_RULES`,
`auto_reason`; "CPU backend choice" in docs/benchmarks.md); ``backend="cpu_event"`` runs it
on any CPU shape.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["AUTO_MAX_BATCH", "AUTO_MIN_HIDDEN", "AUTO_RULES", "AutoRule", "auto_reason"]


# Inference: the event path ties or beats the dense reference from H = 128 up for every measured
# batch up to 32, and only ties at H = 64, so "auto" declines below 128 and above the largest
# measured batch (``benchmarks/cpu_streaming.py --crossover``; the ratios are in docs/benchmarks.md,
# "CPU streaming").
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
# "CPU backend choice", and the inference table of "CPU streaming"). A shape outside every measured
# region stays on the reference: "auto" must never pick a path that may be slower. Training is
# decided apart from inference because it runs other kernels: EGRU trains with the fused kernel of
# :mod:`evsnn.ops.egru.cpu_train`, faster from H = 64 up; ALIF runs the fused kernels of
# :mod:`evsnn.ops.alif.cpu_kernels` in both modes (``_ALIF`` below); both delta cells train with the
# fused kernels of :mod:`evsnn.ops.delta.cpu_train`, as fast or faster from H = 128 up (the ratios:
# docs/benchmarks.md, "CPU training of the delta cells" and "CPU training of EGRU and recurrent ALIF").
_INFERENCE = (AutoRule(1, 16, AUTO_MIN_HIDDEN), AutoRule(17, AUTO_MAX_BATCH, 256))
# ALIF on the fused numba kernels (inference loop; training forward and backward) beat the reference
# at every measured B up to 64 and H from 32 up, in both modes and with one and two threads
# (``benchmarks/cpu_crossover.py --families alif``; docs/benchmarks.md). Shapes outside that stay
# on the reference, and so does every ALIF call without numba (:func:`evsnn.ops.alif.cpu.check_cpu`).
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
    rules = None if family is None else AUTO_RULES.get((family, bool(training)))
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
