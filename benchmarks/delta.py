"""DeltaGRU / DeltaLSTM on one GPU: evsnn's CuPy kernels vs cuDNN ``nn.GRU``/``nn.LSTM``, one process.

1. Inference (the delta GPU goal of docs/benchmarks.md at B = 1): T=1000, H=1024, I=128, B ∈ {1, 32}, Θ = 0 and thresholds calibrated to ≈50 %,
   ≈10 %, ≈2 % hidden-delta occupancy (Θ_x = Θ_h = Θ; the input is a smooth multi-sine signal).
2. Training (the sparse-backward goal): T=500, B=32, I=128, H=512, forward and forward+backward of ``out.sum()`` at the
   same occupancy levels; backward time = (fwd+bwd) − fwd against backward sparsity (the fraction
   of hidden columns whose ``W_hhᵀ δM`` the backward skips).

fp32, TF32 off, CUDA-event timing, median of repeats. Prints markdown tables with ratios.

    python benchmarks/delta.py            # full run (≈1–2 min on an H100)
    python benchmarks/delta.py --quick    # fewer repeats and levels
    python benchmarks/delta.py --b1       # only B = 1 inference, median of 15
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evsnn.ops.delta.cuda import delta_gru_scan_cuda, delta_lstm_scan_cuda  # noqa: E402

INPUT = 128
CELLS = {"DeltaGRU": (torch.nn.GRU, delta_gru_scan_cuda), "DeltaLSTM": (torch.nn.LSTM, delta_lstm_scan_cuda)}


def cuda_time(fn: Callable[[], object], reps: int, warmup: int = 2) -> float:
    """Median milliseconds of ``fn`` measured with CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def smooth_input(steps: int, batch: int, seed: int = 0) -> torch.Tensor:
    """A sum of 3 sines per feature with random frequencies and phases, plus 1 % noise: a streaming
    sensor-like signal whose deltas are sparse only above a threshold."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(steps, dtype=torch.float32).view(steps, 1, 1, 1)
    freq = torch.rand(1, batch, INPUT, 3, generator=gen) * 0.05
    phase = torch.rand(1, batch, INPUT, 3, generator=gen) * 2 * math.pi
    x = torch.sin(2 * math.pi * freq * t + phase).sum(-1) / 3
    return (x + 0.01 * torch.randn(steps, batch, INPUT, generator=gen)).cuda()


def occupancy(fn, x, params, theta: float) -> tuple[float, float]:
    with torch.no_grad():
        _, _, trace = fn(x, None, *params, theta_x=theta, theta_h=theta)
    return (trace.delta_h != 0).float().mean().item(), (trace.delta_x != 0).float().mean().item()


def calibrate(fn, x, params, target: float) -> tuple[float, float, float]:
    """Θ whose hidden-delta occupancy is ≈ ``target`` (bisection on log Θ): (Θ, occ_h, occ_x)."""
    lo, hi = 1e-5, 1.0
    best = (hi, *occupancy(fn, x, params, hi))
    for _ in range(14):
        mid = math.sqrt(lo * hi)
        occ_h, occ_x = occupancy(fn, x, params, mid)
        if abs(occ_h - target) < abs(best[1] - target):
            best = (mid, occ_h, occ_x)
        if occ_h > target:
            lo = mid
        else:
            hi = mid
    return best


def make(cell: str, hidden: int):
    torch_cls, fn = CELLS[cell]
    rnn = torch_cls(INPUT, hidden).cuda()
    params = [rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0]
    return rnn, fn, params


def inference(levels, reps: int, steps: int, hidden: int, batches=(1, 32)) -> list[dict]:
    rows = []
    for batch in batches:
        x = smooth_input(steps, batch)
        for cell in CELLS:
            rnn, fn, params = make(cell, hidden)
            with torch.no_grad():
                t_cudnn = cuda_time(lambda rnn=rnn, x=x: rnn(x), reps)
            for target in levels:
                if target >= 1.0:
                    theta, occ_h, occ_x = 0.0, *occupancy(fn, x, params, 0.0)
                else:
                    theta, occ_h, occ_x = calibrate(fn, x, params, target)

                def run(fn=fn, x=x, theta=theta, params=params):
                    return fn(x, None, *params, theta_x=theta, theta_h=theta)

                with torch.no_grad():
                    t = cuda_time(run, reps)
                rows.append(
                    dict(cell=cell, batch=batch, theta=theta, occ_h=occ_h, occ_x=occ_x, evsnn_ms=t, cudnn_ms=t_cudnn)
                )
                print(
                    f"  inference {cell} B={batch} Θ={theta:.3g} occ_h={occ_h:.3f} occ_x={occ_x:.3f}: "
                    f"{t:.2f} ms vs cuDNN {t_cudnn:.2f} ms",
                    flush=True,
                )
    return rows


def training(levels, reps: int, steps: int, hidden: int, batch: int) -> list[dict]:
    rows = []
    x = smooth_input(steps, batch, seed=1)
    for cell in ("DeltaLSTM", "DeltaGRU"):
        rnn, fn, params = make(cell, hidden)
        xg = x.clone().requires_grad_(True)

        def cudnn_fb(rnn=rnn, xg=xg):
            out, _ = rnn(xg)
            out.sum().backward()

        with torch.no_grad():
            t_cudnn_f = cuda_time(lambda rnn=rnn: rnn(x), reps)
        t_cudnn_fb = cuda_time(cudnn_fb, reps)
        for target in levels:
            if target >= 1.0:
                theta, occ_h, occ_x = 0.0, *occupancy(fn, x, params, 0.0)
            else:
                theta, occ_h, occ_x = calibrate(fn, x, params, target)

            def fwd(fn=fn, theta=theta, xg=xg, params=params):
                return fn(xg, None, *params, theta_x=theta, theta_h=theta)[0]

            def fwd_bwd(fwd=fwd):
                fwd().sum().backward()

            t_f = cuda_time(fwd, reps)
            t_fb = cuda_time(fwd_bwd, reps)
            rows.append(
                dict(
                    cell=cell,
                    theta=theta,
                    occ_h=occ_h,
                    occ_x=occ_x,
                    bwd_sparsity=1.0 - occ_h,
                    fwd_ms=t_f,
                    fwd_bwd_ms=t_fb,
                    bwd_ms=t_fb - t_f,
                    cudnn_fwd_ms=t_cudnn_f,
                    cudnn_fwd_bwd_ms=t_cudnn_fb,
                )
            )
            print(
                f"  training {cell} Θ={theta:.3g} occ_h={occ_h:.3f}: fwd {t_f:.2f} ms, fwd+bwd {t_fb:.2f} ms "
                f"(cuDNN {t_cudnn_f:.2f} / {t_cudnn_fb:.2f} ms)",
                flush=True,
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats and occupancy levels")
    parser.add_argument("--b1", action="store_true", help="only B = 1 inference (the delta GPU goal), median of 15")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/delta.py needs a CUDA GPU")
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    levels = (1.0, 0.1) if args.quick else (1.0, 0.5, 0.1, 0.02)
    reps = 3 if args.quick else 7
    device = torch.cuda.get_device_name()
    print(f"device: {device}, torch {torch.__version__}, date {datetime.date.today()}", flush=True)
    if args.b1:
        reps = 15
        inf = inference((1.0, 0.1, 0.02), reps, steps=1000, hidden=1024, batches=(1,))
        trn = []
    else:
        inf = inference(levels, reps, steps=1000, hidden=1024)
        trn = training(levels, reps, steps=500, hidden=512, batch=32)

    print(f"\n### Inference, T=1000, I={INPUT}, H=1024 (fp32, TF32 off, median of {reps}) on {device}\n")
    print("| cell | B | Θ | hidden occupancy | input occupancy | evsnn CuPy ms | cuDNN ms | speed-up vs cuDNN |")
    print("|---|---|---|---|---|---|---|---|")
    for r in inf:
        print(
            f"| {r['cell']} | {r['batch']} | {r['theta']:.3g} | {r['occ_h']:.3f} | {r['occ_x']:.3f} | "
            f"{r['evsnn_ms']:.2f} | {r['cudnn_ms']:.2f} | {r['cudnn_ms'] / r['evsnn_ms']:.2f}× |"
        )
    print(f"\n### Training fwd+bwd of out.sum(), T=500, B=32, I={INPUT}, H=512 (median of {reps})\n")
    print(
        "| cell | Θ | hidden occupancy | backward sparsity | fwd ms | bwd ms | fwd+bwd ms | cuDNN fwd+bwd ms | ratio vs cuDNN |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in trn:
        print(
            f"| {r['cell']} | {r['theta']:.3g} | {r['occ_h']:.3f} | {r['bwd_sparsity']:.3f} | {r['fwd_ms']:.2f} | "
            f"{r['bwd_ms']:.2f} | {r['fwd_bwd_ms']:.2f} | {r['cudnn_fwd_bwd_ms']:.2f} | "
            f"{r['cudnn_fwd_bwd_ms'] / r['fwd_bwd_ms']:.2f}× |"
        )
    out = os.environ.get("OUT")
    if out:
        Path(out, "delta_bench.json").write_text(
            json.dumps({"device": device, "inference": inf, "training": trn}, indent=1)
        )


if __name__ == "__main__":
    main()
