"""Two evsnn trees side by side: the public layers' call cost, interleaved in one process.

Timing two trees in separate processes on a shared machine moves by tens of percent between
runs; interleaving the calls of both trees in one process cancels most of that. Each tree's
``evsnn`` package is copied into a temporary folder under its own name (the package imports
itself only relatively), then every layer of both trees runs alternately on the same input, with
the old tree's weights loaded into the new one.

    python benchmarks/layer_overhead_ab.py OLD_TREE NEW_TREE            # e.g. a `git archive` of main
    python benchmarks/layer_overhead_ab.py OLD_TREE NEW_TREE --repeats 41
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

SHAPES = {"small": (20, 4, 16, 32), "medium": (100, 8, 64, 256)}  # T, B, input, hidden
LAYERS = ("ALIF", "EGRU", "DeltaGRU", "DeltaLSTM")


def load_tree(tree: str, name: str, into: Path):
    shutil.copytree(Path(tree) / "evsnn", into / name)
    return importlib.import_module(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old_tree")
    parser.add_argument("new_tree")
    parser.add_argument("--repeats", type=int, default=21)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        sys.path.insert(0, tmp)
        old, new = load_tree(args.old_tree, "evsnn_old", Path(tmp)), load_tree(args.new_tree, "evsnn_new", Path(tmp))
        print(f"# {datetime.date.today()}, torch {torch.__version__}, 1 thread, load {os.getloadavg()[0]:.2f}")
        print("| shape | layer | fwd old ms | fwd new ms | new/old | fwd+bwd old ms | fwd+bwd new ms | new/old |")
        print("|---|---|---|---|---|---|---|---|")
        for shape, (steps, batch, inp, hidden) in SHAPES.items():
            x = torch.randn(steps, batch, inp)
            for name in LAYERS:
                kw = {"theta_x": 0.05, "theta_h": 0.05} if name.startswith("Delta") else {}
                a, b = getattr(old, name)(inp, hidden, **kw), getattr(new, name)(inp, hidden, **kw)
                b.load_state_dict(a.state_dict(), strict=False)
                row = []
                for train in (False, True):

                    def run(layer, train=train, x=x):
                        if train:
                            layer(x)[0].sum().backward()
                        else:
                            with torch.no_grad():
                                layer(x)

                    run(a)
                    run(b)
                    times_a, times_b = [], []
                    for _ in range(args.repeats):
                        for layer, times in ((a, times_a), (b, times_b)):
                            start = time.perf_counter()
                            run(layer)
                            times.append((time.perf_counter() - start) * 1e3)
                    ma, mb = statistics.median(times_a), statistics.median(times_b)
                    row += [f"{ma:.2f}", f"{mb:.2f}", f"{mb / ma:.2f}"]
                print(f"| {shape} | {name} | " + " | ".join(row) + " |")
        print(f"# load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
