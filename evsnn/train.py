"""Training loop behind ``evsnn train``: one evsnn layer and a leaky readout on a sequence task.

The network is ``layer → LeakyReadout`` and the logits are the readout's membrane at the last
step, ``m_T`` (SPEC.md §2's readout), for every model: ``alif`` (recurrent ALIF),
``egru``, ``deltagru``, ``deltalstm``.

Distributed: under ``torchrun`` (``WORLD_SIZE > 1``) every process builds the same model and the
same shuffled order of global batches (same seed), takes the ``rank``-th of ``world_size``
equal shards of each global batch, and DDP averages the gradients. Since the loss is a mean
over equal shards, each step equals one process on the whole global batch (up to summation
order). gloo on CPU, NCCL on CUDA.

Run folders (``run.json``, ``checkpoint.pt``, ``metrics.json``, ``events.pt``, the plots) are
claimed, written and read back by `evsnn.runs`; a folder holds one run and is never
overwritten.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from .atomic import RunFolderError, RunFolderInUse, atomic_write
from .models import MODELS, PerStepALIF, SequenceClassifier
from .runs import RunFolder, draw_run_plots, load_run
from .train_config import DATASETS, TrainConfig

__all__ = [
    "MODELS",
    "DATASETS",
    "TrainConfig",
    "SequenceClassifier",
    "PerStepALIF",
    "build_model",
    "load_data",
    "train",
    "draw_run_plots",
    "load_run",
    "RunFolder",
    "RunFolderError",
    "RunFolderInUse",
    "atomic_write",
    "resolve_device",
    "choose_threads",
]


# Leading steps of an ECG trace left out of the loss and the accuracy (Yin et al.'s recipe).
ECG_WARMUP = 10
# Non-finite steps in a row after which a run stops: the weights do not change on a skipped step,
# so a run whose every batch gives inf/NaN cannot recover.
MAX_NONFINITE_IN_A_ROW = 3


def build_model(config: TrainConfig, input_size: int, n_classes: int) -> SequenceClassifier | PerStepALIF:
    """The network ``evsnn train`` trains for ``config`` (checked first, see `TrainConfig.validate`):
    `PerStepALIF` for ``data="ecg"``, else a `SequenceClassifier`."""
    config.validate()
    if config.data == "ecg":
        return PerStepALIF(
            input_size, config.hidden, n_classes, adaptive=config.adaptive, warmup=ECG_WARMUP, backend=config.backend
        )
    layer_options = None
    if config.model == "egru" and config.data == "mnist1d":
        # One value per step: the default log-uniform thresholds leave many units all but silent on
        # so small an input, where a constant low θ lets every unit fire at the start and the
        # activity regulariser brings it down while the network learns (docs/reproductions.md,
        # mnist1d section; docs/egru-tuning.md).
        layer_options = {"threshold": 0.01, "threshold_init": "constant", "reset": "threshold"}
    return SequenceClassifier(
        config.model,
        input_size,
        config.hidden,
        n_classes,
        backend=config.backend,
        adaptive=config.adaptive,
        layer_options=layer_options,
    )


def load_data(config: TrainConfig) -> tuple[Any, Any, int, int]:
    """``(train_set, test_set, n_features, n_classes)``; samples ``(x [T, F], label)``."""
    from . import data

    if config.data.startswith("digits"):
        order = {"digits": "rows", "digits-pixels": "pixels", "digits-permuted": "permuted"}[config.data]
        split = data.load_digits_sequences(order, repeat=config.repeat, spikes=config.encoding, seed=config.seed)
        return split.train, split.test, split.n_features, split.n_classes
    if config.data == "vowels":
        from .data.vowels import load_japanese_vowels

        vowels = load_japanese_vowels(config.data_dir)
        return vowels.train, vowels.test, vowels.n_features, vowels.n_classes
    if config.data == "ecg":
        split = data.load_qtdb(config.data_dir, min_steps=ECG_WARMUP + 1)
        return split.train, split.test, split.n_features, split.n_classes
    if config.data == "mnist1d":
        from .data.mnist_1d import load_mnist1d

        split = load_mnist1d()
        return split.train, split.test, split.n_features, split.n_classes
    if config.data == "temporal":
        full, orders = data.temporal_pattern_task(1024, seed=config.seed)
        n_test = len(full) // 5
        x, y = full.tensors
        return (
            torch.utils.data.TensorDataset(x[n_test:], y[n_test:]),
            torch.utils.data.TensorDataset(x[:n_test], y[:n_test]),
            x.shape[-1],
            len(orders),
        )
    root = config.data_dir
    if not os.path.isdir(root):
        raise FileNotFoundError(f"data folder {root!r} does not exist")
    train_set, test_set = _open_split(config.data, root, True), _open_split(config.data, root, False)
    if len(train_set) == 0 or len(test_set) == 0:
        raise FileNotFoundError(f"no {config.data} samples found under {root!r}")
    n_classes = {"shd": 20, "dvsgesture": 11, "nmnist": 10}[config.data]
    return train_set, test_set, train_set[0][0].shape[-1], n_classes


def _data_location(name: str, root: str, train: bool) -> str:
    """The file (SHD) or folder a split of a neuromorphic data set is read from, for messages."""
    if name == "shd":
        return os.path.join(root, "SHD", f"shd_{'train' if train else 'test'}.h5")
    sub = {"dvsgesture": ("DVSGesture", "ibmGestureTrain", "ibmGestureTest"), "nmnist": ("NMNIST", "Train", "Test")}
    folder, tr, te = sub[name]
    return os.path.join(root, folder, tr if train else te)


def _open_split(name: str, root: str, train: bool) -> Any:
    """One split through its loader, with its first sample read, so that an unreadable file fails
    here with its name rather than inside the first epoch with the library's text alone."""
    from . import data

    loader = {"shd": data.shd, "dvsgesture": data.dvs_gesture, "nmnist": data.nmnist}[name]
    try:
        dataset = loader(root, train=train)
        if len(dataset):
            dataset[0]
    except (FileNotFoundError, ImportError):
        raise
    except (OSError, KeyError, ValueError, IndexError, RuntimeError, EOFError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise OSError(f"cannot read {name} data from {_data_location(name, root, train)}: {reason}") from None
    return dataset


def _batches(dataset, indices: Tensor) -> tuple[Tensor | PackedSequence, Tensor]:
    """Stack samples ``indices`` of ``dataset`` into ``(x [T, B, F], labels [B])``; the samples of
    a `VariableLengthDataset` come as a ``PackedSequence``."""
    if isinstance(dataset, torch.utils.data.TensorDataset):
        x, y = dataset.tensors
        return x[indices].transpose(0, 1), y[indices]
    from .data import pad_collate
    from .data.vowels import VariableLengthDataset

    x, y, lengths = pad_collate([dataset[int(i)] for i in indices], time_first=True)
    if isinstance(dataset, VariableLengthDataset):
        return pack_padded_sequence(x, lengths, enforce_sorted=False), y
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

    if config.tbptt is not None:
        # The windows run the layers directly, past DDP's forward, whose hooks average the gradients.
        raise ValueError(f"--tbptt runs in one process; got {world} torchrun processes")
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
    correct, total, samples, loss_sum = 0, 0, 0, 0.0
    with torch.no_grad():
        for i in range(0, len(dataset), batch_size):
            idx = torch.arange(i, min(i + batch_size, len(dataset)))
            x, y = _batches(dataset, idx)
            logits, _ = model(x.to(device))
            y = y.to(device)
            loss_sum += float(model.loss(logits, y)) * len(idx)
            hit, counted = model.hits(logits, y)
            correct += hit
            total += counted
            samples += len(idx)
    model.train()
    return correct / total, loss_sum / samples


def _check_finite_inputs(dataset: Any, name: str) -> None:
    """Refuse a data set with an inf or NaN input value, naming the sample: the layers would turn
    it into silent zeros or NaN everywhere and the run would end at chance."""
    from .data.vowels import VariableLengthDataset

    if isinstance(dataset, torch.utils.data.TensorDataset):
        samples = dataset.tensors[0]
    elif isinstance(dataset, VariableLengthDataset):
        samples = dataset.sequences
    else:
        return
    for i, x in enumerate(samples):
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            raise ValueError(
                f"the {name} set's sample {i} holds a non-finite input value (inf or NaN); fix or drop that sample"
            )


def _model_step(model: SequenceClassifier | PerStepALIF) -> Callable[[Tensor, Any], tuple[tuple[Tensor, Tensor], Any]]:
    """``step(x_window, state) -> ((out, events), state)`` of ``model`` over consecutive windows of
    a sequence, with ``state = (layer state, readout state)``: ``out`` is the per-step log-probabilities
    (ECG) or the readout membrane, whose last step is the logits."""
    gain = getattr(model, "input_gain", 1.0)

    def step(x: Tensor, state: Any) -> tuple[tuple[Tensor, Tensor], Any]:
        layer_state, readout_state = state if state is not None else (None, None)
        events, layer_state = model.layer(x * gain if gain != 1.0 else x, layer_state)
        out, readout_state = model.readout(events, readout_state)
        if isinstance(model, PerStepALIF):
            out = torch.nn.functional.log_softmax(out, dim=-1)
        return (out, events), (layer_state, readout_state)

    return step


def _window_has_loss(model: SequenceClassifier | PerStepALIF, stop: int, steps: int) -> bool:
    """Whether the window ending before step ``stop`` of a ``steps``-step sequence holds a term of
    ``model.loss``: one reaching past the per-step loss's warm-up (ECG), else the last window."""
    return stop > model.warmup if isinstance(model, PerStepALIF) else stop == steps


def _window_loss(
    model: SequenceClassifier | PerStepALIF, out: Tensor, labels: Tensor, start: int, steps: int
) -> Tensor | None:
    """The part of ``model.loss`` over the whole ``steps``-step sequence that falls on the window
    starting at step ``start`` (the window losses sum to it), or ``None`` when the window holds no
    loss term (`_window_has_loss`)."""
    if not _window_has_loss(model, start + out.shape[0], steps):
        return None
    if isinstance(model, PerStepALIF):
        skip = max(model.warmup - start, 0)
        kept = out[skip:]
        target = labels.t()[start + skip : start + out.shape[0]]
        nll = torch.nn.functional.nll_loss(kept.reshape(-1, kept.shape[-1]), target.reshape(-1), reduction="sum")
        return nll / labels.shape[0]
    return model.loss(out[-1], labels)


def _gradients(
    model: SequenceClassifier | PerStepALIF,
    net: nn.Module,
    x: Tensor | PackedSequence,
    y: Tensor,
    tbptt: int | None,
    update: str,
) -> Iterator[tuple[float, float]]:
    """Gradients of one batch in ``.grad``, one optimiser step's worth at a time: yields
    ``(loss, activity)`` and the caller steps (or skips) before asking for the next.

    Without ``tbptt`` one gradient through the whole sequence. With ``tbptt`` the sequence runs in
    windows of that many steps (`evsnn.tbptt.tbptt_windows`): the gradient is truncated at the
    window edges, the forward is exact. ``update="window"`` yields after each window that holds a
    loss term, so the next window runs on the updated weights; ``"sequence"`` yields once, with
    the windows' gradients summed. The losses yielded sum to the batch's loss, and the activities
    (fractions weighted by the window's length) to its activity."""
    if tbptt is None:
        logits, _ = net(x)
        loss = model.loss(logits, y)
        loss.backward()
        stats = model.layer.last_stats
        yield float(loss.detach()), stats.mean_event_fraction if stats else 0.0
        return
    from .tbptt import tbptt_windows

    total, activity, steps = 0.0, 0.0, x.shape[0]
    for window in tbptt_windows(_model_step(model), x, tbptt):
        loss = _window_loss(model, window.output[0], y, window.start, steps)
        stats = model.layer.last_stats
        activity += (stats.mean_event_fraction if stats else 0.0) * (window.stop - window.start) / steps
        if loss is not None:
            loss.backward()
            total += float(loss.detach())
            if update == "window":
                yield total, activity
                total, activity = 0.0, 0.0
    if update == "sequence":
        yield total, activity


def _updates_per_batch(model: SequenceClassifier | PerStepALIF, train_set: Any, config: TrainConfig) -> int:
    """Optimiser steps that one batch makes: one per window holding a loss term with
    ``tbptt_update="window"`` (`_window_has_loss`; the sequences are of one length there), else one."""
    if config.tbptt is None or config.tbptt_update != "window":
        return 1
    steps, k = int(train_set[0][0].shape[0]), config.tbptt
    return sum(_window_has_loss(model, min(start + k, steps), steps) for start in range(0, steps, k))


def _all_finite(loss: float, norm: float, dist_info: _Dist, device: torch.device) -> bool:
    """Whether the loss and gradient norm are finite, in every process (all skip a step together)."""
    finite = math.isfinite(loss) and math.isfinite(norm)
    if dist_info.world > 1:
        import torch.distributed as dist

        flag = torch.tensor([0.0 if finite else 1.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        finite = float(flag) == 0.0
    return finite


def _gradient_norm(model: nn.Module) -> float:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0


def resolve_device(name: str) -> torch.device:
    """``auto`` → ``cuda`` when PyTorch sees a GPU, else ``cpu``; other names as given, checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "meta":
        raise ValueError(
            f"--device {name}: meta tensors carry shapes but no values, so there is nothing to train or "
            "evaluate; use cpu, cuda or auto (a layer itself runs forward on meta, e.g. for deferred initialisation)"
        )
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {name} asked for, but no CUDA GPU is visible to PyTorch")
    return device


def choose_threads(cores: int, load: float, current: int, processes: int = 1) -> tuple[int, str]:
    """Intra-op threads for CPU training and the reason, for ``cores`` usable cores, the 1-minute
    load average ``load`` and ``processes`` training processes on this machine.

    The recurrent loops issue many small ops per step; their thread hand-offs cost more than they
    save once the cores are shared (measured on a 2-core machine at load ≈ 7.5, 3 epochs of the
    default digits run: 515 s of training with torch's default 2 threads, 20 s with one). So: one
    thread on ≤ 2 cores, else the cores that the load leaves idle, split over the processes, at
    least one and at most ``current``.
    """
    if cores <= 2:
        return 1, f"{cores} cores"
    idle = int(cores - load)
    n = max(1, min(current, idle // max(processes, 1)))
    return n, f"{cores} cores, load {load:.1f}" + (f", {processes} processes" if processes > 1 else "")


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _progress(total: int, enabled: bool, desc: str) -> Any:
    """A tqdm bar over one epoch's batches when tqdm is installed and stderr is a terminal (a
    bar in a piped log is a flood of carriage returns); otherwise nothing is drawn during the
    epoch (the loop prints one line per epoch either way)."""
    if enabled and sys.stderr.isatty():
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


def train(
    config: TrainConfig, *, progress: bool = True, log: Callable[[str], None] = print, resume: bool = False
) -> dict[str, Any]:
    """Train, evaluate after every epoch, write the run folder, return the metrics dict.

    With ``resume=True``, ``config.out`` must hold an interrupted run of the same configuration
    (`RunFolder.resume`); training continues after its last checkpointed epoch with the
    saved model, optimiser, learning-rate schedule and history, and ends as the uninterrupted
    run would have (the batches of every epoch depend only on the seed and the epoch).

    Everything that can be checked is checked before the first epoch: the configuration, the
    device, the run folder (claimed, so a folder holding another run is refused with
    `RunFolderInUse` and an unwritable one fails at once, naming it) and the data. On CPU
    with ``config.threads=None`` the thread count comes from `choose_threads`; the previous
    count is restored on return. ``KeyboardInterrupt`` propagates after the last completed epoch's
    checkpoint is on disk; a run that ends before its first checkpoint removes its claim again.
    Without matplotlib the run still completes (metrics, checkpoint and events are written) and
    ``log`` gets a note instead of the plots.
    """
    config.validate()
    config.device = str(resolve_device(config.device))
    dist_info = _init_distributed(config)
    device = torch.device(config.device)
    threads_before = torch.get_num_threads()
    run: RunFolder | None = None
    state: dict[str, Any] | None = None
    try:
        if resume:
            if not config.out:
                raise ValueError("resume needs the run folder to continue (--out)")
            if dist_info.main:
                run, state = RunFolder.resume(config.out, config)
            else:
                state = torch.load(Path(config.out) / "checkpoint.pt", map_location="cpu", weights_only=True)
        elif dist_info.main:
            run = _claim_run_folder(config)
        else:
            config.out = os.fspath(Path(config.out) if config.out else default_run_dir(config))
        threads = _set_threads(config, device, dist_info, threads_before, log if progress else None)
        return _train(config, device, dist_info, run, threads, progress, log, state)
    except BaseException:
        if run is not None and not resume:
            run.release()
        raise
    finally:
        if run is not None:
            run.close()
        torch.set_num_threads(threads_before)


def _set_threads(
    config: TrainConfig, device: torch.device, dist_info: _Dist, current: int, log: Callable[[str], None] | None
) -> int:
    if config.threads is not None:
        n, source = config.threads, "--threads"
    elif device.type == "cpu":
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):  # no load average on this platform
            load = 0.0
        processes = int(os.environ.get("LOCAL_WORLD_SIZE", dist_info.world))
        n, why = choose_threads(_usable_cores(), load, current, processes)
        source = f"auto: {why}; --threads N to override"
    else:
        return current
    torch.set_num_threads(n)
    if log is not None and dist_info.main:
        log(f"threads: {n} ({source})")
    return n


def _claim_run_folder(config: TrainConfig) -> RunFolder:
    if config.out:
        run = RunFolder.claim(config.out, config)
    else:
        # Default names carry the second the run started; runs started in the same second
        # get -2, -3, ... instead of refusing.
        base = default_run_dir(config)
        for i in range(1, 100):
            candidate = base if i == 1 else base.with_name(f"{base.name}-{i}")
            try:
                run = RunFolder.claim(candidate, config)
                break
            except RunFolderInUse:
                continue
        else:
            raise RunFolderInUse(f"run folders {base}, {base}-2, ... {base}-99 are all taken: pass --out")
    config.out = os.fspath(run.path)
    return run


def _train(
    config: TrainConfig,
    device: torch.device,
    dist_info: _Dist,
    run: RunFolder | None,
    threads: int,
    progress: bool,
    log: Callable[[str], None],
    state: dict[str, Any] | None = None,
) -> dict[str, Any]:
    train_set, test_set, n_features, n_classes = load_data(config)
    _check_finite_inputs(train_set, "training")
    _check_finite_inputs(test_set, "test")
    torch.manual_seed(config.seed)
    model = build_model(config, n_features, n_classes).to(device)
    net: nn.Module = model
    if dist_info.world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.Adam(model.param_groups(config.lr), lr=config.lr)
    per_epoch = len(_global_batches(len(train_set), config.batch_size, 0, config.seed))
    if per_epoch == 0:
        raise ValueError(f"batch size {config.batch_size} is larger than the {len(train_set)} training samples")
    updates = _updates_per_batch(model, train_set, config)
    total_steps = per_epoch * updates * config.epochs
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    max_lr = [group["lr"] for group in opt.param_groups]
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=max(total_steps, 2))
    history: list[dict[str, Any]] = []
    step, started, first_epoch = 0, time.time(), 1
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        history = list(state["history"])
        step, first_epoch = state["step"], state["epoch"] + 1
        started -= history[-1]["time_s"] if history else 0.0
        if progress and dist_info.main:
            log(f"resuming {config.out} after epoch {state['epoch']} (step {step})")
    shard = config.batch_size // dist_info.world
    skipped = int(state.get("skipped_steps", 0)) if state is not None else 0
    streak: list[int] = []
    for epoch in range(first_epoch, config.epochs + 1):
        if step >= total_steps:
            break
        bar = _progress(per_epoch, progress and dist_info.main, f"epoch {epoch}/{config.epochs}")
        # loss_sum: per-sample loss summed over the steps applied; seen: the samples of the batches
        # with a step applied; act_sum: their activities, one batch's worth per batch.
        loss_sum, seen, act_sum = 0.0, 0, 0.0
        for batch in _global_batches(len(train_set), config.batch_size, epoch, config.seed):
            mine = batch[dist_info.rank * shard : (dist_info.rank + 1) * shard]
            x, y = _batches(train_set, mine)
            opt.zero_grad(set_to_none=True)
            applied = False
            for value, activity in _gradients(
                model, net, x.to(device), y.to(device), config.tbptt, config.tbptt_update
            ):
                norm = _gradient_norm(model)
                step += 1
                if not _all_finite(value, norm, dist_info, device):
                    # Never applied: an inf/NaN update would turn every weight into NaN for good.
                    skipped += 1
                    streak.append(step)
                    if dist_info.main:
                        log(f"step {step} (epoch {epoch}) skipped: the loss is {value}, the gradient norm {norm}")
                    if len(streak) >= MAX_NONFINITE_IN_A_ROW:
                        raise RuntimeError(
                            f"training diverged: the loss is {value} at epoch {epoch}, steps "
                            f"{streak[0]}-{streak[-1]} ({len(streak)} in a row skipped, none applied; "
                            f"lr {config.lr:g}; try a smaller --lr)"
                        )
                else:
                    streak.clear()
                    opt.step()
                    sched.step()
                    loss_sum += value * len(mine)
                    act_sum += activity
                    applied = True
                opt.zero_grad(set_to_none=True)
                if step >= total_steps:
                    break
            if applied:
                seen += len(mine)
            bar.update(1)
            if seen:
                bar.set_postfix_str(f"loss {loss_sum / seen:.3f}")
            if step >= total_steps:
                break
        bar.close()
        acc, test_loss = _evaluate(model, test_set, device)
        n_batches = max(1, math.ceil(seen / shard))
        # An epoch whose every step was skipped has no training loss to report.
        row = {
            "epoch": epoch,
            "loss": loss_sum / seen if seen else float("nan"),
            "test_loss": test_loss,
            "accuracy": acc,
            "activity": act_sum / n_batches,
            "time_s": time.time() - started,
        }
        history.append(row)
        if run is not None:
            run.save(
                "checkpoint.pt",
                {
                    "config": asdict(config),
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "history": history,
                    "epoch": epoch,
                    "step": step,
                    "skipped_steps": skipped,
                    "n_features": n_features,
                    "n_classes": n_classes,
                },
            )
            if progress:
                log(
                    f"epoch {epoch:>3}/{config.epochs}  loss {row['loss']:.3f}  test accuracy {acc:.3f}  "
                    f"activity {row['activity']:.3f}  {row['time_s']:.0f}s"
                )
        if step >= total_steps:
            break
    metrics, events = _summarise(model, test_set, device, config, history, time.time() - started, dist_info.world)
    metrics["threads"] = threads
    metrics["skipped_steps"] = skipped
    if run is not None:
        metrics["run_id"] = run.run_id
        run.save("events.pt", events)
        run.write("metrics.json", json.dumps(metrics, indent=2).encode())
        try:
            draw_run_plots(run.path)
        except ImportError as err:
            log(
                f"note: {err}; raster.png and curves.png were not drawn. metrics.json, checkpoint.pt and events.pt "
                f"are in {run.path} (draw the plots later with 'evsnn plot {run.path}')"
            )
    return metrics


def _summarise(
    model: SequenceClassifier,
    test_set,
    device: torch.device,
    config: TrainConfig,
    history: list[dict[str, Any]],
    seconds: float,
    world: int,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Final accuracy plus each layer's [`LayerStats`][evsnn.stats.LayerStats] on the whole test set,
    and the ``events.pt`` payload: the events and labels of the first 8 test samples, copied
    (a slice would carry the whole test set's storage into the file)."""
    model.eval()
    idx = torch.arange(len(test_set))
    x, y = _batches(test_set, idx)
    with torch.no_grad():
        logits, events = model(x.to(device))
    hit, counted = model.hits(logits, y.to(device))
    accuracy = hit / counted
    layers = [layer.last_stats.as_dict() for layer in model.layers_with_stats() if layer.last_stats is not None]
    keep = torch.contiguous_format
    saved = {"events": events[:, :8].detach().cpu().clone(memory_format=keep), "model": config.model}
    # a per-step task (ECG) has a label per step: kept apart from the one label per sample of "labels"
    saved["labels" if y.dim() == 1 else "step_labels"] = y[:8].clone(memory_format=keep)
    metrics = {
        "config": asdict(config),
        "accuracy": accuracy,
        "train_seconds": seconds,
        "world_size": world,
        "layers": layers,
        "history": history,
    }
    return metrics, saved
