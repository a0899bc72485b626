"""The ``evsnn`` command: ``train``, ``plot``, ``bench``, ``info``.

Errors are one line on stderr (``evsnn: error: ...``) and a non-zero exit, never a traceback:
2 for bad arguments, 1 for a failure while running, 130 when interrupted (the run folder then
keeps the checkpoint of the last completed epoch).
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

__all__ = ["main", "CLIError"]


class CLIError(Exception):
    """A failure to report as one line; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse would print the whole usage block; one line with a pointer to --help is enough.
        raise CLIError(f"{message} (see '{self.prog} --help')", 2)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def _parser() -> _Parser:
    from .data.encode import ENCODINGS
    from .ops.dispatch import BACKENDS
    from .train import DATASETS, MODELS, TrainConfig

    d = TrainConfig()
    p = _Parser(prog="evsnn", description="Event-driven neurons for PyTorch: train, plot, benchmark, inspect.")
    sub = p.add_subparsers(dest="command", metavar="{train,plot,bench,info}", parser_class=_Parser)

    t = sub.add_parser("train", help="train a network (default: ALIF on the scikit-learn digits)",
                       description="Train an evsnn network; writes metrics.json, checkpoint.pt, raster.png, curves.png.")
    t.add_argument("--model", choices=MODELS, default=d.model, help="neuron layer (default %(default)s)")
    t.add_argument("--data", choices=DATASETS, default=d.data,
                   help="digits: rows of the 8x8 digits; digits-pixels / digits-permuted: one pixel per step; "
                        "temporal: the synthetic temporal-order task; shd, dvsgesture, nmnist: from --data-dir")
    t.add_argument("--data-dir", default=None, help="folder holding SHD/, DVSGesture/ or NMNIST/ (never downloads)")
    t.add_argument("--encoding", choices=ENCODINGS, default=d.encoding, help="spike-encode the digits (default none)")
    t.add_argument("--repeat", type=_positive_int, default=d.repeat, help="steps per digit row/pixel (default %(default)s)")
    t.add_argument("--hidden", type=_positive_int, default=d.hidden, help="hidden units (default %(default)s)")
    t.add_argument("--epochs", type=_positive_int, default=d.epochs, help="epochs (default %(default)s)")
    t.add_argument("--batch-size", type=_positive_int, default=d.batch_size,
                   help="global batch size, split over torchrun processes (default %(default)s)")
    t.add_argument("--lr", type=_positive_float, default=d.lr, help="peak learning rate, one-cycle (default %(default)s)")
    t.add_argument("--seed", type=int, default=d.seed)
    t.add_argument("--device", default=d.device, help="cpu, cuda or cuda:N (default %(default)s)")
    t.add_argument("--backend", choices=BACKENDS, default=d.backend, help="evsnn op backend (default %(default)s)")
    t.add_argument("--out", default=None, help="run folder (default runs/<model>-<data>-<time>)")
    t.add_argument("--max-steps", type=_positive_int, default=None, help="stop after this many optimiser steps")
    t.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")
    t.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")

    pl = sub.add_parser("plot", help="redraw raster.png and curves.png from a run folder")
    pl.add_argument("run", help="run folder written by 'evsnn train'")

    b = sub.add_parser("bench", help="run the scripts in benchmarks/",
                       description="Run benchmark scripts from the benchmarks/ folder of an evsnn checkout.")
    b.add_argument("names", nargs="*", help="benchmark names (file stems); default: all")
    b.add_argument("--dir", default=None, help="benchmarks folder (default ./benchmarks or the checkout's)")
    b.add_argument("--gpu", action="store_true", help="require a CUDA GPU and CuPy; fail at once without them")
    b.add_argument("--list", action="store_true", help="list the benchmarks and exit")

    sub.add_parser("info", help="versions and which backends work here")
    return p


def _train(args: argparse.Namespace) -> int:
    from .train import TrainConfig, train

    config = TrainConfig(
        model=args.model, data=args.data, data_dir=args.data_dir, encoding=args.encoding, repeat=args.repeat,
        hidden=args.hidden, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        device=args.device, backend=args.backend, out=args.out, max_steps=args.max_steps, threads=args.threads,
    )
    if args.data_dir is not None and not os.path.isdir(args.data_dir):
        raise CLIError(f"data folder {args.data_dir!r} does not exist")
    try:
        metrics = train(config, progress=not args.quiet, log=lambda s: print(s, flush=True))
    except KeyboardInterrupt:
        ckpt = Path(config.out or "") / "checkpoint.pt"
        where = f"; last checkpoint kept at {ckpt}" if config.out and ckpt.is_file() else "; no epoch had completed"
        raise CLIError(f"interrupted{where}", 130) from None
    if int(os.environ.get("RANK", "0")) == 0:
        print(_summary(metrics))
    return 0


