"""Per-call cost of the public layers on the CPU, beside ``torch.nn.GRU`` in the same process.

Two shapes: a small one where the per-call overhead of the Python layer (argument checks,
backend dispatch, statistics) dominates, and a medium one where the scan dominates. Forward
(under ``torch.no_grad``) and forward+backward of ``out.sum()``; medians of ``--repeats``
runs after a warm-up; one torch thread unless ``--threads`` says otherwise. Every layer runs
with its defaults (``backend="auto"``, ``record_stats`` default), as a user would call it.

Use it to check that a change to the layers costs no speed: run it on both trees in turn
(``PYTHONPATH=OLD_TREE python benchmarks/layer_overhead.py`` and then on the new tree) and
compare the ratio columns, which are robust to the machine's load.

    python benchmarks/layer_overhead.py
    python benchmarks/layer_overhead.py --repeats 50 --threads 2
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch

import evsnn

SHAPES = {"small": (20, 4, 16, 32), "medium": (100, 8, 64, 256)}  # T, B, input, hidden


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def layers(inp: int, hidden: int) -> dict[str, torch.nn.Module]:
    return {
        "nn.GRU": torch.nn.GRU(inp, hidden),
        "ALIF": evsnn.ALIF(inp, hidden),
        "EGRU": evsnn.EGRU(inp, hidden),
        "DeltaGRU": evsnn.DeltaGRU(inp, hidden, theta_x=0.05, theta_h=0.05),
        "DeltaLSTM": evsnn.DeltaLSTM(inp, hidden, theta_x=0.05, theta_h=0.05),
    }


def measure(shape: str, repeats: int) -> list[tuple[str, float, float]]:
    steps, batch, inp, hidden = SHAPES[shape]
    x = torch.randn(steps, batch, inp)
    rows = []
    for name, layer in layers(inp, hidden).items():

        def forward(layer=layer):
            with torch.no_grad():
                layer(x)

        def train_step(layer=layer):
            out = layer(x)[0]
            out.sum().backward()

        rows.append((name, median_ms(forward, repeats), median_ms(train_step, repeats)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(
        f"# layer call cost, {datetime.date.today()}, {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}, evsnn from {os.path.dirname(evsnn.__file__)}, "
        f"threads {args.threads}, load {os.getloadavg()[0]:.2f}"
    )
    for shape in SHAPES:
        steps, batch, inp, hidden = SHAPES[shape]
        print(f"\n## {shape}: T={steps}, B={batch}, input={inp}, H={hidden}\n")
        print("| layer | fwd ms | fwd+bwd ms | fwd / nn.GRU | fwd+bwd / nn.GRU |")
        print("|---|---|---|---|---|")
        rows = measure(shape, args.repeats)
        gru_fwd, gru_train = rows[0][1], rows[0][2]
        for name, fwd, train in rows:
            print(f"| {name} | {fwd:.2f} | {train:.2f} | {fwd / gru_fwd:.2f} | {train / gru_train:.2f} |")


if __name__ == "__main__":
    main()
