"""Scaling curves on the CPU: time against activity and against hidden size, for training and
streaming, each beside ``nn.GRU`` / ``nn.LSTM`` timed in the same process.

Everything goes through the public layers (``evsnn.EGRU``, ``evsnn.DeltaGRU``,
``evsnn.DeltaLSTM``, ``evsnn.streaming.Stream``) with ``backend="cpu_event"``, so the curves show what a
user gets. Two sweeps, each over the families of ``--families``:

- **activity**: H = ``--hidden`` (default 1024), activity in ``--activities`` (default 1–50 %);
- **hidden**: activity ``--activity`` (default 10 %), H in ``--hiddens`` (default 128–4096).

Three modes (``--modes``):

- ``training``: B = ``--batch`` (32), T = ``--train-steps`` (100); forward and backward of
  ``out.sum()`` with every parameter requiring a gradient; the EGRU with the surrogate
  ``--surrogate`` (a triangle of that half-width);
- ``chunk``: B = 1, T = ``--stream-steps`` (500): `Stream.chunk` on the whole sequence;
- ``step``: the same sequence through `Stream.step`, one step per call.

Activity is set by calibrating the threshold on the input (EGRU: θ, the fraction of units with an
event per step; delta cells: Θ_x = Θ_h, the fraction of hidden-delta slots sent), then measured
on the timed call. Each repeat runs the evsnn call and the peer once, interleaved; a point is the
median ratio ``evsnn time / peer time`` (below 1: evsnn is faster) with its range. The load
average is printed before and after; ``--json`` writes every point, which
``docs/figures/performance.py`` draws.

    OMP_NUM_THREADS=1 python benchmarks/cpu_scaling.py --json docs/data/cpu_scaling.json
    OMP_NUM_THREADS=1 python benchmarks/cpu_scaling.py --families egru --modes chunk --hiddens 256 1024
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import date

import torch
from torch import nn

import evsnn
from evsnn.streaming import Stream
from evsnn.surrogate import Triangle

FAMILIES = ("egru", "delta_gru", "delta_lstm")
MODES = ("training", "chunk", "step")


def make_input(steps: int, batch: int, features: int, seed: int) -> torch.Tensor:
    # A slowly varying signal (sines + a random walk), like a sensor stream: deltas are sparse
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(steps, dtype=torch.float32).view(-1, 1, 1)
    freq = torch.rand(1, batch, features, generator=gen) * 0.05
    walk = torch.cumsum(torch.randn(steps, batch, features, generator=gen) * 0.05, dim=0)
    return torch.sin(t * freq * 6.28) + walk


def build(family: str, inp: int, hidden: int, surrogate: float) -> tuple[nn.Module, nn.Module]:
    """The evsnn layer and its peer with the same weights (nn.GRU's initialisation)."""
    torch.manual_seed(hidden)
    if family == "delta_lstm":
        peer: nn.Module = nn.LSTM(inp, hidden)
        layer: nn.Module = evsnn.DeltaLSTM.from_torch(peer, backend="cpu_event")
        return layer, peer
    peer = nn.GRU(inp, hidden)
    if family == "delta_gru":
        return evsnn.DeltaGRU.from_torch(peer, backend="cpu_event"), peer
    layer = evsnn.EGRU(
        inp, hidden, threshold_init="constant", surrogate=Triangle(surrogate), backend="cpu_event", record_stats=False
    )
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(layer, name).copy_(getattr(peer, f"{name}_l0"))
    return layer, peer


def set_threshold(layer: nn.Module, value: float) -> None:
    if isinstance(layer, evsnn.EGRU):
        with torch.no_grad():
            layer.log_threshold.fill_(float(torch.tensor(value).log()))
    else:
        layer.theta_x = layer.theta_h = value


def activity_of(layer: nn.Module, x: torch.Tensor) -> float:
    """EGRU: units with an event per step; delta cells: hidden-delta slots sent."""
    with torch.no_grad():
        if isinstance(layer, evsnn.EGRU):
            return float((layer(x)[0] != 0).float().mean())
        layer.record_stats = True
        layer(x)
        stats = layer.last_stats
        layer.record_stats = False
        return float(stats.mean_event_fraction)


def calibrate(layer: nn.Module, x: torch.Tensor, target: float) -> float:
    """Bisection on the threshold (activity falls as it grows), on the log scale."""
    lo, hi = 1e-4, 4.0
    for _ in range(16):
        mid = (lo * hi) ** 0.5
        set_threshold(layer, mid)
        if activity_of(layer, x) > target:
            lo = mid
        else:
            hi = mid
    value = (lo * hi) ** 0.5
    set_threshold(layer, value)
    return value


def interleaved(fns: list[Callable[[], object]], repeats: int) -> list[list[float]]:
    for fn in fns:
        fn()  # warm-up: numba compilation, allocator
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - start)
    return times


