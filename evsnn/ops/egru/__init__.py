"""EGRU's accelerated paths side by side (reference: `evsnn.functional.egru`): ``cpu`` (the
``"cpu_event"`` backend: [`egru_scan_cpu`][evsnn.ops.egru.cpu.egru_scan_cpu], the streaming runner),
``cpu_train`` (the fused numba training kernels ``cpu`` uses) and ``cuda`` (the ``"cupy"`` backend:
[`egru_scan_cuda`][evsnn.ops.egru.cuda.egru_scan_cuda]); ``cpu`` and ``cuda`` export their
``check_cpu``/``check_cuda``, registered by [`evsnn.ops.dispatch`][evsnn.ops.dispatch]. Each kernel's
launcher is its ``torch.library`` custom op (``evsnn::egru_…``), defined in the module of the kernel."""
