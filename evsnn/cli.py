"""The ``evsnn`` command: ``train``, ``plot``, ``bench``, ``info``.

Errors are one line on stderr (``evsnn: error: ...``) and a non-zero exit, never a traceback:
2 for bad arguments, 1 for a failure while running, 130 when interrupted (the run folder then
keeps the checkpoint of the last completed epoch), 141 when the reader of stdout went away
(``evsnn train | head -1``), quietly, like other Unix tools.

Argument parsing is torch-free: ``evsnn --help``, ``evsnn --version`` and ``evsnn <command> --help``
answer without importing torch (the train options come from `evsnn.train_config`), and a
command imports what it needs only when it runs. ``evsnn info`` reads the versions from the
package metadata without importing the packages.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import math
import os
import platform
import subprocess
import sys
import warnings
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


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**32), got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite positive number, got {value}")
    return value


_COMMANDS = {
    "train": "train a network (default: ALIF on the scikit-learn digits)",
    "plot": "redraw the raster and training-curve figures of a run folder (PNG, PDF, SVG, EPS)",
    "bench": "run the project's benchmarks (benchmarks/ of the evsnn checkout)",
    "info": "versions and which backends work here",
}


def _evsnn_version() -> str:
    from . import __version__

    return __version__


def _parser(command: str | None = None) -> _Parser:
    """The parser; only ``command``'s own options are built (the train options import torch)."""
    p = _Parser(prog="evsnn", description="Event-driven neurons for PyTorch: train, plot, benchmark, inspect.")
    p.add_argument("--version", action="version", version=f"evsnn {_evsnn_version()}")
    sub = p.add_subparsers(dest="command", metavar="{train,plot,bench,info}", parser_class=_Parser)
    builders = {"train": _train_options, "plot": _plot_options, "bench": _bench_options, "info": None}
    for name, help_text in _COMMANDS.items():
        child = sub.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".")
        build = builders[name]
        if name == command and build is not None:
            build(child)
    return p


def _device(text: str) -> str:
    from .train_config import check_device

    try:
        return check_device(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _train_options(t: _Parser) -> None:
    # Only the torch-free train_config: 'evsnn train --help' answers without loading torch.
    from .train_config import (
        BACKENDS,
        DATASETS,
        DEVICE_HELP,
        ENCODED_DATA,
        ENCODINGS,
        MODELS,
        TASK_DEFAULTS,
        TBPTT_UPDATES,
        TrainConfig,
    )

    d = TrainConfig()
    ecg = TASK_DEFAULTS["ecg"]
    t.description = (
        "Train an evsnn network; writes run.json, checkpoint.pt, metrics.json, events.pt, raster.png "
        "and curves.png into a new run folder."
    )
    t.add_argument("--model", choices=MODELS, default=d.model, help="neuron layer (default %(default)s)")
    t.add_argument(
        "--data",
        choices=DATASETS,
        default=d.data,
        help="digits: rows of the 8x8 digits; digits-pixels / digits-permuted: one pixel per step; "
        "temporal: the synthetic temporal-order task; shd, dvsgesture, nmnist: from --data-dir; "
        "vowels: JapaneseVowels from the aeon package or --data-dir; mnist1d: generated by the "
        "mnist1d package; ecg: QTDB ECG per-step segmentation from --data-dir (Yin et al.'s ALIF "
        "network, --model alif)",
    )
    t.add_argument(
        "--data-dir",
        default=None,
        help="folder holding SHD/, DVSGesture/, NMNIST/, JapaneseVowels_{TRAIN,TEST}.ts "
        "or QTDB_{train,test}.mat (never downloads)",
    )
    digits = ", ".join(ENCODED_DATA)
    t.add_argument(
        "--encoding",
        choices=ENCODINGS,
        default=None,
        help=f"spike-encode the digits ({digits} only; default {d.encoding})",
    )
    t.add_argument(
        "--repeat",
        type=_positive_int,
        default=None,
        help=f"steps per digit row/pixel ({digits} only; default {d.repeat})",
    )
    t.add_argument(
        "--hidden",
        type=_positive_int,
        default=None,
        help=f"hidden units (default {d.hidden}; {ecg['hidden']} for --data ecg)",
    )
    adaptation = t.add_mutually_exclusive_group()
    adaptation.add_argument(
        "--no-adaptation",
        dest="adaptive",
        action="store_false",
        default=None,
        help="ALIF without adaptation (beta = 0): a LIF neuron with a fixed threshold "
        "(the default of --data ecg, as Yin et al.'s ECG network)",
    )
    adaptation.add_argument(
        "--adaptation",
        dest="adaptive",
        action="store_true",
        default=None,
        help="adaptive ALIF hidden layer (beta = 1.8; the default except for --data ecg, where "
        "it is an extension beyond the published network, whose readout alone adapts)",
    )
    t.add_argument(
        "--epochs",
        type=_positive_int,
        default=None,
        help=f"epochs (default {d.epochs}; {ecg['epochs']} for --data ecg)",
    )
    t.add_argument(
        "--batch-size",
        type=_positive_int,
        default=d.batch_size,
        help="global batch size, split over torchrun processes (default %(default)s)",
    )
    t.add_argument(
        "--lr", type=_positive_float, default=d.lr, help="peak learning rate, one-cycle (default %(default)s)"
    )
    t.add_argument("--seed", type=_non_negative_int, default=d.seed, help="random seed >= 0 (default %(default)s)")
    t.add_argument(
        "--device",
        type=_device,
        default=d.device,
        help=f"{DEVICE_HELP}; auto: a CUDA GPU when PyTorch sees one, else the CPU (default %(default)s)",
    )
    t.add_argument(
        "--tbptt",
        type=_non_negative_int,
        default=None,
        metavar="K",
        help="truncated backpropagation through time: gradients flow within windows of K steps, the "
        "state is carried exactly from one window to the next; 0: through the whole sequence "
        f"(default 0; {ecg['tbptt']} for --data ecg)",
    )
    t.add_argument(
        "--tbptt-update",
        choices=TBPTT_UPDATES,
        default=d.tbptt_update,
        help="with --tbptt: window, an optimiser step after every window (truncated BPTT as Williams & "
        "Peng and Yin et al. run it); sequence, one step per batch on the windows' summed gradients "
        "(default %(default)s)",
    )
    t.add_argument("--backend", choices=BACKENDS, default=d.backend, help="evsnn op backend (default %(default)s)")
    t.add_argument(
        "--out",
        default=None,
        help="run folder, new or empty: a folder holding another run is refused (default runs/<model>-<data>-<time>)",
    )
    t.add_argument("--max-steps", type=_positive_int, default=None, help="stop after this many optimiser steps")
    t.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help="torch CPU threads (default on CPU: 1 on <= 2 cores, else the cores the load average "
        "leaves idle; the choice is printed)",
    )
    t.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run in --out from its last checkpoint (give the same options as that run)",
    )
    t.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")


