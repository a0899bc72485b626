"""Gradient norm against the BPTT window on a trained QTDB ECG network.

Loads the network of a finished ``evsnn train --data ecg`` run folder and, for each window
length K, computes the gradient of one training batch exactly as ``evsnn train --tbptt K
--tbptt-update sequence`` does (the sequence runs in windows of K steps, the state carried
exactly from one window to the next, the gradient cut at the window edges, one backward per
window, summed) and prints the norm of the whole gradient, the number the optimiser step
receives and clipping would see. K = 1301
(the trace length) is full backpropagation through time. Several training batches (the same for
every K) give the median and the largest norm.

    OMP_NUM_THREADS=1 python examples/ecg_gradient_norms.py --data-dir ../shared/data/qtdb \
        --run runs/ecg400-tbptt50/adaptive-seed0 --windows 50 100 200 400 1301 --batches 4

The gradients are those of ``evsnn train`` itself (``evsnn.train._gradients``), so the table
describes the updates a run makes.
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

import torch

from evsnn.train import TrainConfig, _batches, _gradient_norm, _gradients, build_model, load_data


def gradient_norms(
    run: Path, data_dir: str, windows: list[int], batches: int, batch_size: int
) -> dict[int, list[float]]:
    """``{K: [norm of batch 0, batch 1, ...]}`` for the network saved in ``run``."""
    checkpoint = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    config = TrainConfig.from_dict({**checkpoint["config"], "data_dir": data_dir})
    train_set, _test, n_features, n_classes = load_data(config)
    model = build_model(config, n_features, n_classes)
    model.load_state_dict(checkpoint["model"])
    order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(0))
    norms: dict[int, list[float]] = {k: [] for k in windows}
    for b in range(batches):
        x, y = _batches(train_set, order[b * batch_size : (b + 1) * batch_size])
        for k in windows:
            model.zero_grad(set_to_none=True)
            for _ in _gradients(model, model, x, y, None if k >= x.shape[0] else k, "sequence"):
                pass
            norms[k].append(_gradient_norm(model))
    return norms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="folder with QTDB_train.mat and QTDB_test.mat")
    parser.add_argument("--run", nargs="+", required=True, help="finished evsnn train --data ecg run folders")
    parser.add_argument("--windows", type=int, nargs="+", default=[50, 100, 200, 400, 1301])
    parser.add_argument("--batches", type=int, default=4, help="training batches per window length")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| run | hidden adaptation | " + " | ".join(f"K = {k}" for k in args.windows) + " |")
    print("|---|---|" + "---|" * len(args.windows))
    for run in args.run:
        config = torch.load(Path(run) / "checkpoint.pt", map_location="cpu", weights_only=True)["config"]
        norms = gradient_norms(Path(run), args.data_dir, args.windows, args.batches, args.batch_size)

        def cell(values: list[float]) -> str:
            finite = [v for v in values if math.isfinite(v)]
            if len(finite) < len(values):
                return f"inf/NaN in {len(values) - len(finite)} of {len(values)}"
            return f"{statistics.median(values):.3g} (max {max(values):.3g})"

        beta = "β = 1.8" if config.get("adaptive") else "β = 0"
        print(f"| {Path(run).name} | {beta} | " + " | ".join(cell(norms[k]) for k in args.windows) + " |", flush=True)


if __name__ == "__main__":
    main()