def _summary(metrics: dict) -> str:
    c = metrics["config"]
    lines = [
        f"evsnn train: {c['model']} on {c['data']} — test accuracy {metrics['accuracy']:.2%} "
        f"in {metrics['train_seconds']:.0f} s ({metrics['world_size']} process{'es' if metrics['world_size'] > 1 else ''})",
    ]
    for layer in metrics["layers"]:
        lines.append(
            f"  {layer['layer']:<10} activity {layer['mean_event_fraction']:.1%} of units per step, "
            f"{layer['event_ops']:,} event ops vs {layer['dense_macs']:,} dense MACs "
            f"({layer['ops_saved_fraction']:.1%} saved)"
        )
    lines.append(f"  run folder: {c['out']} (metrics.json, checkpoint.pt, raster.png, curves.png)")
    return "\n".join(lines)


def _plot(args: argparse.Namespace) -> int:
    from .train import draw_run_plots

    for path in draw_run_plots(args.run):
        print(path)
    return 0


def _benchmarks_dir(explicit: str | None) -> Path:
    if explicit is not None:
        path = Path(explicit)
        if not path.is_dir():
            raise CLIError(f"benchmarks folder {explicit!r} does not exist")
        return path
    for candidate in (Path.cwd() / "benchmarks", Path(__file__).resolve().parent.parent / "benchmarks"):
        if candidate.is_dir():
            return candidate
    raise CLIError("no benchmarks/ folder here: run 'evsnn bench' from an evsnn checkout or pass --dir")


def _gpu_problem() -> str | None:
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU is visible to PyTorch"
    try:
        importlib.import_module("cupy")
    except ImportError:
        return 'CuPy is not installed (pip install "evsnn[cuda13]")'
    return None


def _bench(args: argparse.Namespace) -> int:
    folder = _benchmarks_dir(args.dir)
    available = {p.stem: p for p in sorted(folder.glob("*.py")) if not p.name.startswith("_")}
    if args.list:
        print("\n".join(available) if available else f"(no benchmarks in {folder})")
        return 0
    if not available:
        raise CLIError(f"no benchmark scripts (*.py) in {folder}")
    names = args.names or list(available)
    missing = [n for n in names if n not in available]
    if missing:
        raise CLIError(f"no benchmark named {', '.join(missing)} in {folder}; available: {', '.join(available)}")
    if args.gpu:
        problem = _gpu_problem()
        if problem:
            raise CLIError(f"--gpu: {problem}")
    failed = []
    for name in names:
        print(f"== {name}", flush=True)
        code = subprocess.call([sys.executable, str(available[name])], cwd=folder.parent)
        if code != 0:
            failed.append(f"{name} (exit {code})")
    if failed:
        raise CLIError(f"benchmark failed: {', '.join(failed)}")
    return 0


def _version(module: str) -> str:
    try:
        return getattr(importlib.import_module(module), "__version__", "installed")
    except ImportError:
        return "not installed"
    except Exception as err:  # installed but broken: say so instead of hiding it
        return f"installed but fails to import ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"


def _backend_status(family: str, backend: str, device: str) -> str:
    """Run one inference pass of the family's layer (B=1, T=4, H=256: a size every backend
    accepts) with ``backend`` on ``device``: 'ok' or the reason it cannot run."""
    import torch

    from . import nn as enn

    make = {"alif": enn.ALIF, "egru": enn.EGRU, "delta_gru": enn.DeltaGRU, "delta_lstm": enn.DeltaLSTM}[family]
    try:
        layer = make(8, 256, backend=backend).to(device)
        with torch.no_grad():
            layer(torch.rand(4, 1, 8, device=device))
    except Exception as err:  # report any reason a backend cannot run here, in one line
        return f"no ({str(err).splitlines()[0] if str(err) else type(err).__name__})"
    return "ok"


def _info(_: argparse.Namespace) -> int:
    import torch

    from . import __version__
    from .ops import dispatch

    print(f"evsnn {__version__}  python {platform.python_version()}  {platform.platform()}")
    for mod in ("torch", "numpy", "cupy", "snntorch", "norse", "nir", "tonic", "sklearn", "matplotlib", "tqdm"):
        print(f"  {mod:<11}{_version(mod)}")
    cuda = torch.cuda.is_available()
    gpu = torch.cuda.get_device_name(0) if cuda else "none"
    print(f"  CUDA GPU   {gpu}")
    devices = ["cpu"] + (["cuda"] if cuda else [])
    print("backends (one inference pass per layer, B=1, H=256):")
    for family in dispatch.FAMILIES:
        for device in devices:
            cells = [f"{b}: {_backend_status(family, b, device)}" for b in dispatch.BACKENDS if b != "auto"]
            print(f"  {family:<11}{device:<5} " + "; ".join(cells))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``evsnn``; returns the exit status."""
    try:
        parser = _parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        handler = {"train": _train, "plot": _plot, "bench": _bench, "info": _info}[args.command]
        return handler(args)
    except CLIError as err:
        print(f"evsnn: error: {err}", file=sys.stderr)
        return err.code
    except KeyboardInterrupt:
        print("evsnn: error: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError, RuntimeError, ImportError) as err:
        # Bad input and environment problems arrive as exceptions with a clear message; show
        # the first line of it and the type, not the traceback.
        first = str(err).splitlines()[0] if str(err) else ""
        print(f"evsnn: error: {first or type(err).__name__}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
