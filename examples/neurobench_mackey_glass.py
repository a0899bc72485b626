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

Training (the defaults): 1600 steps of free-running rollout training instead of NeuroBench's 200
full-sequence teacher-forced epochs: each step, 32 forecasts from random points of the train split,
40 teacher-forced steps then 20 autonomous ones (fed their own forecasts), MSE on both; Adam at lr
0.005, cosine to 0, gradient norm clipped at 1, *no* weight decay (NeuroBench's 1e-3 keeps the
one-step error at about 1e-2, which a chaotic forecast amplifies within a few Lyapunov times).
``--epochs 200 --rollout-epochs 0 --weight-decay 1e-3 --schedule constant --clip 0`` is
NeuroBench's LSTM recipe.

Run: ``OMP_NUM_THREADS=1 python examples/neurobench_mackey_glass.py --offset 0 --seed 0`` (NeuroBench's
r-th repeat: ``--offset 37.5·r --seed r``)
"""

from __future__ import annotations

import argparse
import os
import tempfile
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
            # jitcdde builds its C module with setuptools in the working directory, which reads a
            # pyproject.toml found there (this project's, run from the repository root) and stops.
            cwd = os.getcwd()
            with tempfile.TemporaryDirectory() as build:
                os.chdir(build)
                try:
                    self.generate_data()
                finally:
                    os.chdir(cwd)

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
    """A DeltaGRU (or DeltaLSTM) on a delay line of the last ``window`` values, with a linear readout.

    ``mode="teacher"``: each step sees the true value (training and warm-up); the delay line and
    the recurrent state start from zero and are kept at the end. ``mode="autonomous"``: continues
    from the kept state; the first step sees the true value, every later step the previous forecast.
    `rollout` trains the autonomous mode itself: a batch of free-running forecasts from points of
    the training series.

    Args:
        window: length of the delay line (the recurrent layer's input size).
        hidden: hidden size.
        theta: delta threshold for inputs and hidden state.
        mean: standardization offset of the series.
        std: standardization scale of the series.
        cell: ``"gru"`` (`evsnn.DeltaGRU`) or ``"lstm"`` (`evsnn.DeltaLSTM`).
        residual: the readout gives the change from the last value of the delay line instead of
            the next value itself.
    """

    def __init__(
        self,
        window: int = 50,
        hidden: int = 40,
        theta: float = 0.01,
        mean: float = 0.0,
        std: float = 1.0,
        cell: str = "gru",
        residual: bool = False,
    ) -> None:
        super().__init__()
        layers = {"gru": evsnn.DeltaGRU, "lstm": evsnn.DeltaLSTM}
        if cell not in layers:
            raise ValueError(f"Forecaster: cell must be one of {sorted(layers)}, got {cell!r}")
        self.window = window
        self.mean, self.std = mean, std
        self.residual = residual
        self.rnn = layers[cell](window, hidden, theta_x=theta, theta_h=theta, batch_first=True, dtype=torch.float64)
        self.readout = nn.Linear(hidden, 1, dtype=torch.float64)
        self.mode = "teacher"
        self.line: Tensor | None = None
        self.state: Any = None

    def standardize(self, x: Tensor) -> Tensor:
        """``[B, T, 1]`` series -> ``[B, T]`` standardized."""
        return (x[..., 0] - self.mean) / self.std

    def lines(self, z: Tensor) -> Tensor:
        """``[B, T]`` -> ``[B, T, window]``: at step t the last ``window`` values up to z_t (zeros before)."""
        padded = torch.cat([z.new_zeros(z.shape[0], self.window - 1), z], dim=1)
        return padded.unfold(1, self.window, 1)

    def predict(self, h: Tensor, lines: Tensor) -> Tensor:
        """Standardized forecasts ``[..., 1]`` from hidden states ``[..., H]`` and their delay lines."""
        out = self.readout(h)
        return out + lines[..., -1:] if self.residual else out

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "teacher":
            lines = self.lines(self.standardize(x))  # [1, T, window]
            h, self.state = self.rnn(lines)
            self.line = lines[:, -1].detach()
            self.state = _detach(self.state)  # h_n, carrying the delta memories
            return self.predict(h, lines) * self.std + self.mean
        if self.line is None:
            raise RuntimeError("Forecaster: run mode='teacher' over the history before mode='autonomous'")
        z = (x[..., 0] - self.mean) / self.std
        out, value = [], z[:, :1]
        for _ in range(z.shape[1]):
            self.line = torch.cat([self.line[:, 1:], value], dim=1)
            h, self.state = self.rnn(self.line.unsqueeze(1), self.state)
            value = self.predict(h[:, 0], self.line)  # [1, 1] standardized forecast, fed back
            out.append(value)
        return torch.stack(out, dim=1) * self.std + self.mean

    def rollout(self, x: Tensor, starts: Tensor, warmup: int, horizon: int) -> tuple[Tensor, Tensor]:
        """Free-running forecasts from a batch of points of the series ``x`` (``[1, T, 1]``).

        For each start s (one batch row, fresh state): ``warmup`` teacher-forced steps on the true
        delay lines ending at x_s ... x_{s+warmup-1}, then ``horizon`` autonomous steps, each fed
        the previous forecast (the first one the last teacher-forced forecast), as the
        autonomous mode runs. Returns the forecasts in the series' units: teacher-forced
        ``[B, warmup]`` (of x_{s+1} ... x_{s+warmup}) and free-running ``[B, horizon]`` (of
        x_{s+warmup+1} ... x_{s+warmup+horizon}). Gradients flow through the fed-back forecasts.
        """
        if x.dim() != 3 or x.shape[0] != 1 or x.shape[2] != 1:
            raise ValueError(f"Forecaster.rollout: x must be one series [1, T, 1], got {tuple(x.shape)}")
        if warmup < 1 or horizon < 1:
            raise ValueError(f"Forecaster.rollout: warmup and horizon must be >= 1, got {warmup} and {horizon}")
        last = x.shape[1] - warmup - horizon - 1  # the last forecast target is x[s + warmup + horizon]
        if starts.numel() == 0 or int(starts.min()) < 0 or int(starts.max()) > last:
            raise ValueError(
                f"Forecaster.rollout: starts must lie in [0, {last}] for a series of {x.shape[1]} points, "
                f"warmup {warmup} and horizon {horizon}, got {starts.tolist()}"
            )
        lines = self.lines(self.standardize(x))[0]  # [T, window]
        index = starts[:, None] + torch.arange(warmup)  # [B, warmup]
        h, state = self.rnn(lines[index])
        teacher = self.predict(h, lines[index])[..., 0]  # [B, warmup] standardized
        line, value = lines[index[:, -1]], teacher[:, -1:]
        free = []
        for _ in range(horizon):
            line = torch.cat([line[:, 1:], value], dim=1)
            h, state = self.rnn(line.unsqueeze(1), state)
            value = self.predict(h[:, 0], line)
            free.append(value)
        return teacher * self.std + self.mean, torch.cat(free, dim=1) * self.std + self.mean


def _detach(state: Any) -> Any:
    """The recurrent state without its graph: a DeltaGRU's ``h_n`` or a DeltaLSTM's ``(h_n, c_n)``."""
    if isinstance(state, tuple):
        return type(state)(*(s.detach() for s in state))
    return state.detach()


def _optimizer(net: nn.Module, lr: float, weight_decay: float, epochs: int, schedule: str) -> tuple[Any, Any]:
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    if schedule == "cosine":
        return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    if schedule == "constant":
        return opt, None
    raise ValueError(f"schedule must be 'constant' or 'cosine', got {schedule!r}")


def _step(net: nn.Module, opt: Any, sched: Any, loss: Tensor, clip: float) -> None:
    opt.zero_grad()
    loss.backward()
    if clip > 0:
        nn.utils.clip_grad_norm_(net.parameters(), clip)
    opt.step()
    if sched is not None:
        sched.step()


def rollout_loss(net: Forecaster, x: Tensor, y: Tensor, starts: Tensor, warmup: int, horizon: int) -> Tensor:
    """MSE of `Forecaster.rollout`'s free-running forecasts plus that of its teacher-forced ones,
    against the targets ``y`` (``y[t] = x[t+1]``, ``[1, T, 1]``)."""
    teacher, free = net.rollout(x, starts, warmup, horizon)
    target = y[0, starts[:, None] + torch.arange(warmup + horizon), 0]  # of x[s+1] ... x[s+warmup+horizon]
    return nn.functional.mse_loss(free, target[:, warmup:]) + nn.functional.mse_loss(teacher, target[:, :warmup])


def train(
    net: Forecaster,
    x: Tensor,
    y: Tensor,
    epochs: int,
    lr: float,
    *,
    weight_decay: float = 1e-3,
    schedule: str = "constant",
    clip: float = 0.0,
    rollout_epochs: int = 0,
    rollout_lr: float | None = None,
    rollout_horizon: int = 20,
    rollout_warmup: int = 40,
    rollout_batch: int = 32,
) -> float:
    """Two phases, each with Adam (``weight_decay`` as Adam's L2 term), the lr ``schedule`` over the
    phase (``"constant"`` or ``"cosine"`` to 0) and, with ``clip > 0``, gradient-norm clipping.

    1. ``epochs`` full-sequence, one-step-ahead (teacher-forced) MSE epochs on the train split.
       NeuroBench's LSTM example: 200 epochs, lr 0.005, weight decay 0.001, constant lr.
    2. ``rollout_epochs`` epochs of free-running training: each a batch of ``rollout_batch``
       `Forecaster.rollout` forecasts from random points of the train split (``rollout_warmup``
       teacher-forced steps, then ``rollout_horizon`` autonomous ones); the loss is the MSE of
       the autonomous forecasts plus that of the teacher-forced ones, at ``rollout_lr`` (default
       ``lr``). This trains the mode that is scored: the model learns to correct the drift of its
       own fed-back forecasts.

    Returns the last loss.
    """
    net.train()
    net.mode = "teacher"
    loss = torch.zeros(())
    opt, sched = _optimizer(net, lr, weight_decay, epochs, schedule)
    for _ in range(epochs):
        loss = nn.functional.mse_loss(net(x), y)
        _step(net, opt, sched, loss, clip)
    if rollout_epochs > 0:
        last = x.shape[1] - rollout_warmup - rollout_horizon - 1
        opt, sched = _optimizer(net, lr if rollout_lr is None else rollout_lr, weight_decay, rollout_epochs, schedule)
        for _ in range(rollout_epochs):
            starts = torch.randint(0, last + 1, (rollout_batch,))
            loss = rollout_loss(net, x, y, starts, rollout_warmup, rollout_horizon)
            _step(net, opt, sched, loss, clip)
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
    p.add_argument("--cell", choices=["gru", "lstm"], default="gru", help="DeltaGRU or DeltaLSTM")
    p.add_argument("--hidden", type=int, default=40)
    p.add_argument("--window", type=int, default=50)
    p.add_argument("--theta", type=float, default=0.01)
    p.add_argument("--epochs", type=int, default=0, help="full-sequence teacher-forced epochs (NeuroBench's: 200)")
    p.add_argument("--lr", type=float, default=0.005)
    p.add_argument("--weight-decay", type=float, default=0.0, help="Adam's L2 term (NeuroBench's: 1e-3)")
    p.add_argument("--schedule", choices=["constant", "cosine"], default="cosine", help="lr over each phase")
    p.add_argument("--clip", type=float, default=1.0, help="gradient-norm clipping (0: none)")
    p.add_argument("--residual", action="store_true", help="the readout forecasts the change from the last value")
    p.add_argument("--rollout-epochs", type=int, default=1600, help="free-running epochs after the full-sequence ones")
    p.add_argument("--rollout-lr", type=float, default=None, help="lr of the free-running phase (default: --lr)")
    p.add_argument("--rollout-horizon", type=int, default=20, help="autonomous steps per rollout")
    p.add_argument("--rollout-warmup", type=int, default=40, help="teacher-forced steps before each rollout")
    p.add_argument("--rollout-batch", type=int, default=32, help="rollouts per step")
    p.add_argument("--save", default=None, help="write the forecast and the truth to this .npz")
    args = p.parse_args()

    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    mg = mackey_glass(args.file, start_offset=args.offset)
    x, y, test = splits(mg)
    net = Forecaster(
        args.window,
        args.hidden,
        args.theta,
        float(x.mean()),
        float(x.std()),
        cell=args.cell,
        residual=args.residual,
    )
    t1 = time.perf_counter()
    loss = train(
        net,
        x,
        y,
        args.epochs,
        args.lr,
        weight_decay=args.weight_decay,
        schedule=args.schedule,
        clip=args.clip,
        rollout_epochs=args.rollout_epochs,
        rollout_lr=args.rollout_lr,
        rollout_horizon=args.rollout_horizon,
        rollout_warmup=args.rollout_warmup,
        rollout_batch=args.rollout_batch,
    )
    t2 = time.perf_counter()
    net.eval()
    net.mode = "teacher"
    with torch.no_grad():
        fit = net(x)  # warm-up over the train split: state and delay line for the forecast
    # One-step error once the delay line is full: how far each forecast step strays by itself.
    rmse = float(((fit - y)[:, args.window :] ** 2).mean().sqrt())
    net.mode = "autonomous"
    if args.save:
        import copy

        import numpy as np

        xt, yt = next(iter(test))
        with torch.no_grad():
            pred = copy.deepcopy(net)(as_sequence((xt, yt))[0])[0, :, 0]
        np.savez(args.save, forecast=pred.numpy(), truth=yt[:, 0].numpy())
    r = benchmark(net, test)
    t3 = time.perf_counter()

    steps = len(mg.ind_test)
    ops = r["SynapticOperations"]
    print(
        f"series {'file ' + args.file if args.file else 'generated (jitcdde)'}, offset {args.offset}, seed {args.seed}"
    )
    print(
        f"data {t1 - t0:.1f} s, training {t2 - t1:.1f} s (last loss {loss:.2e}, one-step RMSE on the train split"
        f" {rmse:.2e}), benchmark {t3 - t2:.1f} s"
    )
    print(f"raw results (per {steps}-step forecast): {r}")
    print(
        "| Model | sMAPE | Footprint (B) | Connection sparsity | Activation sparsity | Dense | Eff_MACs | Eff_ACs |"
        " Membrane updates |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print(
        f"| evsnn Delta{args.cell.upper()} H={args.hidden}, Θ={args.theta} (seed {args.seed}) | {r['SMAPE']:.2f} |"
        f" {r['Footprint']} | {r['ConnectionSparsity']:.3f} | {r['ActivationSparsity']:.3f} |"
        f" {ops['Dense'] / steps:.3g} | {ops['Effective_MACs'] / steps:.3g} | {ops['Effective_ACs'] / steps:.3g} |"
        f" {r['MembraneUpdates'] / steps:.3g} |"
    )


if __name__ == "__main__":
    main()
