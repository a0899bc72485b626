"""Delta-cell training on the CPU: the fused numba training kernels (evsnn.ops.delta.cpu_train, what
backend="cpu_event" runs in training) vs torch.nn.GRU / nn.LSTM training, one process.

Forward + backward of ``out.sum()`` with every parameter requiring a gradient, default shape
H = 1024, B = 32, T = 100, input 64. Θ_x = Θ_h is calibrated so that the hidden-delta
occupancy is ``--occupancy`` (default 10 %). ``--cell lstm`` for the DeltaLSTM. Times are medians of ``--repeats`` runs after one
warm-up; ratios are against ``nn.GRU`` timed in the same process. ``--reference`` also times
the dense torch reference (slow). Prints a Markdown table per thread count.

    python benchmarks/cpu_training.py --threads 1 2

``--cell alif``: a recurrent ALIF layer (evsnn.ALIF's initialisation, input ``W_ih x + b_ih`` inside
the timed step) with the fused ALIF kernels (evsnn.ops.alif.cpu_train) vs nn.GRU, for the layer's default surrogate (infinite support: every unit's recurrent
gradient is formed) and a truncated one (``--alif-support``).

``--cell egru``: EGRU with the fused kernel (evsnn.ops.egru.cpu_train) vs nn.GRU, nn.GRU-initialised weights and the triangle(0.3) surrogate, θ calibrated to the event
fractions ``--occupancy`` (e.g. 0.12 0.15); ``--curve`` times its forward and backward against
backward sparsity, set by the triangle's width (``--widths``), interleaved with nn.GRU's training
step, and gives the ratio.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch

import evsnn
from evsnn.functional import alif_scan, delta_gru_scan, delta_lstm_scan, egru_scan
from evsnn.ops.alif import cpu_train as alif_train
from evsnn.ops.delta import cpu as delta_cpu
from evsnn.ops.delta import cpu_train
from evsnn.ops.egru.cpu_train import egru_train_scan
from evsnn.surrogate import Triangle

EGRU_SURROGATE = Triangle(0.3)


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


def backward_curve(fused, x, weights, thetas, occupancy, args) -> None:
    """Forward and backward time of the fused kernel per occupancy (the backward reads only the
    active columns, so its time must fall with the occupancy)."""
    for threads in args.threads:
        torch.set_num_threads(threads)
        print(f"\n{threads} thread(s), load {os.getloadavg()[0]:.2f}\n")
        print("| Θ | hidden occ. | backward sparsity | forward ms | backward ms |")
        print("|---|---|---|---|---|")
        for theta in thetas.values():
            fwd, bwd = [], []
            for _ in range(args.repeats + 1):  # the first run is a warm-up
                params = [w.clone().requires_grad_(True) for w in weights]
                start = time.perf_counter()
                out = fused(x, None, *params, theta_x=theta, theta_h=theta)[0]
                mid = time.perf_counter()
                out.sum().backward()
                end = time.perf_counter()
                fwd.append(mid - start)
                bwd.append(end - mid)
            occ = occupancy(theta)
            print(
                f"| {theta:.4f} | {occ:.3f} | {1 - occ:.3f} | {statistics.median(fwd[1:]) * 1e3:.0f} | "
                f"{statistics.median(bwd[1:]) * 1e3:.0f} |",
                flush=True,
            )
    print(f"\n# load at end {os.getloadavg()[0]:.2f}")


def alif_rows(args) -> None:
    """ALIF training rows: fused kernels (vs the reference) vs nn.GRU."""
    hs, batch = args.hidden, args.batch
    x = make_input(args.steps, batch, args.input, seed=0)
    torch.manual_seed(0)
    layer = evsnn.ALIF(args.input, hs)
    gru = torch.nn.GRU(args.input, hs)
    names = ("weight_ih", "bias_ih", "tau_mem", "tau_adapt", "weight_hh", "bias_hh")
    surrogates = [layer.surrogate, layer.surrogate.truncate(args.alif_support)]

    def train_step(fn, surrogate) -> Callable[[], object]:
        def run() -> object:
            p = {n: getattr(layer, n).detach().clone().requires_grad_(True) for n in names}
            current = torch.nn.functional.linear(x, p["weight_ih"], p["bias_ih"])
            out = fn(
                current,
                None,
                tau_mem=p["tau_mem"],
                tau_adapt=p["tau_adapt"],
                b0=layer.b0,
                beta=layer.beta,
                surrogate=surrogate,
                weight_hh=p["weight_hh"],
                bias_hh=p["bias_hh"],
            )
            out[0].sum().backward()
            return out

        return run

    def gru_step() -> None:
        gru.zero_grad()
        gru(x)[0].sum().backward()

    with torch.no_grad():
        current = torch.nn.functional.linear(x, layer.weight_ih, layer.bias_ih)
        kwargs = {n: getattr(layer, n) for n in ("tau_mem", "tau_adapt", "b0", "beta", "weight_hh", "bias_hh")}
        spikes, _, trace = alif_scan(current, None, **kwargs)
        x_spike = trace.v - trace.threshold
    rate = spikes.float().mean().item()
    print(
        f"# ALIF, {platform.processor() or platform.machine()}, torch {torch.__version__}, H = {hs}, B = {batch}, "
        f"T = {args.steps}, input {args.input}, fwd+bwd of out.sum(), median of {args.repeats}, "
        f"{rate:.3f} spikes per neuron per step"
    )
    ref_col = " reference ms |" if args.reference else ""
    for threads in args.threads:
        torch.set_num_threads(threads)
        print(f"\n{threads} thread(s), load {os.getloadavg()[0]:.2f}\n")
        print(f"| surrogate | outside support | nn.GRU ms | fused ms |{ref_col} fused / nn.GRU | load |")
        print("|---|---|---|---|" + ("---|" if args.reference else "") + "---|---|")
        for surrogate in surrogates:
            outside = 0.0 if surrogate.support is None else (x_spike.abs() >= surrogate.support).float().mean().item()
            t_gru = timed(gru_step, args.repeats)
            t_fused = timed(train_step(alif_train.alif_train_scan, surrogate), args.repeats)
            ref = ""
            if args.reference:
                ref = f" {timed(train_step(alif_scan, surrogate), 1) * 1e3:.0f} |"
            print(
                f"| {surrogate!r} | {outside:.3f} | {t_gru * 1e3:.0f} | {t_fused * 1e3:.0f} |{ref} "
                f"{t_fused / t_gru:.2f}× | {os.getloadavg()[0]:.2f} |",
                flush=True,
            )
    print(f"\n# load at end {os.getloadavg()[0]:.2f}")


def egru_rows(args) -> None:
    """EGRU rows: the fused kernel (evsnn.ops.egru.cpu_train) vs nn.GRU training, θ calibrated to the event fractions ``--occupancy``; ``--curve``: forward and
    backward time of the fused kernel against backward sparsity (the triangle surrogate's width
    sets how many silent units sit inside its support), at the first event fraction."""
    hs, batch = args.hidden, args.batch
    x = make_input(args.steps, batch, args.input, seed=0)
    torch.manual_seed(0)
    gru = torch.nn.GRU(args.input, hs)
    weights = [p.detach().clone() for p in (gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0)]

    def forward(fn, theta: float, surrogate=EGRU_SURROGATE, grad: bool = False):
        params = [w.clone().requires_grad_(grad) for w in weights]
        thr = torch.full((hs,), theta, requires_grad=grad)
        return fn(x, None, *params, thr, surrogate=surrogate)

    def events(theta: float) -> float:
        with torch.no_grad():
            return (forward(egru_train_scan, theta)[0] != 0).float().mean().item()

    def live(theta: float, surrogate) -> float:
        """Fraction of (step, sample, unit) whose y can pass a gradient: an event or g(c − θ) ≠ 0."""
        with torch.no_grad():
            c_pre = forward(egru_train_scan, theta)[2].c_pre
        with torch.enable_grad():
            v = (c_pre - theta).requires_grad_(True)
            (g,) = torch.autograd.grad(surrogate(v).sum(), v)
        return ((c_pre > theta) | (g != 0)).float().mean().item()

    def calibrate(target: float) -> float:
        lo, hi = 0.0, 1.0
        for _ in range(12):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if events(mid) > target else (lo, mid)
        return (lo + hi) / 2

    def train_step(fn, theta: float, surrogate=EGRU_SURROGATE) -> Callable[[], None]:
        def run() -> None:
            forward(fn, theta, surrogate, grad=True)[0].sum().backward()

        return run

    def gru_step() -> None:
        gru.zero_grad()
        gru(x)[0].sum().backward()

    print(
        f"# EGRU, {platform.processor() or platform.machine()}, torch {torch.__version__}, H = {hs}, B = {batch}, "
        f"T = {args.steps}, input {args.input}, triangle(0.3) surrogate, nn.GRU-initialised weights, "
        f"fwd+bwd of out.sum(), median of {args.repeats}"
    )
    thetas = [calibrate(target) for target in args.occupancy]
    if args.curve:
        theta = thetas[0]
        for threads in args.threads:
            torch.set_num_threads(threads)
            print(
                f"\n{threads} thread(s), θ = {theta:.4f}, events {events(theta):.3f}, load {os.getloadavg()[0]:.2f}\n"
            )
            print(
                "| surrogate width ε | live units | backward sparsity | forward ms | backward ms | "
                "nn.GRU ms | EGRU / nn.GRU |"
            )
            print("|---|---|---|---|---|---|---|")
            for width in args.widths:
                surrogate = Triangle(width)
                fwd, bwd, dense = [], [], []
                for _ in range(args.repeats + 1):  # the first run is a warm-up
                    # nn.GRU's training step interleaved with the EGRU's, so load moves both alike
                    start = time.perf_counter()
                    gru_step()
                    dense.append(time.perf_counter() - start)
                    start = time.perf_counter()
                    out = forward(egru_train_scan, theta, surrogate, grad=True)[0]
                    mid = time.perf_counter()
                    out.sum().backward()
                    fwd.append(mid - start)
                    bwd.append(time.perf_counter() - mid)
                occ = live(theta, surrogate)
                f, b, g = (statistics.median(v[1:]) for v in (fwd, bwd, dense))
                print(
                    f"| {width:g} | {occ:.3f} | {1 - occ:.3f} | {f * 1e3:.0f} | {b * 1e3:.0f} | {g * 1e3:.0f} | "
                    f"{(f + b) / g:.2f}× |",
                    flush=True,
                )
        print(f"\n# load at end {os.getloadavg()[0]:.2f}")
        return
    ref_col = " reference ms |" if args.reference else ""
    for threads in args.threads:
        torch.set_num_threads(threads)
        print(f"\n{threads} thread(s), load {os.getloadavg()[0]:.2f}\n")
        print(f"| θ | events | live units | nn.GRU ms | fused ms |{ref_col} fused / nn.GRU |")
        print("|---|---|---|---|---|" + ("---|" if args.reference else "") + "---|")
        for theta in thetas:
            t_gru = timed(gru_step, args.repeats)
            t_fused = timed(train_step(egru_train_scan, theta), args.repeats)
            ref = f" {timed(train_step(egru_scan, theta), 1) * 1e3:.0f} |" if args.reference else ""
            print(
                f"| {theta:.4f} | {events(theta):.3f} | {live(theta, EGRU_SURROGATE):.3f} | {t_gru * 1e3:.0f} | "
                f"{t_fused * 1e3:.0f} |{ref} {t_fused / t_gru:.2f}× |",
                flush=True,
            )
    print(f"\n# load at end {os.getloadavg()[0]:.2f}")


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
    parser.add_argument("--cell", choices=("gru", "lstm", "alif", "egru"), default="gru")
    parser.add_argument(
        "--widths", type=float, nargs="+", default=[0.3, 0.1, 0.03, 0.01, 0.001], help="EGRU --curve: triangle widths"
    )
    parser.add_argument("--alif-support", type=float, default=0.3, help="support of the truncated ALIF surrogate row")
    parser.add_argument(
        "--curve", action="store_true", help="only the fused kernel: forward and backward time against occupancy"
    )
    args = parser.parse_args()
    if args.cell == "alif":
        alif_rows(args)
        return
    if args.cell == "egru":
        egru_rows(args)
        return
    gru_cell = args.cell == "gru"
    fused = cpu_train.delta_gru_train_scan if gru_cell else cpu_train.delta_lstm_train_scan
    event = delta_cpu.delta_gru_scan_cpu if gru_cell else delta_cpu.delta_lstm_scan_cpu
    reference = delta_gru_scan if gru_cell else delta_lstm_scan
    hs, batch = args.hidden, args.batch
    x = make_input(args.steps, batch, args.input, seed=0)
    gru = (torch.nn.GRU if gru_cell else torch.nn.LSTM)(args.input, hs)
    weights = [p.detach().clone() for p in (gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0)]

    def occupancy(theta: float) -> float:
        with torch.no_grad():
            trace = event(x, None, *weights, theta_x=theta, theta_h=theta)[2]
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
        f"# Delta{args.cell.upper()}, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"H = {hs}, B = {batch}, "
        f"T = {args.steps}, input {args.input}, fwd+bwd of out.sum(), median of {args.repeats}"
    )
    thetas = {target: calibrate(target) for target in args.occupancy}
    if args.curve:
        backward_curve(fused, x, weights, thetas, occupancy, args)
        return
    ref_col = " reference ms |" if args.reference else ""
    for threads in args.threads:
        torch.set_num_threads(threads)
        print(f"\n{threads} thread(s), load {os.getloadavg()[0]:.2f}\n")
        peer = "nn.GRU" if gru_cell else "nn.LSTM"
        print(f"| Θ | hidden occ. | {peer} ms | fused ms |{ref_col} fused / {peer} |")
        print("|---|---|---|---|" + ("---|" if args.reference else "") + "---|")
        for theta in thetas.values():
            t_gru = timed(gru_step, args.repeats)
            t_fused = timed(train_step(fused, theta), args.repeats)
            ref = ""
            if args.reference:
                ref = f" {timed(train_step(reference, theta), 1) * 1e3:.0f} |"
            print(
                f"| {theta:.4f} | {occupancy(theta):.3f} | {t_gru * 1e3:.0f} | {t_fused * 1e3:.0f} |{ref} "
                f"{t_fused / t_gru:.2f}× |",
                flush=True,
            )
    print(f"\n# load at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
