"""DeltaGRU/DeltaLSTM accelerated paths: op registration, CPU kernels and CUDA launcher side by side
(reference: evsnn.functional.delta)."""