def _plot_options(pl: _Parser) -> None:
    pl.add_argument("run", help="run folder written by 'evsnn train'")
    pl.add_argument(
        "--format",
        choices=("png", "pdf", "svg", "eps"),
        default="png",
        help="file format of raster.* and curves.* (pdf/svg/eps: vector, for papers)",
    )
    pl.add_argument("--dpi", type=_positive_int, default=120, help="resolution of PNG output (300 for print)")
    pl.add_argument(
        "--size",
        choices=("column", "page"),
        default="column",
        help="figure width: one paper column (3.5 in) or a page (7 in)",
    )


def _bench_options(b: _Parser) -> None:
    b.description = (
        "Run benchmark scripts from the benchmarks/ folder of the evsnn checkout this evsnn was "
        "installed from (never from the current directory), or from --dir."
    )
    b.add_argument("names", nargs="*", help="benchmark names (file stems); default: all")
    b.add_argument("--dir", default=None, help="run the scripts of this folder instead")
    b.add_argument("--gpu", action="store_true", help="require a CUDA GPU and CuPy; fail at once without them")
    b.add_argument("--list", action="store_true", help="list the benchmarks and exit")


def _train(args: argparse.Namespace) -> int:
    from .train_config import ENCODED_DATA, TASK_DEFAULTS, TrainConfig

    given = {name: getattr(args, name) for name in ("encoding", "repeat") if getattr(args, name) is not None}
    if given and args.data not in ENCODED_DATA:
        options = " and ".join(f"--{name} {value}" for name, value in given.items())
        raise CLIError(
            f"{options} apply to the digits data ({', '.join(ENCODED_DATA)}) only; --data {args.data} "
            f"has no encoding step and would train without them",
            2,
        )
    # The task's recipe for what the command line leaves out (TASK_DEFAULTS), else TrainConfig's defaults.
    task = TASK_DEFAULTS.get(args.data, {})
    d = TrainConfig()
    hidden = args.hidden if args.hidden is not None else task.get("hidden", d.hidden)
    epochs = args.epochs if args.epochs is not None else task.get("epochs", d.epochs)
    tbptt = args.tbptt if args.tbptt is not None else task.get("tbptt", 0)
    config = TrainConfig(
        model=args.model,
        data=args.data,
        data_dir=args.data_dir,
        hidden=hidden,
        epochs=epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
        backend=args.backend,
        out=args.out,
        max_steps=args.max_steps,
        threads=args.threads,
        adaptive=args.adaptive,
        tbptt=tbptt or None,
        tbptt_update=args.tbptt_update,
        **given,
    )
    if args.data_dir is not None and not os.path.isdir(args.data_dir):
        where = ""
        if args.data == "ecg":
            from .data.qtdb import QTDB_SOURCE

            where = f"; it should hold QTDB_train.mat and QTDB_test.mat from {QTDB_SOURCE}"
        raise CLIError(f"data folder {args.data_dir!r} does not exist{where}")
    if args.resume and args.out is None:
        raise CLIError("--resume needs --out, the folder of the run to continue", 2)
    from .train import RunFolderError, train

    try:
        metrics = train(config, progress=not args.quiet, log=lambda s: print(s, flush=True), resume=args.resume)
    except RunFolderError as err:
        raise CLIError(str(err)) from None
    except KeyboardInterrupt:
        ckpt = Path(config.out or "") / "checkpoint.pt"
        where = (
            f"; last checkpoint kept at {ckpt} (continue with --resume --out {config.out})"
            if config.out and ckpt.is_file()
            else "; no epoch had completed"
        )
        raise CLIError(f"interrupted{where}", 130) from None
    if int(os.environ.get("RANK", "0")) == 0:
        print(_summary(metrics))
    return 0


