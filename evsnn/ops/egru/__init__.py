"""EGRU's accelerated paths side by side (reference: `evsnn.functional.egru`): ``cpu`` (the
``"cpu_event"`` backend: [`egru_scan_cpu`][evsnn.ops.egru.cpu.egru_scan_cpu], the streaming runner) and
``cuda`` (the ``"cupy"`` backend: [`egru_scan_cuda`][evsnn.ops.egru.cuda.egru_scan_cuda]); each exports its
``check_cpu``/``check_cuda``, registered by [`evsnn.ops.dispatch`][evsnn.ops.dispatch].
``op`` registers the custom ops (``evsnn::…``) the scans call; it is imported here so that they
exist whichever module of the family is imported first."""

from . import op  # noqa: F401
