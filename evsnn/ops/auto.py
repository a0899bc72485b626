"""When ``backend="auto"`` picks the ``"cpu_event"`` backend on the CPU: the measured regions.

``"auto"`` picks the event path only for CPU tensors with the batch/hidden sizes where it was
measured to beat the dense reference, in training and in inference separately (each family's
`Family.auto_inference` / `Family.auto_training` in [`evsnn.ops.family`][evsnn.ops.family], read by
`auto_reason`; "CPU backend choice" in docs/benchmarks.md); ``backend="cpu_event"`` runs it on any
CPU shape.
"""

from __future__ import annotations

from .family import AUTO_MAX_BATCH, AUTO_MIN_HIDDEN, FAMILIES, AutoRule

__all__ = ["AUTO_MAX_BATCH", "AUTO_MIN_HIDDEN", "AutoRule", "auto_reason"]


def auto_reason(family: str | None, training: bool, batch: int, hidden: int) -> str | None:
    """``None`` when ``"auto"`` should run ``family`` on cpu_event for a ``[T, batch, hidden]``
    call, else why not, read from the family's measured regions (pure: no timing)."""
    mode = "training" if training else "inference"
    record = None if family is None else FAMILIES.get(family)
    if record is None:
        return f"no measured crossover for family {family!r} in {mode}"
    rules = record.auto_rules(bool(training))
    if not rules:
        return f"in {mode} the dense reference was faster at every measured shape (docs/benchmarks.md)"
    if any(r.min_batch <= batch <= r.max_batch and hidden >= r.min_hidden for r in rules):
        return None
    measured = "; ".join(f"B {r.min_batch}-{r.max_batch} with H >= {r.min_hidden}" for r in rules)
    return (
        f"batch {batch}, hidden {hidden} is outside where it beat the dense reference in {mode} ({measured}; "
        "measured crossover, docs/benchmarks.md)"
    )
