"""Training loop behind ``evsnn train``: one evsnn layer and a leaky readout on a sequence task.

The network is ``layer → LeakyReadout`` and the logits are the readout's membrane at the last
step, ``m_T`` (SPEC.md §2's readout), for every model: ``alif`` (recurrent ALIF),
``egru``, ``deltagru``, ``deltalstm``.

Distributed: under ``torchrun`` (``WORLD_SIZE > 1``) every process builds the same model and the
same shuffled order of global batches (same seed), takes the ``rank``-th of ``world_size``
equal shards of each global batch, and DDP averages the gradients. Since the loss is a mean
over equal shards, each step equals one process on the whole global batch (up to summation
order). gloo on CPU, NCCL on CUDA.

The run folder gets ``checkpoint.pt`` (rewritten atomically after every epoch, so an
interrupted run keeps its last complete epoch), ``metrics.json``, ``events.pt`` (the first
layer's events on a few test samples, for redrawing), ``raster.png`` and ``curves.png``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import nn as enn

__all__ = ["MODELS", "DATASETS", "TrainConfig", "SequenceClassifier", "build_model", "load_data", "train",
           "draw_run_plots", "load_run"]

MODELS = ("alif", "egru", "deltagru", "deltalstm")
DATASETS = ("digits", "digits-pixels", "digits-permuted", "temporal", "shd", "dvsgesture", "nmnist")


@dataclass
class TrainConfig:
    """Everything a run depends on; stored in the checkpoint and in ``metrics.json``."""

    model: str = "alif"
    data: str = "digits"
    data_dir: str | None = None
    encoding: str = "none"
    repeat: int = 3
    hidden: int = 128
    epochs: int = 25
    batch_size: int = 64
    lr: float = 1e-2
    seed: int = 0
    device: str = "cpu"
    backend: str = "auto"
    out: str | None = None
    max_steps: int | None = None
    threads: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> TrainConfig:
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; expected one of {', '.join(MODELS)}")
        if self.data not in DATASETS:
            raise ValueError(f"unknown data {self.data!r}; expected one of {', '.join(DATASETS)}")
        for name in ("repeat", "hidden", "epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if self.data in ("shd", "dvsgesture", "nmnist") and not self.data_dir:
            raise ValueError(f"--data {self.data} needs --data-dir, the folder holding the data set")
        return self

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class SequenceClassifier(nn.Module):
    """``x [T, B, I] → layer → LeakyReadout → logits = m_T [B, classes]``."""

    def __init__(self, model: str, input_size: int, hidden: int, n_classes: int, *, backend: str = "auto"):
        super().__init__()
        if model not in MODELS:
            raise ValueError(f"unknown model {model!r}; expected one of {MODELS}")
        self.model_name = model
        if model == "alif":
            # Short time constants: the digits are 24 steps, the default τ_m ~ N(20, 5) would barely
            # charge the membrane before the sequence ends.
            self.layer = enn.ALIF(input_size, hidden, tau_mem=(5.0, 1.25), tau_adapt=(25.0, 5.0), backend=backend)
        elif model == "egru":
            self.layer = enn.EGRU(input_size, hidden, backend=backend)
        elif model == "deltagru":
            self.layer = enn.DeltaGRU(input_size, hidden, theta_x=0.05, theta_h=0.05, backend=backend)
        else:
            self.layer = enn.DeltaLSTM(input_size, hidden, theta_x=0.05, theta_h=0.05, backend=backend)
        self.readout = enn.LeakyReadout(hidden, n_classes, tau=(5.0, 1.25))
        self.input_gain = 2.0 if model == "alif" else 1.0

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(logits [B, classes], events [T, B, hidden])``."""
        events, _ = self.layer(x * self.input_gain)
        m, _ = self.readout(events)
        return m[-1], events

    def layers_with_stats(self) -> list[nn.Module]:
        return [self.layer]


def build_model(config: TrainConfig, input_size: int, n_classes: int) -> SequenceClassifier:
    return SequenceClassifier(config.model, input_size, config.hidden, n_classes, backend=config.backend)


