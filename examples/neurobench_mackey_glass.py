"""NeuroBench's Mackey-Glass (MG17) chaotic forecasting task with an evsnn DeltaGRU.

NeuroBench's protocol (its ``examples/mackey_glass/lstm_benchmark.py``): the model is trained
one-step-ahead on the train split (10 Lyapunov times, 750 points, teacher forced), is then run
over the train split once more to warm up its state, and forecasts the test split (750 points)
*autonomously*: after the first test point it is fed its own predictions. The score is NeuroBench's
``SMAPE`` over the 750 forecasts; the evsnn metrics count the events inside the DeltaGRU.

The series: NeuroBench's ``MackeyGlass`` dataset downloads a pre-generated ``mg_17.npy`` by default.
Here it is generated on this machine with NeuroBench's own ``generate_data`` (jitcdde, the same
parameters: tau=17, lyaptime=197, constant_past=0.7206597, n=10, beta=0.2, gamma=0.1, 75 points
per Lyapunov time), so nothing is downloaded. NeuroBench notes that jitcdde's solution differs
between platforms, so the series is *not* bit-identical to their file; pass ``--file mg_17.npy`` to
use theirs. Needs ``pip install "evsnn[neurobench]"`` (neurobench and jitcdde; jitcdde compiles C
with the system compiler on first use).

Run: ``OMP_NUM_THREADS=1 python examples/neurobench_mackey_glass.py --seed 0``
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

import evsnn
from evsnn.interop.neurobench import ActivationSparsity, EvsnnModel, MembraneUpdates, SynapticOperations


def mackey_glass(
    file: str | None = None, start_offset: float = 0.0, traintime: float = 10.0, testtime: float = 10.0
) -> Any:
    """NeuroBench's ``MackeyGlass`` dataset (bin_window=1), from ``file`` or generated here.

    NeuroBench's class cannot generate without a file (it loads whenever ``file_path`` is given and
    fails on ``None``), so generation goes through a subclass whose ``load_data`` calls NeuroBench's
    own ``generate_data``.
    """
    from neurobench.datasets.mackey_glass import MackeyGlass

    if file is not None:
        return MackeyGlass(
            file, start_offset=start_offset, traintime=traintime, testtime=testtime, bin_window=1, download=False
        )

    class GeneratedMackeyGlass(MackeyGlass):
        def load_data(self, file: str) -> None:
            self.generate_data()

    return GeneratedMackeyGlass(
        "", start_offset=start_offset, traintime=traintime, testtime=testtime, bin_window=1, download=False
    )


def splits(mg: Any) -> tuple[Tensor, Tensor, DataLoader]:
    """Train inputs ``[1, T, 1]`` and targets ``[1, T, 1]`` (one sequence, teacher forced), and the
    test loader: the whole test split in one batch, as NeuroBench's MG examples load it."""
    x, y = Subset(mg, mg.ind_train)[:]  # x [T, 1, 1] (bin_window 1), y [T, 1]
    test = DataLoader(Subset(mg, mg.ind_test), batch_size=len(mg.ind_test), shuffle=False)
    return x[:, 0].unsqueeze(0), y.unsqueeze(0), test


