"""DeltaGRU training on the CPU: the fused numba training kernel (evsnn.ops.cpu_train) vs the
cpu_event training path (differentiable torch-op loop) vs torch.nn.GRU training, one process.

Forward + backward of ``out.sum()`` with every parameter requiring a gradient, default shape of
issue 14: H = 1024, B = 32, T = 100, input 64. Θ_x = Θ_h is calibrated so that the hidden-delta
occupancy is ``--occupancy`` (default 10 %). Times are medians of ``--repeats`` runs after one
warm-up; ratios are against ``nn.GRU`` timed in the same process. ``--reference`` also times
the dense torch reference (slow). Prints a Markdown table per thread count.

    python benchmarks/cpu_training.py --threads 1 2
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch

from evsnn.functional import delta_gru_scan
from evsnn.ops import cpu_event, cpu_train


def timed(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def make_input(steps: int, batch: int, features: int, seed: int) -> torch.Tensor:
    # A slowly varying signal (random walk + sines), like sensor streams: input deltas are sparse.
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(steps, dtype=torch.float32).view(-1, 1, 1)
    freq = torch.rand(1, batch, features, generator=gen) * 0.05
    walk = torch.cumsum(torch.randn(steps, batch, features, generator=gen) * 0.05, dim=0)
    return torch.sin(t * freq * 6.28) + walk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--input", type=int, default=64)
    parser.add_argument("--occupancy", type=float, nargs="+", default=[0.1])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reference", action="store_true")
    args = parser.parse_args()
    hs, batch = args.hidden, args.batch
    x = make_input(args.steps, batch, args.input, seed=0)
    gru = torch.nn.GRU(args.input, hs)
    weights = [p.detach().clone() for p in (gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0)]

    def occupancy(theta: float) -> float:
        with torch.no_grad():
            trace = cpu_event.delta_gru_event_scan(x, None, *weights, theta_x=theta, theta_h=theta)[2]
        return (trace.delta_h != 0).float().mean().item()

    def calibrate(target: float) -> float:
        lo, hi = 0.0, 0.5
        for _ in range(12):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if occupancy(mid) > target else (lo, mid)
        return (lo + hi) / 2

    def train_step(fn, theta: float) -> Callable[[], None]:
        def run() -> None:
            params = [w.clone().requires_grad_(True) for w in weights]
            out = fn(x, None, *params, theta_x=theta, theta_h=theta)[0]
            out.sum().backward()

        return run

    def gru_step() -> None:
        gru.zero_grad()
        gru(x)[0].sum().backward()

    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, H = {hs}, B = {batch}, "
        f"T = {args.steps}, input {args.input}, fwd+bwd of out.sum(), median of {args.repeats}"
    )
    thetas = {target: calibrate(target) for target in args.occupancy}
    ref_col = " reference ms |" if args.reference else ""
    for threads in args.threads:
        torch.set_num_threads(threads)
        print(f"\n{threads} thread(s), load {os.getloadavg()[0]:.2f}\n")
        print(f"| Θ | hidden occ. | nn.GRU ms | fused ms | cpu_event ms |{ref_col} fused / nn.GRU | fused vs cpu_event |")
        print("|---|---|---|---|---|" + ("---|" if args.reference else "") + "---|---|")
        for theta in thetas.values():
            t_gru = timed(gru_step, args.repeats)
            t_fused = timed(train_step(cpu_train.delta_gru_train_scan, theta), args.repeats)
            t_event = timed(train_step(cpu_event.delta_gru_event_scan, theta), args.repeats)
            ref = ""
            if args.reference:
                ref = f" {timed(train_step(delta_gru_scan, theta), 1) * 1e3:.0f} |"
            print(
                f"| {theta:.4f} | {occupancy(theta):.3f} | {t_gru * 1e3:.0f} | {t_fused * 1e3:.0f} | "
                f"{t_event * 1e3:.0f} |{ref} {t_fused / t_gru:.2f}× | {t_event / t_fused:.2f}× faster |",
                flush=True,
            )
    print(f"\n# load at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