def load_data(config: TrainConfig) -> tuple[Any, Any, int, int]:
    """``(train_set, test_set, n_features, n_classes)``; samples ``(x [T, F], label)``."""
    from . import data

    if config.data.startswith("digits"):
        order = {"digits": "rows", "digits-pixels": "pixels", "digits-permuted": "permuted"}[config.data]
        split = data.load_digits_sequences(order, repeat=config.repeat, spikes=config.encoding, seed=config.seed)
        return split.train, split.test, split.n_features, split.n_classes
    if config.data == "temporal":
        full, orders = data.temporal_pattern_task(1024, seed=config.seed)
        n_test = len(full) // 5
        x, y = full.tensors
        return (torch.utils.data.TensorDataset(x[n_test:], y[n_test:]),
                torch.utils.data.TensorDataset(x[:n_test], y[:n_test]), x.shape[-1], len(orders))
    root = config.data_dir
    if not os.path.isdir(root):
        raise FileNotFoundError(f"data folder {root!r} does not exist")
    loader = {"shd": data.shd, "dvsgesture": data.dvs_gesture, "nmnist": data.nmnist}[config.data]
    train_set, test_set = loader(root, train=True), loader(root, train=False)
    if len(train_set) == 0 or len(test_set) == 0:
        raise FileNotFoundError(f"no {config.data} samples found under {root!r}")
    n_classes = {"shd": 20, "dvsgesture": 11, "nmnist": 10}[config.data]
    return train_set, test_set, train_set[0][0].shape[-1], n_classes


def _batches(dataset, indices: Tensor) -> tuple[Tensor, Tensor]:
    """Stack samples ``indices`` of ``dataset`` into ``(x [T, B, F], labels [B])``."""
    if isinstance(dataset, torch.utils.data.TensorDataset):
        x, y = dataset.tensors
        return x[indices].transpose(0, 1), y[indices]
    from .data import pad_collate

    x, y, _ = pad_collate([dataset[int(i)] for i in indices], time_first=True)
    return x, y