def _summary(metrics: dict) -> str:
    c = metrics["config"]
    procs = f"{metrics['world_size']} process{'es' if metrics['world_size'] > 1 else ''}"
    threads = (
        f", {metrics['threads']} thread{'s' if metrics['threads'] > 1 else ''} each" if "threads" in metrics else ""
    )
    lines = [
        f"evsnn train: {c['model']} on {c['data']} — test accuracy {metrics['accuracy']:.2%} "
        f"in {metrics['train_seconds']:.0f} s on {c['device']} ({procs}{threads})",
    ]
    for layer in metrics["layers"]:
        lines.append(
            f"  {layer['layer']:<10} activity {layer['mean_event_fraction']:.1%} of units per step, "
            f"{layer['event_ops']:,} event ops vs {layer['dense_macs']:,} dense MACs "
            f"({layer['ops_saved_fraction']:.1%} saved)"
        )
    from .runs import RUN_FILES

    present = [name for name in RUN_FILES if (Path(c["out"]) / name).is_file()]
    lines.append(f"  run folder: {c['out']} ({', '.join(present)})")
    return "\n".join(lines)


def _plot(args: argparse.Namespace) -> int:
    from .runs import draw_run_plots

    try:
        paths = draw_run_plots(args.run, format=args.format, dpi=args.dpi, size=args.size)
    except (OSError, ValueError, ImportError):
        raise  # already a message naming the file
    except Exception as err:  # a folder the checks let through must still not end in a traceback
        raise CLIError(
            f"cannot draw the plots of run folder {args.run!r}: {type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}"
        ) from None
    for path in paths:
        print(path)
    return 0


