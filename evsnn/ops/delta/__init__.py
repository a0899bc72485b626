"""DeltaGRU/DeltaLSTM accelerated paths side by side (reference: `evsnn.functional.delta`):
``cpu`` (the ``"cpu_event"`` backend: ``delta_gru_scan_cpu``/``delta_lstm_scan_cpu``, the streaming
runners), ``cpu_train`` (the fused numba training kernels ``cpu`` uses) and ``cuda`` (the ``"cupy"``
backend: ``delta_gru_scan_cuda``/``delta_lstm_scan_cuda``); ``cpu`` and ``cuda`` export their
``check_cpu``/``check_cuda``, registered by [`evsnn.ops.dispatch`][evsnn.ops.dispatch]. Each kernel's
launcher is its ``torch.library`` custom op (``evsnn::delta_…``), defined in the module of the kernel."""