def _global_batches(n: int, batch_size: int, epoch: int, seed: int) -> list[Tensor]:
    """The same shuffled full global batches in every process (an incomplete last batch is
    dropped so that every shard has the same size, which makes DDP's mean exact)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return [perm[i : i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(config: TrainConfig) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    import torch.distributed as dist

    if config.batch_size % world:
        raise ValueError(f"batch size {config.batch_size} must be divisible by the {world} processes")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if config.device.startswith("cuda") else "gloo")
    rank = dist.get_rank()
    if config.device.startswith("cuda"):
        config.device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}"
    return _Dist(rank, world)


def _evaluate(model: nn.Module, dataset, device: torch.device, batch_size: int = 512) -> tuple[float, float]:
    model.eval()
    correct, total, loss_sum = 0, 0, 0.0
    with torch.no_grad():
        for i in range(0, len(dataset), batch_size):
            idx = torch.arange(i, min(i + batch_size, len(dataset)))
            x, y = _batches(dataset, idx)
            logits, _ = model(x.to(device))
            loss_sum += float(F.cross_entropy(logits, y.to(device), reduction="sum"))
            correct += int((logits.argmax(1).cpu() == y).sum())
            total += len(idx)
    model.train()
    return correct / total, loss_sum / total


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _progress(total: int, enabled: bool, desc: str) -> Any:
    """A tqdm bar over one epoch's batches when tqdm is installed; without tqdm nothing is drawn
    during the epoch (the loop prints one line per epoch either way)."""
    if enabled:
        try:
            from tqdm import tqdm

            return tqdm(total=total, desc=desc, unit="batch", leave=False, file=sys.stderr)
        except ImportError:
            pass

    class _NoBar:
        def update(self, n: int = 1) -> None:
            pass

        def set_postfix_str(self, s: str) -> None:
            pass

        def close(self) -> None:
            pass

    return _NoBar()


def default_run_dir(config: TrainConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config.model}-{config.data}-{stamp}"


def train(config: TrainConfig, *, progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train, evaluate after every epoch, write the run folder, return the metrics dict.

    ``KeyboardInterrupt`` propagates after the last completed epoch's checkpoint is on disk.
    """
    config.validate()
    dist_info = _init_distributed(config)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but no CUDA GPU is visible to PyTorch")
    train_set, test_set, n_features, n_classes = load_data(config)
    torch.manual_seed(config.seed)
    model = build_model(config, n_features, n_classes).to(device)
    net: nn.Module = model
    if dist_info.world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    per_epoch = len(_global_batches(len(train_set), config.batch_size, 0, config.seed))
    if per_epoch == 0:
        raise ValueError(f"batch size {config.batch_size} is larger than the {len(train_set)} training samples")
    total_steps = per_epoch * config.epochs
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=max(total_steps, 2))
    run_dir = Path(config.out) if config.out else default_run_dir(config)
    if dist_info.main:
        run_dir.mkdir(parents=True, exist_ok=True)
    config.out = str(run_dir)
    history: list[dict[str, Any]] = []
    step, started = 0, time.time()
    shard = config.batch_size // dist_info.world
    for epoch in range(1, config.epochs + 1):
        bar = _progress(per_epoch, progress and dist_info.main, f"epoch {epoch}/{config.epochs}")
        loss_sum, seen, act_sum = 0.0, 0, 0.0
        for batch in _global_batches(len(train_set), config.batch_size, epoch, config.seed):
            mine = batch[dist_info.rank * shard : (dist_info.rank + 1) * shard]
            x, y = _batches(train_set, mine)
            logits, _ = net(x.to(device))
            loss = F.cross_entropy(logits, y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            loss_sum += float(loss.detach()) * len(mine)
            seen += len(mine)
            act_sum += model.layer.last_stats.mean_event_fraction if model.layer.last_stats else 0.0
            bar.update(1)
            bar.set_postfix_str(f"loss {loss_sum / seen:.3f}")
            if step >= total_steps:
                break
        bar.close()
        acc, test_loss = _evaluate(model, test_set, device)
        n_batches = max(1, math.ceil(seen / shard))
        row = {"epoch": epoch, "loss": loss_sum / max(seen, 1), "test_loss": test_loss, "accuracy": acc,
               "activity": act_sum / n_batches, "time_s": time.time() - started}
        history.append(row)
        if dist_info.main:
            _atomic_save({"config": asdict(config), "model": model.state_dict(), "optimizer": opt.state_dict(),
                          "epoch": epoch, "step": step, "n_features": n_features, "n_classes": n_classes},
                         run_dir / "checkpoint.pt")
            if progress:
                log(f"epoch {epoch:>3}/{config.epochs}  loss {row['loss']:.3f}  test accuracy {acc:.3f}  "
                    f"activity {row['activity']:.3f}  {row['time_s']:.0f}s")
        if step >= total_steps:
            break
    metrics = _summarise(model, test_set, device, config, history, time.time() - started, dist_info.world)
    if dist_info.main:
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        draw_run_plots(run_dir)
    return metrics


def _summarise(model: SequenceClassifier, test_set, device: torch.device, config: TrainConfig,
               history: list[dict[str, Any]], seconds: float, world: int) -> dict[str, Any]:
    """Final accuracy plus each layer's :class:`~evsnn.stats.LayerStats` on the whole test set;
    saves the events of the first 8 test samples next to the metrics for ``evsnn plot``."""
    model.eval()
    idx = torch.arange(len(test_set))
    x, y = _batches(test_set, idx)
    with torch.no_grad():
        logits, events = model(x.to(device))
    accuracy = float((logits.argmax(1).cpu() == y).float().mean())
    layers = [layer.last_stats.as_dict() for layer in model.layers_with_stats() if layer.last_stats is not None]
    if config.out and int(os.environ.get("RANK", "0")) == 0:
        torch.save({"events": events[:, :8].cpu(), "labels": y[:8], "model": config.model},
                   Path(config.out) / "events.pt")
    return {"config": asdict(config), "accuracy": accuracy, "train_seconds": seconds, "world_size": world,
            "layers": layers, "history": history}


def load_run(run_dir: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(metrics, events)`` of a run folder; clear errors when a file is missing or unreadable."""
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run folder {os.fspath(run)!r} does not exist")
    metrics_path, events_path = run / "metrics.json", run / "events.pt"
    for p in (metrics_path, events_path):
        if not p.is_file():
            raise FileNotFoundError(f"{os.fspath(p)!r} is missing: is {os.fspath(run)!r} a finished evsnn run folder?")
    try:
        metrics = json.loads(metrics_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{os.fspath(metrics_path)!r} is not valid JSON ({err})") from None
    if not isinstance(metrics, dict) or not isinstance(metrics.get("history"), list):
        raise ValueError(f"{os.fspath(metrics_path)!r} has no 'history' list: not an evsnn metrics file")
    try:
        events = torch.load(events_path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a corrupt file
        raise ValueError(f"{os.fspath(events_path)!r} is unreadable ({type(err).__name__})") from None
    if not isinstance(events, dict) or "events" not in events:
        raise ValueError(f"{os.fspath(events_path)!r} has no 'events' tensor")
    return metrics, events


def draw_run_plots(run_dir: str | os.PathLike) -> list[Path]:
    """(Re)draw ``raster.png`` (the first layer's events on one test sample) and ``curves.png``
    (loss, accuracy and activity per epoch) in a run folder, with :mod:`evsnn.plot`."""
    from . import plot

    metrics, events = load_run(run_dir)
    run = Path(run_dir)
    ev = events["events"]
    label = int(events["labels"][0]) if "labels" in events else None
    title = f"{events.get('model', '')} events, test sample 0" + (f" (label {label})" if label is not None else "")
    if events.get("model") == "alif":
        ax = plot.raster(ev, sample=0, title=title)
    else:
        ax = plot.event_raster(ev, sample=0, title=title)
    out = [Path(plot.save(ax, run / "raster.png"))]
    log = [{k: v for k, v in row.items() if k in ("epoch", "loss", "test_loss", "accuracy", "activity")}
           for row in metrics["history"]]
    out.append(Path(plot.save(plot.training_curves(log, title="training"), run / "curves.png")))
    return out