def _project_benchmarks() -> Path | None:
    """``benchmarks/`` of the evsnn checkout this package is imported from, or ``None`` for an
    installed wheel (no checkout: a ``benchmarks`` folder next to site-packages' evsnn is not ours)."""
    import tomllib

    root = Path(__file__).resolve().parent.parent
    try:
        name = tomllib.loads((root / "pyproject.toml").read_text())["project"]["name"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return None
    folder = root / "benchmarks"
    return folder if name == "evsnn" and folder.is_dir() else None


def _benchmarks_dir(explicit: str | None) -> Path:
    # Never ./benchmarks: running a script found in whatever directory the user stands in would
    # execute a file nobody chose.
    if explicit is not None:
        path = Path(explicit)
        if not path.is_dir():
            raise CLIError(f"benchmarks folder {explicit!r} does not exist")
        # Absolute: the scripts run with the folder's parent as working directory, where a
        # relative path would point somewhere else.
        return path.resolve()
    folder = _project_benchmarks()
    if folder is None:
        raise CLIError(
            "this evsnn is not installed from a checkout, so it has no benchmarks/: clone the "
            "repository and 'pip install -e .' there, or pass --dir"
        )
    return folder


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


# The distributions that install a module under another name; the rest share the module's name.
_DISTRIBUTIONS = {"sklearn": ("scikit-learn",), "cupy": ("cupy", "cupy-cuda13x", "cupy-cuda12x", "cupy-cuda11x")}


def _version(module: str) -> str:
    """The installed version of ``module`` from the package metadata, without importing it (the
    imports of torch's neighbours take seconds, and ``evsnn info`` answers quickly)."""
    from importlib import metadata

    for dist in _DISTRIBUTIONS.get(module, (module,)):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return "installed" if importlib.util.find_spec(module) is not None else "not installed"


# Backends that run on CUDA tensors only: probed on the GPU, never on the CPU.
_GPU_BACKENDS = frozenset({"cupy"})


def _backend_status(family: str, backend: str, device: str) -> str:
    """Run one inference pass of the family's layer (B=1, T=4, H=256: a size every backend
    accepts) with ``backend`` on ``device``: 'ok' or the reason it cannot run.

    On the CPU the pass goes through `evsnn.streaming.Stream`: the same backend choice and checks
    as the layer's forward and the same kernels, called directly. The layer's forward would call
    them through their ``torch.library`` custom ops, and PyTorch imports Dynamo on a custom op's
    first call (a second or more, as long as the rest of ``evsnn info`` after torch's own import).
    On a GPU, where starting CUDA costs more than that, the layer's own forward runs."""
    import torch

    from . import nn as enn
    from .streaming import Stream

    make = {"alif": enn.ALIF, "egru": enn.EGRU, "delta_gru": enn.DeltaGRU, "delta_lstm": enn.DeltaLSTM}[family]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            x = torch.rand(4, 1, 8, device=device)
            layer = make(8, 256, backend=backend).to(device)
            if device == "cpu":  # an explicit backend runs or raises BackendUnavailable
                Stream(layer, backend=backend).chunk(x)
            else:
                with torch.no_grad():
                    layer(x)
    except Exception as err:  # report any reason a backend cannot run here, in one line
        return f"no ({str(err).splitlines()[0] if str(err) else type(err).__name__})"
    return "ok"


def _info(_: argparse.Namespace) -> int:
    import torch

    from . import __version__
    from .ops import dispatch

    print(f"evsnn {__version__}  python {platform.python_version()}  {platform.platform()}")
    versions = {}
    for mod in (
        "torch",
        "numpy",
        "cupy",
        "numba",
        "snntorch",
        "norse",
        "nir",
        "tonic",
        "sklearn",
        "matplotlib",
        "tqdm",
    ):
        # torch is imported for the backend table anyway; its own version names the CUDA build
        versions[mod] = torch.__version__ if mod == "torch" else _version(mod)
        print(f"  {mod:<11}{versions[mod]}")
    cuda = torch.cuda.is_available()
    gpu = torch.cuda.get_device_name(0) if cuda else "none"
    print(f"  CUDA GPU   {gpu}")
    print("backends (one inference pass per layer, B=1, H=256):")
    for family in dispatch.FAMILIES:
        for device in ["cpu"] + (["cuda"] if cuda else []):
            names = [b for b in dispatch.BACKENDS if b != "auto" and (b in _GPU_BACKENDS) == (device == "cuda")]
            if device == "cuda":
                names = ["torch", *names]
            cells = [f"{b}: {_backend_status(family, b, device)}" for b in names]
            print(f"  {family:<11}{device:<5} " + "; ".join(cells))
    if not cuda:
        why = "no CUDA GPU is visible to PyTorch"
        if versions["cupy"] == "not installed":
            why += '; CuPy is not installed either (pip install "evsnn[cuda13]" on a GPU machine)'
        print(f"  {', '.join(sorted(_GPU_BACKENDS))}: not usable here ({why})")
    return 0


def _stdout_gone() -> int:
    # The reader of stdout closed the pipe: stop quietly. Point stdout at /dev/null so that the
    # interpreter's final flush does not raise again, and exit as a SIGPIPE-killed tool would.
    with open(os.devnull, "w") as devnull:
        try:
            os.dup2(devnull.fileno(), sys.stdout.fileno())
        except (OSError, ValueError):  # stdout replaced by an object without a file descriptor
            pass
    return 128 + 13


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``evsnn``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        command = argv[0] if argv and argv[0] in _COMMANDS else None
        parser = _parser(command)
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        handler = {"train": _train, "plot": _plot, "bench": _bench, "info": _info}[args.command]
        return handler(args)
    except BrokenPipeError:
        return _stdout_gone()
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
