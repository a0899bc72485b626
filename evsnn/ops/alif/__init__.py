"""ALIF's accelerated paths side by side (reference: `evsnn.functional.alif`): ``cpu`` (the
``"cpu_event"`` backend: [`alif_scan_cpu`][evsnn.ops.alif.cpu.alif_scan_cpu], the streaming runner),
``cpu_train`` (the fused numba kernels ``cpu`` runs) and ``cuda`` (the ``"cupy"`` backend:
[`alif_scan_cuda`][evsnn.ops.alif.cuda.alif_scan_cuda]); ``cpu`` and ``cuda`` export their
``check_cpu``/``check_cuda``, registered by [`evsnn.ops.dispatch`][evsnn.ops.dispatch]. Each kernel's
launcher is its ``torch.library`` custom op (``evsnn::alif_…``), defined in the module of the kernel."""
