"""DeltaGRU/DeltaLSTM accelerated paths side by side (reference: `evsnn.functional.delta`):
``cpu`` (the ``"cpu_event"`` backend: ``delta_gru_scan_cpu``/``delta_lstm_scan_cpu``, the streaming
runners), ``cpu_train`` (the fused numba training kernels ``cpu`` uses) and ``cuda`` (the ``"cupy"``
backend: ``delta_gru_scan_cuda``/``delta_lstm_scan_cuda``); each exports its ``check_cpu``/``check_cuda``,
registered by [`evsnn.ops.dispatch`][evsnn.ops.dispatch].
``op`` registers the custom ops (``evsnn::…``) the scans call; it is imported here so that they
exist whichever module of the family is imported first."""

from . import op  # noqa: F401
