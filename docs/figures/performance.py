"""Draw the figures of docs/performance.md from measurements recorded in docs/benchmarks.md.

The numbers below are copied from the tables of docs/benchmarks.md (section, device, date and
command with each); nothing is measured here. Run from the repository root:
``python docs/figures/performance.py [--format png|svg|pdf]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "img"
plt.rcParams.update({"font.size": 8, "axes.titlesize": 8, "legend.fontsize": 7})

# "EGRU on GPU", latest run: one NVIDIA H100 80GB HBM3, torch 2.11.0+cu130, CuPy 14.2, 2026-11-22,
# `bash benchmarks/gpu_all.sh` -> `python benchmarks/egru.py`; T=500, B=32, I=128, fp32, fwd+bwd ms.
GPU_EGRU_ACTIVITY = [33.9, 30.0, 20.0, 10.0, 5.0, 2.0]  # %, H = 512
GPU_EGRU_FWD_BWD_MS = [12.03, 11.37, 10.61, 8.72, 8.25, 7.41]
GPU_EGRU_CUDNN_MS = 19.50
GPU_EGRU_HIDDEN = [128, 512, 1024]  # 15 % activity
GPU_EGRU_HIDDEN_MS = [5.29, 10.03, 29.98]
GPU_EGRU_HIDDEN_CUDNN_MS = [1.87, 19.75, 33.95]

# "Delta cells on GPU", current version: same device, 2026-11-22, `python benchmarks/delta.py --b1`;
# inference, T=1000, I=128, H=1024, B=1; hidden-delta occupancy (%), evsnn and cuDNN ms.
GPU_DELTA_OCC = [99.9, 10.0, 2.0]
GPU_DELTA_GRU = ([8.34, 7.24, 7.11], 14.98)
GPU_DELTA_LSTM = ([8.22, 7.11, 7.02], 15.47)

# "CPU streaming", latest run: 2-core x86_64 dev machine, 2 threads, quiet (load 0.6), torch 2.14.1,
# numba 0.68.1, 2026-11-22, `python benchmarks/cpu_streaming.py --threads 2 --hidden 1024 --activity
# 0.2 0.1 0.05 0.02 --families egru delta_gru --repeats 5 --ref-repeats 1 --stream --torch-kernel`;
# B=1, T=1000, H=1024, speed-up = nn.GRU ms / evsnn ms.
CPU_ACTIVITY = [20.0, 10.0, 5.0, 2.0]
CPU_EGRU_SPEEDUP = [4.70, 6.62, 9.49, 11.58]
CPU_DELTA_SPEEDUP = [2.79, 3.10, 3.97, 4.85]

# "CPU backend choice": same machine, one thread, 2026-11-30, `OMP_NUM_THREADS=1 python
# benchmarks/cpu_crossover.py --steps 50 --batch 1 8 32 --hidden 128 1024`; inference at 10 %
# activity, speed-up = reference ms / cpu_event ms, B = 1 and B = 8.
CPU_HIDDEN = [128, 1024]
CPU_CROSSOVER = {
    "EGRU, B = 1": [6.87, 1.63],
    "EGRU, B = 8": [2.30, 4.23],
    "DeltaGRU, B = 1": [25.10, 6.12],
    "DeltaGRU, B = 8": [3.26, 3.05],
    "ALIF, B = 1": [1.14, 1.22],
    "ALIF, B = 8": [1.04, 2.10],
}


def gpu_figure() -> plt.Figure:
    fig, (ax_a, ax_h, ax_d) = plt.subplots(1, 3, figsize=(7.0, 2.6), layout="constrained")
    ax_a.plot(GPU_EGRU_ACTIVITY, [GPU_EGRU_CUDNN_MS / t for t in GPU_EGRU_FWD_BWD_MS], marker="o")
    ax_a.axhline(1.0, color="gray", linestyle=":", linewidth=0.8)
    ax_a.set_xlabel("event fraction (%)")
    ax_a.set_ylabel("speed-up over cuDNN GRU (×)")
    ax_a.set_title("EGRU training, H = 512")
    ax_a.set_ylim(bottom=0)
    ax_h.plot(GPU_EGRU_HIDDEN, [c / t for c, t in zip(GPU_EGRU_HIDDEN_CUDNN_MS, GPU_EGRU_HIDDEN_MS)], marker="o")
    ax_h.axhline(1.0, color="gray", linestyle=":", linewidth=0.8)
    ax_h.set_xscale("log", base=2)
    ax_h.set_xticks(GPU_EGRU_HIDDEN, [str(h) for h in GPU_EGRU_HIDDEN])
    ax_h.set_xlabel("hidden size H (units)")
    ax_h.set_ylabel("speed-up over cuDNN GRU (×)")
    ax_h.set_title("EGRU training, 15 % events")
    ax_h.set_ylim(bottom=0)
    for label, (times, cudnn) in (("DeltaGRU", GPU_DELTA_GRU), ("DeltaLSTM", GPU_DELTA_LSTM)):
        ax_d.plot(GPU_DELTA_OCC, [cudnn / t for t in times], marker="o", label=label)
    ax_d.axhline(1.0, color="gray", linestyle=":", linewidth=0.8)
    ax_d.set_xscale("log")
    ax_d.set_xlabel("hidden deltas sent (%)")
    ax_d.set_ylabel("speed-up over cuDNN (×)")
    ax_d.set_title("delta inference, H = 1024, B = 1")
    ax_d.set_ylim(bottom=0)
    ax_d.legend()
    fig.suptitle("NVIDIA H100, CuPy kernels vs cuDNN (fp32), recorded 2026-11-22", fontsize=8)
    return fig


def cpu_figure() -> plt.Figure:
    fig, (ax_a, ax_h) = plt.subplots(1, 2, figsize=(7.0, 2.6), layout="constrained")
    ax_a.plot(CPU_ACTIVITY, CPU_EGRU_SPEEDUP, marker="o", label="EGRU")
    ax_a.plot(CPU_ACTIVITY, CPU_DELTA_SPEEDUP, marker="s", label="DeltaGRU")
    ax_a.axhline(1.0, color="gray", linestyle=":", linewidth=0.8)
    ax_a.set_xlabel("event fraction (%)")
    ax_a.set_ylabel("speed-up over nn.GRU (×)")
    ax_a.set_title("streaming inference, H = 1024, B = 1, 2 threads")
    ax_a.set_ylim(bottom=0)
    ax_a.legend()
    for label, ratios in CPU_CROSSOVER.items():
        ax_h.plot(CPU_HIDDEN, ratios, marker="o", label=label)
    ax_h.axhline(1.0, color="gray", linestyle=":", linewidth=0.8)
    ax_h.set_xscale("log", base=2)
    ax_h.set_yscale("log")
    ax_h.set_ylim(0.8, 150)  # room above the data for the legend
    ax_h.set_xticks(CPU_HIDDEN, [str(h) for h in CPU_HIDDEN])
    ax_h.set_xlabel("hidden size H (units)")
    ax_h.set_ylabel("speed-up over the reference (×)")
    ax_h.set_title("cpu_event inference, 10 % events, 1 thread")
    ax_h.legend(ncols=2)
    fig.suptitle("2-core x86_64 CPU, numba event loops (fp32), recorded 2026-11-22 and 2026-11-30", fontsize=8)
    return fig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--format", default="png", choices=["png", "svg", "pdf"])
    parser.add_argument("--dpi", type=int, default=150)
    args = parser.parse_args()
    for name, make in (("performance_gpu", gpu_figure), ("performance_cpu", cpu_figure)):
        path = OUT / f"{name}.{args.format}"
        make().savefig(path, dpi=args.dpi)
        print(path)


if __name__ == "__main__":
    main()
