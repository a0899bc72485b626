"""CPU streaming inference: evsnn's event path vs its dense reference vs torch.nn.GRU/LSTM.

One process, B = 1, T steps (default 1000), hidden sizes and activities from the command line.
Activity is set by calibrating the threshold (EGRU: θ; delta cells: Θ_x = Θ_h; ALIF, ``--families
alif``: the scale of the input weights, spikes per neuron per step) on the whole input, then
measured on the timed run. The ALIF rows time ``W_ih x`` and the recurrent ALIF scan together. Times are medians of ``--repeats`` runs (the dense
reference, being slow, runs ``--ref-repeats`` times). Ratios are against ``torch.nn.GRU``
(``nn.LSTM`` for DeltaLSTM) timed in the same process, interleaved with the event path and
``Stream.step`` (one run of each per repeat), so that a change of machine load between them
does not skew the ratio. Prints the load average and a Markdown table.

Columns: "event" is the event path's scan over the whole chunk (the fused numba loop);
"Stream.step" one step at a time through
``evsnn.streaming.Stream`` (``--stream``: one fused numba call per step, input projection or
encoding included).

    python benchmarks/cpu_streaming.py                       # full table (several minutes)
    python benchmarks/cpu_streaming.py --hidden 1024 --activity 0.1 0.02
    python benchmarks/cpu_streaming.py --crossover           # event vs dense over (B, H)
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
from evsnn.ops.alif import cpu as alif_cpu
from evsnn.ops.delta import cpu as delta_cpu
from evsnn.ops.egru import cpu as egru_cpu
from evsnn.streaming import Stream


def timed(fn: Callable[[], object], repeats: int) -> float:
    return timed_interleaved([fn], repeats)[0]


def timed_interleaved(fns: list[Callable[[], object] | None], repeats: int) -> list[float]:
    """Median time of each function, run in turn once per repeat (``None``: not timed, NaN)."""
    live = [fn for fn in fns if fn is not None]
    for fn in live:
        fn()  # warm-up (allocator, first-call dispatch, numba compile)
    times: dict[int, list[float]] = {id(fn): [] for fn in live}
    for _ in range(repeats):
        for fn in live:
            start = time.perf_counter()
            fn()
            times[id(fn)].append(time.perf_counter() - start)
    return [float("nan") if fn is None else statistics.median(times[id(fn)]) for fn in fns]


def run_stream(stream: Stream, x: torch.Tensor) -> None:
    stream.reset()
    for t in range(x.shape[0]):
        stream.step(x[t])


def make_input(steps: int, batch: int, features: int, seed: int) -> torch.Tensor:
    # A slowly varying signal (random walk + sines), like sensor streams: input deltas are sparse.
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(steps, dtype=torch.float32).view(-1, 1, 1)
    freq = torch.rand(1, batch, features, generator=gen) * 0.05
    walk = torch.cumsum(torch.randn(steps, batch, features, generator=gen) * 0.05, dim=0)
    return torch.sin(t * freq * 6.28) + walk


def gru_weights(gates: int, inp: int, hidden: int, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    bound = hidden**-0.5
    shapes = [(gates * hidden, inp), (gates * hidden, hidden), (gates * hidden,), (gates * hidden,)]
    return [(torch.rand(s, generator=gen) * 2 - 1) * bound for s in shapes]


def calibrate(activity_of: Callable[[float], float], target: float, lo: float, hi: float) -> float:
    """Bisection on a monotone (decreasing in the threshold) activity."""
    for _ in range(14):
        mid = (lo + hi) / 2
        if activity_of(mid) > target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def egru_rows(hidden, activities, args, x):
    w = gru_weights(3, args.input, hidden, seed=hidden)
    gru = torch.nn.GRU(args.input, hidden)
    with torch.no_grad():
        for p, v in zip((gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0), w):
            p.copy_(v)

    def activity(theta: float, seq=x) -> float:
        y = egru_cpu.egru_scan_cpu(seq, None, *w, torch.full((hidden,), theta))[0]
        return float((y != 0).float().mean())

    rows = []
    for target in activities:
        theta = calibrate(activity, target, 1e-3, 1.0)
        th = torch.full((hidden,), theta)
        act = activity(theta, x)
        t_ref = timed(partial(egru_scan, x, None, *w, th), args.ref_repeats) if not args.skip_ref else float("nan")
        stream_fn = None
        if args.stream:
            from evsnn.nn import EGRU

            layer = EGRU(args.input, hidden, threshold_init="constant").eval()
            with torch.no_grad():
                for p, v in zip((layer.weight_ih, layer.weight_hh, layer.bias_ih, layer.bias_hh), w):
                    p.copy_(v)
                layer.log_threshold.copy_(th.log())
            stream_fn = partial(run_stream, Stream(layer, backend="cpu_event"), x)
        event_fn = partial(egru_cpu.egru_scan_cpu, x, None, *w, th)
        t_gru, t_ev, t_stream = timed_interleaved([lambda: gru(x), event_fn, stream_fn], args.repeats)
        rows.append(("EGRU", hidden, act, t_ev, t_stream, t_ref, t_gru, "nn.GRU"))
    return rows


def delta_rows(gates, hidden, activities, args, x):
    w = gru_weights(gates, args.input, hidden, seed=hidden + gates)
    peer = (torch.nn.GRU if gates == 3 else torch.nn.LSTM)(args.input, hidden)
    with torch.no_grad():
        for p, v in zip((peer.weight_ih_l0, peer.weight_hh_l0, peer.bias_ih_l0, peer.bias_hh_l0), w):
            p.copy_(v)
    ev_fn = delta_cpu.delta_gru_scan_cpu if gates == 3 else delta_cpu.delta_lstm_scan_cpu
    ref_fn = delta_gru_scan if gates == 3 else delta_lstm_scan

    def activity(theta: float, seq=x) -> float:
        trace = ev_fn(seq, None, *w, theta_x=theta, theta_h=theta)[2]
        return float((trace.delta_h != 0).float().mean())

    rows = []
    name = "DeltaGRU" if gates == 3 else "DeltaLSTM"
    for target in activities:
        theta = calibrate(activity, target, 0.0, 0.5)
        act = activity(theta, x)
        stream_fn = None
        if args.stream:
            from evsnn.nn import DeltaGRU, DeltaLSTM

            layer = (DeltaGRU if gates == 3 else DeltaLSTM)(args.input, hidden, theta_x=theta, theta_h=theta).eval()
            with torch.no_grad():
                for p, v in zip((layer.weight_ih, layer.weight_hh, layer.bias_ih, layer.bias_hh), w):
                    p.copy_(v)
            stream_fn = partial(run_stream, Stream(layer, backend="cpu_event"), x)
        event_fn = partial(ev_fn, x, None, *w, theta_x=theta, theta_h=theta)
        t_peer, t_ev, t_stream = timed_interleaved([lambda: peer(x), event_fn, stream_fn], args.repeats)
        t_ref = (
            timed(partial(ref_fn, x, None, *w, theta_x=theta, theta_h=theta), args.ref_repeats)
            if not args.skip_ref
            else float("nan")
        )
        rows.append((name, hidden, act, t_ev, t_stream, t_ref, t_peer, "nn.GRU" if gates == 3 else "nn.LSTM"))
    return rows


def alif_rows(hidden, activities, args, x):
    """Recurrent ALIF (evsnn.ALIF's initialisation) vs nn.GRU of the same width: ``W_ih x`` and the
    scan (the fused numba loop of the cpu_event path), Stream.step, the reference."""
    from evsnn.nn import ALIF

    torch.manual_seed(hidden)
    layer = ALIF(args.input, hidden).eval()
    gru = torch.nn.GRU(args.input, hidden)
    w_in = layer.weight_ih.detach().clone()
    kw = {n: getattr(layer, n).detach() for n in ("tau_mem", "tau_adapt", "b0", "beta", "weight_hh", "bias_hh")}

    def scan(fn, scale: float, seq=x):
        return fn(torch.nn.functional.linear(seq, w_in * scale, layer.bias_ih), None, **kw)

    def activity(scale: float, seq=x) -> float:
        return float(scan(alif_cpu.alif_scan_cpu, scale, seq)[0].mean())

    rows = []
    for target in activities:
        # Spikes grow with the input scale: bisect on the negated scale with the decreasing rule.
        scale = -calibrate(lambda neg: activity(-neg), target, -20.0, 0.0)
        act = activity(scale)
        t_ref = timed(partial(scan, alif_scan, scale), args.ref_repeats) if not args.skip_ref else float("nan")
        stream_fn = None
        if args.stream:
            with torch.no_grad():
                layer.weight_ih.copy_(w_in * scale)
            stream_fn = partial(run_stream, Stream(layer, backend="cpu_event"), x)
        event_fn = partial(scan, alif_cpu.alif_scan_cpu, scale)
        t_gru, t_ev, t_stream = timed_interleaved([lambda: gru(x), event_fn, stream_fn], args.repeats)
        rows.append(("ALIF", hidden, act, t_ev, t_stream, t_ref, t_gru, "nn.GRU"))
    return rows


def crossover(args) -> None:
    print("| B | H | EGRU activity | event ms | dense ref ms | dense / event |")
    print("|---|---|---|---|---|---|")
    for hidden in args.cross_hidden:
        w = gru_weights(3, args.input, hidden, seed=1)
        for batch in args.cross_batch:
            x = make_input(args.cross_steps, batch, args.input, seed=batch) * 2
            th = torch.full((hidden,), args.cross_theta)
            y = egru_cpu.egru_scan_cpu(x, None, *w, th)[0]
            t_ev = timed(partial(egru_cpu.egru_scan_cpu, x, None, *w, th), args.repeats)
            t_ref = timed(partial(egru_scan, x, None, *w, th), args.repeats)
            act = float((y != 0).float().mean())
            print(f"| {batch} | {hidden} | {act:.1%} | {t_ev * 1e3:.1f} | {t_ref * 1e3:.1f} | {t_ref / t_ev:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--input", type=int, default=64)
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 1024, 2048])
    parser.add_argument("--activity", type=float, nargs="+", default=[0.5, 0.2, 0.1, 0.05, 0.02])
    parser.add_argument("--families", nargs="+", default=["egru", "delta_gru", "delta_lstm"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ref-repeats", type=int, default=1)
    parser.add_argument("--skip-ref", action="store_true", help="skip the (slow) dense evsnn reference")
    parser.add_argument("--stream", action="store_true", help="also time Stream.step one step at a time")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--crossover", action="store_true")
    parser.add_argument("--cross-hidden", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--cross-batch", type=int, nargs="+", default=[1, 4, 8, 16, 32])
    parser.add_argument("--cross-steps", type=int, default=100)
    parser.add_argument("--cross-theta", type=float, default=0.15)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
        f"{time.strftime('%Y-%m-%d')}, B = 1, T = {args.steps}, input {args.input}, median of {args.repeats}, "
        f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())} on {os.cpu_count()} CPUs"
    )
    with torch.inference_mode():
        if args.crossover:
            crossover(args)
            return
        rows = []
        for hidden in args.hidden:
            x = make_input(args.steps, 1, args.input, seed=0)
            if "egru" in args.families:
                rows += egru_rows(hidden, args.activity, args, x)
            if "delta_gru" in args.families:
                rows += delta_rows(3, hidden, args.activity, args, x)
            if "delta_lstm" in args.families:
                rows += delta_rows(4, hidden, args.activity, args, x)
            if "alif" in args.families:
                rows += alif_rows(hidden, args.activity, args, x)
    print()
    print(
        "| cell | H | activity | event ms | Stream.step ms | dense ref ms | peer ms | "
        "peer / event | peer / Stream.step | µs per step (event) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")

    def ms(v: float) -> str:
        return "–" if v != v else f"{v * 1e3:.0f}"

    for name, hidden, act, t_ev, t_stream, t_ref, t_peer, peer in rows:
        per_stream = "–" if t_stream != t_stream else f"{t_peer / t_stream:.2f}×"
        print(
            f"| {name} | {hidden} | {act:.1%} | {ms(t_ev)} | {ms(t_stream)} | {ms(t_ref)} | "
            f"{peer} {ms(t_peer)} | {t_peer / t_ev:.2f}× | {per_stream} | {t_ev / args.steps * 1e6:.0f} |"
        )


if __name__ == "__main__":
    main()
