"""EGRU on one GPU: evsnn's CuPy kernels vs evsnn's reference, torch.compile of it, and cuDNN GRU.

T=500, B=32, I=128, H ∈ {128, 512, 1024}, forward and forward+backward of ``out.sum()``,
fp32 with TF32 off, CUDA-event timing, median of repeats. Then a sweep of activity through the
threshold (≈50 % → ≈2 %) at H=512 showing forward and backward time against activity and
backward sparsity. Prints tables with ratios.

    python benchmarks/egru.py            # full run (< ~4 min on an H100)
    python benchmarks/egru.py --quick    # fewer repeats, H=512 only, short sweep
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evsnn.functional.egru import egru_scan, egru_step  # noqa: E402
from evsnn.ops.egru.cuda import egru_scan_cuda  # noqa: E402
from evsnn.surrogate import Triangle  # noqa: E402

T, B, INPUT = 500, 32, 128
SURROGATE = Triangle(0.3)


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


def make_params(hidden: int, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    gru = torch.nn.GRU(INPUT, hidden)
    torch.nn.init.uniform_(gru.weight_ih_l0, -3 / hidden**0.5, 3 / hidden**0.5, generator=gen)
    return {
        "weight_ih": gru.weight_ih_l0.detach().cuda(),
        "weight_hh": gru.weight_hh_l0.detach().cuda(),
        "bias_ih": gru.bias_ih_l0.detach().cuda(),
        "bias_hh": gru.bias_hh_l0.detach().cuda(),
    }


def leaves(params: dict[str, torch.Tensor], theta: torch.Tensor) -> dict[str, torch.Tensor]:
    p = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    p["threshold"] = theta.clone().requires_grad_(True)
    return p


def activity_of(x: torch.Tensor, params: dict[str, torch.Tensor], theta: float) -> tuple[float, float]:
    """(fraction of events, backward sparsity) of the CuPy forward at a constant threshold."""
    th = torch.full((params["weight_hh"].shape[1],), theta, device="cuda")
    with torch.no_grad():
        out, _, trace = egru_scan_cuda(x, None, threshold=th, surrogate=SURROGATE, **params)
    xdist = trace.c_pre - th
    need = (xdist > 0) | (xdist.abs() < SURROGATE.support)
    return (out != 0).float().mean().item(), 1.0 - need.float().mean().item()


def calibrate(x: torch.Tensor, params: dict[str, torch.Tensor], target: float) -> float:
    """Threshold giving ≈ ``target`` activity (bisection on a constant θ)."""
    lo, hi = 1e-3, 4.0
    for _ in range(14):
        mid = (lo * hi) ** 0.5
        act, _ = activity_of(x, params, mid)
        if act > target:
            lo = mid
        else:
            hi = mid
    return (lo * hi) ** 0.5


def run_fn(scan, x, p, backward: bool):
    def fn():
        out, _, _ = scan(x, None, surrogate=SURROGATE, **p)
        if backward:
            out.sum().backward()
        return out

    return fn


def compiled_reference(hidden: int):
    """torch.compile of the reference EGRU step, looped in Python over T (the whole-sequence
    graph would unroll 500 steps and takes far too long to compile)."""
    step = torch.compile(lambda xt, st, wi, wh, bi, bh, th: egru_step(xt, st, wi, wh, bi, bh, th, surrogate=SURROGATE))

    def scan(x, state, *, weight_ih, weight_hh, bias_ih, bias_hh, threshold, surrogate):
        ys = []
        for t in range(x.shape[0]):
            y, state = step(x[t], state, weight_ih, weight_hh, bias_ih, bias_hh, threshold)
            ys.append(y)
        return torch.stack(ys), state, None

    return scan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="H=512 only, fewer repeats, short sweep")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile of the reference")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks/egru.py needs a CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    reps = 5 if args.quick else 20
    sizes = [512] if args.quick else [128, 512, 1024]
    started = time.time()
    print(f"# device: {torch.cuda.get_device_name()}  torch {torch.__version__}  date {datetime.date.today()}")
    print(
        f"# command: python benchmarks/egru.py{' --quick' if args.quick else ''}  T={T} B={B} I={INPUT} fp32 TF32 off"
    )
    rows = []
    for hidden in sizes:
        torch.manual_seed(0)
        x = torch.randn(T, B, INPUT, device="cuda")
        params = make_params(hidden)
        theta_v = calibrate(x, params, 0.15)
        act, bsp = activity_of(x, params, theta_v)
        theta = torch.full((hidden,), theta_v, device="cuda")
        row = {"H": hidden, "activity": act, "bwd_sparsity": bsp}
        p = leaves(params, theta)
        row["cupy_f"] = cuda_time(lambda p=p, x=x: torch.no_grad()(run_fn(egru_scan_cuda, x, p, False))(), reps)
        row["cupy_fb"] = cuda_time(run_fn(egru_scan_cuda, x, p, True), reps)
        gru = torch.nn.GRU(INPUT, hidden).cuda()
        xg = x.clone().requires_grad_(True)

        def gru_fb(gru=gru, xg=xg):
            out, _ = gru(xg)
            out.sum().backward()

        with torch.no_grad():
            row["cudnn_f"] = cuda_time(lambda gru=gru, x=x: gru(x), reps)
        row["cudnn_fb"] = cuda_time(gru_fb, reps)
        ref_reps = 2 if args.quick else 3
        with torch.no_grad():
            row["ref_f"] = cuda_time(run_fn(egru_scan, x, p, False), ref_reps, warmup=1)
        row["ref_fb"] = cuda_time(run_fn(egru_scan, x, p, True), ref_reps, warmup=1)
        row["compile_f"] = row["compile_fb"] = float("nan")
        if not args.no_compile and time.time() - started < 150:
            try:
                t0 = time.time()
                scan = compiled_reference(hidden)
                run_fn(scan, x, p, True)()
                row["compile_s"] = time.time() - t0
                with torch.no_grad():
                    row["compile_f"] = cuda_time(run_fn(scan, x, p, False), ref_reps, warmup=1)
                row["compile_fb"] = cuda_time(run_fn(scan, x, p, True), ref_reps, warmup=1)
            except Exception as exc:  # report, do not hide: the table shows nan and the reason
                print(f"# torch.compile failed at H={hidden}: {type(exc).__name__}: {str(exc)[:200]}")
        rows.append(row)
        print(f"# H={hidden} done at {time.time() - started:.0f}s", flush=True)

    print("\n## Times (ms, median) and ratios; activity = events per unit per step")
    print(
        "| H | activity | bwd sparsity | evsnn cupy fwd | cuDNN fwd | ref fwd | compile fwd | evsnn cupy fwd+bwd "
        "| cuDNN fwd+bwd | ref fwd+bwd | compile fwd+bwd | cupy/cuDNN fwd+bwd | ref/cupy fwd+bwd |"
    )
    print("|" + "---|" * 13)
    for r in rows:
        print(
            f"| {r['H']} | {r['activity']:.1%} | {r['bwd_sparsity']:.1%} | {r['cupy_f']:.2f} | {r['cudnn_f']:.2f} "
            f"| {r['ref_f']:.1f} | {r['compile_f']:.1f} | {r['cupy_fb']:.2f} | {r['cudnn_fb']:.2f} | {r['ref_fb']:.1f} "
            f"| {r['compile_fb']:.1f} | {r['cupy_fb'] / r['cudnn_fb']:.2f}× | {r['ref_fb'] / r['cupy_fb']:.0f}× |"
        )
    for r in rows:
        if "compile_s" in r:
            print(f"# torch.compile first call (compile) at H={r['H']}: {r['compile_s']:.0f} s")

    hidden = 512
    torch.manual_seed(0)
    x = torch.randn(T, B, INPUT, device="cuda")
    params = make_params(hidden)
    targets = [0.5, 0.15, 0.02] if args.quick else [0.5, 0.3, 0.2, 0.1, 0.05, 0.02]
    print(f"\n## Activity sweep at H={hidden} (threshold varied); bwd = fwd+bwd − fwd")
    print("| activity | bwd sparsity | fwd ms | fwd+bwd ms | bwd ms | cuDNN fwd+bwd ms |")
    print("|---|---|---|---|---|---|")
    gru = torch.nn.GRU(INPUT, hidden).cuda()
    xg = x.clone().requires_grad_(True)

    def gru_fb():
        out, _ = gru(xg)
        out.sum().backward()

    cudnn_fb = cuda_time(gru_fb, reps)
    for target in targets:
        theta_v = calibrate(x, params, target)
        act, bsp = activity_of(x, params, theta_v)
        p = leaves(params, torch.full((hidden,), theta_v, device="cuda"))
        f = cuda_time(lambda p=p, x=x: torch.no_grad()(run_fn(egru_scan_cuda, x, p, False))(), reps)
        fb = cuda_time(run_fn(egru_scan_cuda, x, p, True), reps)
        print(f"| {act:.1%} | {bsp:.1%} | {f:.2f} | {fb:.2f} | {fb - f:.2f} | {cudnn_fb:.2f} |")
    print(f"\n# total {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
