"""Training-step cost of the snntorch ALIF adapter beside ``snn.Leaky``, at snntorch's tutorial-5 shape.

The network of snntorch's tutorial 5 (``Linear(784, 1000)``, neuron, ``Linear(1000, 10)``,
neuron; 25 steps; batch 128), one training step each (forward over the 25 steps, the tutorial's
cross-entropy on the output membrane summed over steps, backward, Adam step), once with
``snn.Leaky(beta=0.95)`` and once with :class:`evsnn.interop.snntorch.ALIF` in its place. Both
run in the same process, interleaved (Leaky, ALIF, Leaky, ALIF, ...), on one torch thread; the
script prints the median and minimum of each and the ALIF/Leaky ratio, and the machine's load
(``uptime``): on a shared machine the minimum is the better estimate and the run should be
repeated on an idle one.

    PYTHONPATH=. python benchmarks/snntorch_overhead.py
    PYTHONPATH=. python benchmarks/snntorch_overhead.py --repeats 11 --adapt-strength 0 --surrogate atan

(``PYTHONPATH=.`` makes the script import this tree's evsnn rather than an installed one.)
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time

import snntorch as snn
import torch
from torch import nn

from evsnn.interop import snntorch as esnn

NUM_INPUTS, NUM_HIDDEN, NUM_OUTPUTS, NUM_STEPS, BATCH, BETA = 784, 1000, 10, 25, 128, 0.95


class Net(nn.Module):
    """snntorch tutorial 5's network with the neuron class as an argument."""

    def __init__(self, make_neuron) -> None:
        super().__init__()
        self.fc1 = nn.Linear(NUM_INPUTS, NUM_HIDDEN)
        self.lif1 = make_neuron()
        self.fc2 = nn.Linear(NUM_HIDDEN, NUM_OUTPUTS)
        self.lif2 = make_neuron()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mem1 = self.lif1.init_leaky()
        mem2 = self.lif2.init_leaky()
        spk2_rec, mem2_rec = [], []
        for _ in range(NUM_STEPS):
            cur1 = self.fc1(x)
            spk1, mem1 = self.lif1(cur1, mem1)
            cur2 = self.fc2(spk1)
            spk2, mem2 = self.lif2(cur2, mem2)
            spk2_rec.append(spk2)
            mem2_rec.append(mem2)
        return torch.stack(spk2_rec, dim=0), torch.stack(mem2_rec, dim=0)


def training_step(net: Net, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
    """One step of tutorial 5's training loop; returns its wall time in milliseconds."""
    loss_fn = nn.CrossEntropyLoss()
    start = time.perf_counter()
    _, mem_rec = net(x)
    loss = torch.zeros((), dtype=torch.float32)
    for step in range(NUM_STEPS):
        loss = loss + loss_fn(mem_rec[step], y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return (time.perf_counter() - start) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per network (at least 5)")
    parser.add_argument("--adapt-strength", type=float, default=1.8, help="ALIF's adaptation (0: a LIF)")
    parser.add_argument(
        "--surrogate",
        choices=("default", "atan"),
        default="default",
        help="ALIF's spike_grad: its default (evsnn's MultiGaussian) or snntorch's atan, snn.Leaky's default",
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.repeats < 5:
        parser.error(f"--repeats must be at least 5 for a median, got {args.repeats}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.rand(BATCH, NUM_INPUTS)
    y = torch.randint(0, NUM_OUTPUTS, (BATCH,))
    spike_grad = snn.surrogate.atan() if args.surrogate == "atan" else None
    nets = {
        "snn.Leaky": Net(lambda: snn.Leaky(beta=BETA)),
        "evsnn ALIF": Net(lambda: esnn.ALIF(beta=BETA, adapt_strength=args.adapt_strength, spike_grad=spike_grad)),
    }
    opts = {name: torch.optim.Adam(net.parameters(), lr=5e-4, betas=(0.9, 0.999)) for name, net in nets.items()}
    times: dict[str, list[float]] = {name: [] for name in nets}
    for name, net in nets.items():  # warm-up: first-use costs are not the per-step overhead
        training_step(net, opts[name], x, y)
    for _ in range(args.repeats):
        for name, net in nets.items():
            times[name].append(training_step(net, opts[name], x, y))
    for name, t in times.items():
        print(f"{name:12s} median {statistics.median(t):8.1f} ms   min {min(t):8.1f} ms   ({len(t)} steps)")
    leaky, alif = times["snn.Leaky"], times["evsnn ALIF"]
    print(
        f"ALIF / Leaky: median {statistics.median(alif) / statistics.median(leaky):.3f}, "
        f"min {min(alif) / min(leaky):.3f}  (threads {args.threads}, adapt_strength {args.adapt_strength}, "
        f"surrogate {args.surrogate})"
    )
    print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
    main()