def training_call(module: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    params = list(module.parameters())

    def run() -> None:
        for p in params:
            p.grad = None
        out = module(x)[0]
        out.sum().backward()

    return run


def point(family: str, mode: str, hidden: int, target: float, args) -> dict:
    layer, peer = build(family, args.input, hidden, args.surrogate)
    if mode == "training":
        x = make_input(args.train_steps, args.batch, args.input, seed=1)
        layer.train()
    else:
        x = make_input(args.stream_steps, 1, args.input, seed=1)
        layer.eval()
    threshold = calibrate(layer, x, target)
    measured = activity_of(layer, x)
    if mode == "training":
        ours, theirs = training_call(layer, x), training_call(peer, x)
    else:
        stream = Stream(layer, backend="cpu_event")

        def chunk() -> None:
            stream.reset()
            stream.chunk(x)

        def step() -> None:
            stream.reset()
            for t in range(x.shape[0]):
                stream.step(x[t])

        def peer_chunk() -> None:
            with torch.inference_mode():
                peer(x)

        def peer_step() -> None:
            with torch.inference_mode():
                state = None
                for t in range(x.shape[0]):
                    _, state = peer(x[t : t + 1], state)

        ours, theirs = (chunk, peer_chunk) if mode == "chunk" else (step, peer_step)
    t_ours, t_peer = interleaved([ours, theirs], args.repeats)
    ratios = sorted(a / b for a, b in zip(t_ours, t_peer))
    return {
        "family": family,
        "mode": mode,
        "hidden": hidden,
        "target_activity": target,
        "activity": measured,
        "threshold": threshold,
        "ms": statistics.median(t_ours) * 1e3,
        "peer": type(peer).__name__,
        "peer_ms": statistics.median(t_peer) * 1e3,
        "ratio": statistics.median(ratios),
        "ratio_min": ratios[0],
        "ratio_max": ratios[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--hidden", type=int, default=1024, help="H of the activity sweep")
    parser.add_argument("--activities", type=float, nargs="+", default=[0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5])
    parser.add_argument("--activity", type=float, default=0.1, help="activity of the hidden-size sweep")
    parser.add_argument("--hiddens", type=int, nargs="+", default=[128, 256, 512, 1024, 2048, 4096])
    parser.add_argument("--input", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32, help="batch of the training mode")
    parser.add_argument("--train-steps", type=int, default=100)
    parser.add_argument("--stream-steps", type=int, default=500)
    parser.add_argument("--surrogate", type=float, default=0.03, help="half-width of the EGRU's triangle surrogate")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="write every point to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s), "
        f"load before {load_before[0]:.2f}"
    )
    points = []
    print("| family | mode | H | activity | evsnn ms | peer | peer ms | evsnn ÷ peer (range) |")
    print("|---|---|---|---|---|---|---|---|")
    sweeps = [("activity", args.hidden, a) for a in args.activities]
    sweeps += [
        ("hidden", h, args.activity) for h in args.hiddens if h != args.hidden or args.activity not in args.activities
    ]
    for mode in args.modes:
        for family in args.families:
            for sweep, hidden, target in sweeps:
                p = point(family, mode, hidden, target, args) | {"sweep": sweep}
                points.append(p)
                print(
                    f"| {family} | {mode} | {hidden} | {p['activity']:.3f} | {p['ms']:.1f} | {p['peer']} | "
                    f"{p['peer_ms']:.1f} | {p['ratio']:.2f} ({p['ratio_min']:.2f}–{p['ratio_max']:.2f}) |",
                    flush=True,
                )
    load_after = os.getloadavg()
    print(f"# load after {load_after[0]:.2f}")
    if args.json:
        record = {
            "date": date.today().isoformat(),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "torch": torch.__version__,
            "threads": args.threads,
            "load": [load_before[0], load_after[0]],
            "command": "OMP_NUM_THREADS=1 python benchmarks/cpu_scaling.py " + " ".join(sys.argv[1:]),
            "points": points,
        }
        with open(args.json, "w") as f:
            json.dump(record, f, indent=1)


if __name__ == "__main__":
    main()