def as_sequence(data: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """NeuroBench preprocessor: the test batch ``[T, 1, 1]`` is one sequence of T steps ->
    ``[1, T, 1]`` (evsnn layers are batch_first here), so the evsnn metrics count per forecast run."""
    x, y = data
    return x[:, 0].unsqueeze(0), y


def as_points(preds: Tensor) -> Tensor:
    """NeuroBench postprocessor: ``[1, T, 1]`` forecasts back to the labels' ``[T, 1]``."""
    return preds[0]


class Forecaster(nn.Module):
    """A DeltaGRU on a delay line of the last ``window`` values, with a linear readout.

    ``mode="teacher"``: each step sees the true value (training and warm-up); the delay line and
    the DeltaGRU state start from zero and are kept at the end. ``mode="autonomous"``: continues
    from the kept state; the first step sees the true value, every later step the previous forecast.

    Args:
        window: length of the delay line (the DeltaGRU's input size).
        hidden: DeltaGRU hidden size.
        theta: delta threshold for inputs and hidden state.
        mean: standardization offset of the series.
        std: standardization scale of the series.
    """

    def __init__(
        self, window: int = 50, hidden: int = 40, theta: float = 0.01, mean: float = 0.0, std: float = 1.0
    ) -> None:
        super().__init__()
        self.window = window
        self.mean, self.std = mean, std
        self.rnn = evsnn.DeltaGRU(window, hidden, theta_x=theta, theta_h=theta, batch_first=True, dtype=torch.float64)
        self.readout = nn.Linear(hidden, 1, dtype=torch.float64)
        self.mode = "teacher"
        self.line: Tensor | None = None
        self.state: Any = None

    def forward(self, x: Tensor) -> Tensor:
        z = (x[..., 0] - self.mean) / self.std  # [1, T]
        if self.mode == "teacher":
            padded = torch.cat([z.new_zeros(1, self.window - 1), z], dim=1)
            lines = padded.unfold(1, self.window, 1)  # [1, T, window]: the last `window` values
            h, self.state = self.rnn(lines)
            self.line = lines[:, -1].detach()
            self.state = self.state.detach()  # h_n, carrying the delta memories
            return self.readout(h) * self.std + self.mean
        if self.line is None:
            raise RuntimeError("Forecaster: run mode='teacher' over the history before mode='autonomous'")
        out, value = [], z[:, :1]
        for _ in range(z.shape[1]):
            self.line = torch.cat([self.line[:, 1:], value], dim=1)
            h, self.state = self.rnn(self.line.unsqueeze(1), self.state)
            value = self.readout(h[:, 0])  # [1, 1] standardized forecast, fed back
            out.append(value)
        return torch.stack(out, dim=1) * self.std + self.mean


def train(net: Forecaster, x: Tensor, y: Tensor, epochs: int, lr: float) -> float:
    """Full-sequence, one-step-ahead MSE training with Adam (NeuroBench's LSTM example: 200 epochs,
    lr 0.005, weight decay 0.001). Returns the last loss."""
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=1e-3)
    net.train()
    net.mode = "teacher"
    loss = torch.zeros(())
    for _ in range(epochs):
        loss = nn.functional.mse_loss(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


def benchmark(net: nn.Module, test: DataLoader, evsnn_metrics: bool = True) -> dict[str, Any]:
    """NeuroBench ``Benchmark`` over the test split: SMAPE, NeuroBench's Footprint and
    ConnectionSparsity, and (``evsnn_metrics``) evsnn's event metrics with the net in EvsnnModel."""
    from neurobench.benchmarks import Benchmark
    from neurobench.metrics.static import ConnectionSparsity, Footprint
    from neurobench.metrics.workload import SMAPE
    from neurobench.models import TorchModel

    workload = [SMAPE]
    if evsnn_metrics:
        workload += [ActivationSparsity, SynapticOperations, MembraneUpdates]
    model = EvsnnModel(net) if evsnn_metrics else TorchModel(net)
    bench = Benchmark(model, test, [as_sequence], [as_points], [[Footprint, ConnectionSparsity], workload])
    return bench.run(quiet=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--file", default=None, help="NeuroBench's mg_17.npy (default: generate with jitcdde)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--offset", type=float, default=0.0, help="start offset in points (NeuroBench repeat r: 37.5 r)")
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--lr", type=float, default=0.005)
    p.add_argument("--hidden", type=int, default=40)
    p.add_argument("--window", type=int, default=50)
    p.add_argument("--theta", type=float, default=0.01)
    args = p.parse_args()

    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    mg = mackey_glass(args.file, start_offset=args.offset)
    x, y, test = splits(mg)
    net = Forecaster(args.window, args.hidden, args.theta, mean=float(x.mean()), std=float(x.std()))
    t1 = time.perf_counter()
    loss = train(net, x, y, args.epochs, args.lr)
    t2 = time.perf_counter()
    net.eval()
    net.mode = "teacher"
    with torch.no_grad():
        net(x)  # warm-up over the train split: state and delay line for the forecast
    net.mode = "autonomous"
    r = benchmark(net, test)
    t3 = time.perf_counter()

    steps = len(mg.ind_test)
    ops = r["SynapticOperations"]
    print(
        f"series {'file ' + args.file if args.file else 'generated (jitcdde)'}, offset {args.offset}, seed {args.seed}"
    )
    print(
        f"data {t1 - t0:.1f} s, training {t2 - t1:.1f} s ({args.epochs} epochs, last MSE {loss:.2e}), "
        f"benchmark {t3 - t2:.1f} s"
    )
    print(f"raw results (per {steps}-step forecast): {r}")
    print(
        "| Model | sMAPE | Footprint (B) | Connection sparsity | Activation sparsity | Dense | Eff_MACs | Eff_ACs |"
        " Membrane updates |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print(
        f"| evsnn DeltaGRU H={args.hidden}, Θ={args.theta} (seed {args.seed}) | {r['SMAPE']:.2f} | {r['Footprint']} |"
        f" {r['ConnectionSparsity']:.3f} | {r['ActivationSparsity']:.3f} | {ops['Dense'] / steps:.3g} |"
        f" {ops['Effective_MACs'] / steps:.3g} | {ops['Effective_ACs'] / steps:.3g} | {r['MembraneUpdates'] / steps:.3g} |"
    )


if __name__ == "__main__":
    main()
