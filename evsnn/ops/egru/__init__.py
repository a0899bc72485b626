"""EGRU's accelerated paths side by side (reference: :mod:`evsnn.functional.egru`): ``cpu`` (the
``"cpu_event"`` backend: :func:`~evsnn.ops.egru.cpu.egru_scan_cpu`, the streaming runner) and
``cuda`` (the ``"cupy"`` backend: :func:`~evsnn.ops.egru.cuda.egru_scan_cuda`); each exports its
``check_cpu``/``check_cuda``, registered by :mod:`evsnn.ops.dispatch`.
``op`` registers the custom ops (``evsnn::…``) the scans call; it is imported here so that they
exist whichever module of the family is imported first."""

from . import op  # noqa: F401
