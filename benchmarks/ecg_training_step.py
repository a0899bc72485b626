"""One training step of the QTDB ECG network (Yin et al.; evsnn.train.PerStepALIF) on the CPU, per backend.

Forward + per-step NLL + backward + Adam step of one batch (B = 64 traces of T = 1301 steps, 4 inputs,
36 recurrent ALIF neurons, 6 membrane-readout neurons), one torch thread, median of ``--repeats``
after one warm-up (which also compiles numba kernels). The traces are random events with the
data's density (about 8 % of the inputs are nonzero), so no data folder is needed. An epoch of
the full data set is 9 such steps plus one forward pass over the 141 test traces.

    OMP_NUM_THREADS=1 python benchmarks/ecg_training_step.py --backends torch cpu_event
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from evsnn.train import PerStepALIF


def step_time(backend: str, adaptive: bool, repeats: int) -> tuple[float, float]:
    torch.manual_seed(0)
    model = PerStepALIF(4, 36, 6, adaptive=adaptive, backend=backend)
    opt = torch.optim.Adam(model.param_groups(1e-2))
    x = (torch.rand(1301, 64, 4) < 0.08).float()
    y = torch.randint(0, 6, (64, 1301))
    times, rates = [], []
    for i in range(repeats + 1):
        start = time.perf_counter()
        log_probs, spikes = model(x)
        loss = model.loss(log_probs, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - start)
        rates.append(float(spikes.detach().mean()))
    return statistics.median(times), rates[-1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backends", nargs="+", default=["torch", "cpu_event"])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    print("| backend | hidden | s per step (B=64, T=1301) | spikes/neuron/step |")
    print("|---|---|---|---|")
    for backend in args.backends:
        for adaptive in (True, False):
            seconds, rate = step_time(backend, adaptive, args.repeats)
            print(f"| {backend} | {'ALIF' if adaptive else 'LIF (β=0)'} | {seconds:.2f} | {rate:.3f} |", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
