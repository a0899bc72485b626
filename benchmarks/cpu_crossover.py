"""Where the cpu_event backend beats the dense torch reference on the CPU, for inference and
for training separately: the regions behind ``backend="auto"`` (each family's ``auto_inference``/``auto_training`` in
:mod:`evsnn.ops.family`).

One process, one thread by default (``--threads``). For each family, batch B and hidden size H
it times the reference scan of :mod:`evsnn.functional` and the cpu_event scan on the same
data, in inference (``torch.no_grad()``, forward only) and in training (forward + backward of
``out.sum()`` with every parameter requiring a gradient), and prints the ratio
``reference time / event time`` (> 1: the event path is faster). Activity is calibrated to
``--activity`` (EGRU events via θ; delta cells' hidden-delta occupancy via Θ_x = Θ_h; ALIF
spikes via the input scale) on the inference path first. Times are medians of ``--repeats``.

    python benchmarks/cpu_crossover.py                              # default grid (a few minutes)
    python benchmarks/cpu_crossover.py --batch 32 --hidden 1024 --steps 100 --families egru
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch

from evsnn.functional import alif_scan, delta_gru_scan, delta_lstm_scan, egru_scan
from evsnn.ops import cpu_common
from evsnn.ops.alif import cpu as alif_cpu
from evsnn.ops.delta import cpu as delta_cpu
from evsnn.ops.egru import cpu as egru_cpu

FAMILIES = ("egru", "delta_gru", "delta_lstm", "alif")


def timed(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: numba compilation cache, allocator
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


def uniform(shape, bound: float, gen: torch.Generator) -> torch.Tensor:
    return (torch.rand(shape, generator=gen) * 2 - 1) * bound


def calibrate(activity_of: Callable[[float], float], target: float, lo: float, hi: float, increasing: bool) -> float:
    """Bisection on a monotone activity (decreasing in a threshold, increasing in a scale)."""
    for _ in range(12):
        mid = (lo + hi) / 2
        if (activity_of(mid) > target) != increasing:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def problem(family: str, steps: int, batch: int, hidden: int, inp: int, target: float):
    """``(reference_fn, event_fn, make_args, activity)``: ``make_args(grad)`` returns the
    positional and keyword arguments of both scans (parameters requiring a gradient when
    ``grad``); activity is what the calibration reached."""
    gen = torch.Generator().manual_seed(hidden * 131 + batch)
    x = make_input(steps, batch, inp, seed=batch)
    bound = hidden**-0.5
    if family == "egru":
        w = [uniform(s, bound, gen) for s in ((3 * hidden, inp), (3 * hidden, hidden), (3 * hidden,), (3 * hidden,))]

        def args(theta: float, grad: bool):
            params = [p.clone().requires_grad_(grad) for p in w]
            thr = torch.full((hidden,), theta, requires_grad=grad)
            return (x, None, *params, thr), {}

        def activity(theta: float) -> float:
            with torch.no_grad():
                a, k = args(theta, False)
                return (egru_cpu.egru_scan_cpu(*a, **k)[0] != 0).float().mean().item()

        theta = calibrate(activity, target, 1e-3, 1.0, increasing=False)
        return egru_scan, egru_cpu.egru_scan_cpu, lambda grad: args(theta, grad), activity(theta)
    if family in ("delta_gru", "delta_lstm"):
        gates = 3 if family == "delta_gru" else 4
        w = [
            uniform(s, bound, gen)
            for s in ((gates * hidden, inp), (gates * hidden, hidden), (gates * hidden,), (gates * hidden,))
        ]
        ref = delta_gru_scan if family == "delta_gru" else delta_lstm_scan
        event = delta_cpu.delta_gru_scan_cpu if family == "delta_gru" else delta_cpu.delta_lstm_scan_cpu

        def args(theta: float, grad: bool):
            params = [p.clone().requires_grad_(grad) for p in w]
            return (x, None, *params), {"theta_x": theta, "theta_h": theta}

        def activity(theta: float) -> float:
            with torch.no_grad():
                a, k = args(theta, False)
                return (event(*a, **k)[2].delta_h != 0).float().mean().item()

        theta = calibrate(activity, target, 0.0, 0.5, increasing=False)
        return ref, event, lambda grad: args(theta, grad), activity(theta)
    if family == "alif":
        tau_mem = 20.0 + 5.0 * torch.randn(hidden, generator=gen).clamp(-2, 2)
        tau_adapt = 150.0 + 10.0 * torch.randn(hidden, generator=gen).clamp(-2, 2)
        w_in = uniform((hidden, inp), inp**-0.5, gen)
        w_hh = uniform((hidden, hidden), bound, gen)
        base = x @ w_in.t()

        def args(scale: float, grad: bool):
            current = (base * scale).requires_grad_(grad)
            return (current, None), {
                "tau_mem": tau_mem.clone().requires_grad_(grad),
                "tau_adapt": tau_adapt.clone().requires_grad_(grad),
                "weight_hh": w_hh.clone().requires_grad_(grad),
            }

        def activity(scale: float) -> float:
            with torch.no_grad():
                a, k = args(scale, False)
                return alif_cpu.alif_scan_cpu(*a, **k)[0].mean().item()

        scale = calibrate(activity, target, 0.0, 50.0, increasing=True)
        return alif_scan, alif_cpu.alif_scan_cpu, lambda grad: args(scale, grad), activity(scale)
    raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")


def run_once(fn, make_args, training: bool) -> None:
    a, k = make_args(training)
    if not training:
        with torch.no_grad():
            fn(*a, **k)
        return
    out = fn(*a, **k)[0]
    out.sum().backward()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--hidden", nargs="+", type=int, default=[128, 1024])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--input", type=int, default=64)
    parser.add_argument("--activity", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s), "
        f"T = {args.steps}, input {args.input}, target activity {args.activity}, "
        f"numba loops: {cpu_common.numba_available()}, load {os.getloadavg()[0]:.2f}"
    )
    print("| family | mode | B | H | activity | reference ms | cpu_event ms | ref / event |")
    print("|---|---|---|---|---|---|---|---|")
    for family in args.families:
        for batch in args.batch:
            for hidden in args.hidden:
                ref, event, make_args, act = problem(family, args.steps, batch, hidden, args.input, args.activity)
                for training in (False, True):
                    t_ref = timed(partial(run_once, ref, make_args, training), args.repeats)
                    t_ev = timed(partial(run_once, event, make_args, training), args.repeats)
                    mode = "training" if training else "inference"
                    print(
                        f"| {family} | {mode} | {batch} | {hidden} | {act:.3f} | {t_ref * 1e3:.1f} | "
                        f"{t_ev * 1e3:.1f} | {t_ref / t_ev:.2f} |",
                        flush=True,
                    )
    print(f"# load at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
