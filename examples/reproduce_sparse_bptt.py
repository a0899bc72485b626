"""Sparse BPTT (Chen et al. 2024) on a DeltaLSTM trained on JapaneseVowels (docs/reproductions.md).

    OMP_NUM_THREADS=1 python examples/reproduce_sparse_bptt.py --thetas 0 0.1 0.2 0.4 --seeds 0 1 2

Per Θ and seed: a DeltaLSTM (Θ_x = Θ_h = Θ in training and test, backend ``cpu_event``: the fused
numba kernel whose backward reads only the columns that were active in the forward pass) with
a leaky readout is trained, then

- ``bwd skipped``: the fraction of the backward's matrix operations skipped, ``1 − event_ops /
  dense_macs`` of the training batches (the backward does one dot product ``W[:, k]ᵀ δM`` and one
  gradient column ``δM Δs_k`` for every active column ``k`` of ``[Δx; Δh]``, the same columns as
  the forward: the ratio of its work to the dense backward's is the forward's event ratio);
- ``bwd ms``: the median wall-clock of ``loss.backward()`` on the same 5 training batches, with
  the trained weights, for the layer at its Θ, for the same kernel at Θ = 0 (every column active:
  the dense backward of the same code), and for ``nn.LSTM`` (PyTorch's dense CPU backward);
- the test accuracy at Θ.

Training batches are zero-padded (the padded steps are computed by every variant alike).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reproduce_common import Net, batch, evaluate, hardware, train  # noqa: E402

from evsnn.data.vowels import load_japanese_vowels  # noqa: E402


def backward_ms(net: Net, batches, repeats: int) -> float:
    times = []
    for _ in range(repeats + 1):  # the first round warms up (numba compilation, allocator)
        for x, y, lengths in batches:
            net.zero_grad(set_to_none=True)
            logits, _ = net(x, lengths)
            loss = F.cross_entropy(logits, y)
            start = time.perf_counter()
            loss.backward()
            times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times[len(batches) :])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--thetas", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.4])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=30)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(1)
    data = load_japanese_vowels(args.data_dir)
    print(
        f"# DeltaLSTM on JapaneseVowels, hidden {args.hidden}, {args.epochs} epochs, batch {args.batch_size}, "
        f"backend cpu_event; {hardware()}\n"
    )
    print(
        "| Θ | seed | test accuracy | bwd skipped | bwd ms at Θ | bwd ms, same kernel Θ=0 | bwd ms nn.LSTM | "
        "Θ=0 ÷ Θ | nn.LSTM ÷ Θ | train s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    gen = torch.Generator().manual_seed(1234)
    timing_batches = [
        batch(data.train, torch.randperm(len(data.train), generator=gen)[: args.batch_size]) for _ in range(5)
    ]
    for theta in args.thetas:
        for seed in args.seeds:
            torch.manual_seed(seed)
            net = Net("deltalstm", data.n_features, args.hidden, data.n_classes, theta=theta, backend="cpu_event")
            ops, macs = [0], [0]

            def count(module, inputs, output, ops=ops, macs=macs):
                if module.training and module.last_stats is not None:
                    ops[0] += int(module.last_stats.event_ops)
                    macs[0] += int(module.last_stats.dense_macs)

            handle = net.layer.register_forward_hook(count)
            secs = train(net, data.train, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=seed)
            handle.remove()
            acc = evaluate(net, data.test).accuracy
            skipped = 1 - ops[0] / macs[0]
            t_theta = backward_ms(net, timing_batches, args.repeats)
            net.layer.theta_x = net.layer.theta_h = 0.0
            t_dense = backward_ms(net, timing_batches, args.repeats)
            lstm = Net("lstm", data.n_features, args.hidden, data.n_classes)
            lstm.layer = net.layer.to_torch()
            lstm.readout.load_state_dict(net.readout.state_dict())
            t_lstm = backward_ms(lstm, timing_batches, args.repeats)
            print(
                f"| {theta:g} | {seed} | {acc:.4f} | {skipped:.3f} | {t_theta:.2f} | {t_dense:.2f} | {t_lstm:.2f} | "
                f"{t_dense / t_theta:.2f} | {t_lstm / t_theta:.2f} | {secs:.0f} |",
                flush=True,
            )
    print(f"\n# end: {hardware()}")


if __name__ == "__main__":
    main()
