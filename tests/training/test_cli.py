"""The evsnn command: train writes a complete run folder, plot redraws it, errors are one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from evsnn import cli
from evsnn.train import SequenceClassifier, TrainConfig, _global_batches, train

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "evsnn", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env
    )


def _one_line_error(proc: subprocess.CompletedProcess, needle: str) -> None:
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("evsnn: error:") and needle in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


class _InProcess:
    """``cli.main`` in this process (a subprocess per case costs seconds of imports)."""

    def __init__(self, capsys):
        self.capsys = capsys

    def __call__(self, *args: str) -> subprocess.CompletedProcess:
        self.capsys.readouterr()
        code = cli.main(list(args))
        cap = self.capsys.readouterr()
        return subprocess.CompletedProcess(args, code, cap.out, cap.err)


@pytest.fixture
def evsnn_cmd(capsys) -> _InProcess:
    return _InProcess(capsys)


@pytest.fixture(scope="module")
def short_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    code = cli.main(["train", "--epochs", "2", "--max-steps", "6", "--hidden", "32", "--quiet", "--out", str(out)])
    assert code == 0
    return out


def test_train_writes_run_folder(short_run, capsys):
    names = {p.name for p in short_run.iterdir()}
    assert {"metrics.json", "checkpoint.pt", "events.pt", "raster.png", "curves.png"} <= names
    metrics = json.loads((short_run / "metrics.json").read_text())
    ckpt = torch.load(short_run / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 6 and ckpt["config"]["hidden"] == 32
    # the reported accuracy is that of the checkpointed weights, recomputed here independently
    from evsnn.data import load_digits_sequences

    split = load_digits_sequences("rows", repeat=3, seed=0)
    model = SequenceClassifier("alif", 8, 32, 10)
    model.load_state_dict(ckpt["model"])
    x, y = split.test.tensors
    with torch.no_grad():
        logits, events = model(x.transpose(0, 1))
    assert metrics["accuracy"] == pytest.approx(float((logits.argmax(1) == y).float().mean()), abs=1e-6)
    layer = metrics["layers"][0]
    assert layer["layer"] == "ALIF"
    assert layer["mean_event_fraction"] == pytest.approx(float((events != 0).float().mean()), abs=1e-6)
    assert 0.0 <= layer["ops_saved_fraction"] <= 1.0
    assert [row["epoch"] for row in metrics["history"]] == [1]  # 6 steps < one epoch of 22 batches


def test_plot_redraws_and_rejects_broken_runs(short_run, tmp_path, evsnn_cmd):
    (short_run / "raster.png").unlink()
    assert cli.main(["plot", str(short_run)]) == 0
    assert (short_run / "raster.png").stat().st_size > 1000
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metrics.json").write_text("{not json")
    (broken / "events.pt").write_bytes(b"garbage")
    _one_line_error(evsnn_cmd("plot", str(broken)), "not valid JSON")
    _one_line_error(evsnn_cmd("plot", str(tmp_path / "missing")), "does not exist")


def test_bad_arguments_are_one_line_errors(tmp_path, evsnn_cmd):
    # a real process once: the exit status and the absence of a traceback are the process's own
    proc = run_cli("train", "--model", "lstm")
    assert proc.returncode == 2
    _one_line_error(proc, "invalid choice")
    _one_line_error(evsnn_cmd("train", "--epochs", "0"), "positive integer")
    _one_line_error(evsnn_cmd("train", "--data", "shd", "--data-dir", str(tmp_path / "nowhere")), "does not exist")
    _one_line_error(evsnn_cmd("train", "--data", "shd"), "needs --data-dir")
    _one_line_error(
        evsnn_cmd("train", "--data", "shd", "--data-dir", str(tmp_path), "--max-steps", "1"), "never downloads"
    )
    _one_line_error(evsnn_cmd("frobnicate"), "invalid choice")


def test_bench_errors_and_runs(tmp_path, evsnn_cmd):
    _one_line_error(
        evsnn_cmd("bench", "--dir", str(ROOT / "benchmarks"), "no_such_benchmark"),
        "no benchmark named no_such_benchmark",
    )
    _one_line_error(evsnn_cmd("bench", "--dir", str(tmp_path / "none")), "does not exist")
    bench = tmp_path / "benchmarks"
    bench.mkdir()
    (bench / "ok.py").write_text("print('ratio 2.0')\n")
    (bench / "bad.py").write_text("raise SystemExit(3)\n")
    proc = run_cli("bench", "--dir", str(bench), "ok")  # the script's own output goes to the terminal
    assert proc.returncode == 0 and "ratio 2.0" in proc.stdout
    _one_line_error(evsnn_cmd("bench", "--dir", str(bench), "bad"), "bad (exit 3)")
    if not torch.cuda.is_available():
        _one_line_error(evsnn_cmd("bench", "--dir", str(bench), "--gpu", "ok"), "no CUDA GPU")


def test_info_lists_versions_and_backends(evsnn_cmd):
    proc = evsnn_cmd("info")
    assert proc.returncode == 0, proc.stderr
    assert f"torch      {torch.__version__}" in proc.stdout
    for family in ("alif", "egru", "delta_gru", "delta_lstm"):
        assert f"  {family}" in proc.stdout
    assert "torch: ok" in proc.stdout  # the reference always runs
    installed = {line.split()[0] for line in proc.stdout.splitlines()[1:12] if "not installed" not in line}
    if "cupy" in installed:  # never suggest installing what the table lists as installed
        assert "evsnn[cuda13]" not in proc.stdout and "evsnn[cuda12]" not in proc.stdout, proc.stdout
    if not torch.cuda.is_available():
        assert "cupy: not usable here (no CUDA GPU is visible to PyTorch" in proc.stdout
        assert "cupy: no (" not in proc.stdout  # not probed on CPU tensors


def test_backend_status_reports_what_dispatch_says():
    # a backend that refuses the call is reported with dispatch's reason; one that runs says ok
    assert cli._backend_status("egru", "torch", "cpu") == "ok"
    refused = cli._backend_status("egru", "cupy", "cpu")
    assert refused.startswith("no (backend 'cupy' cannot run this egru call: the CuPy backend runs on CUDA tensors"), (
        refused
    )


def test_info_versions_come_from_metadata_without_importing(tmp_path, monkeypatch):
    # An import would run the package's code: seconds for torch's neighbours, and their import-time
    # warnings (norse's FutureWarning from torch.jit) inside the table.
    marker = tmp_path / "imported"
    (tmp_path / "noisy_pkg.py").write_text(f"open({str(marker)!r}, 'w').close()\n__version__ = '9.9'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert cli._version("noisy_pkg") == "installed"  # found, no distribution metadata
    assert not marker.exists()
    from importlib import metadata

    assert cli._version("sklearn") == metadata.version("scikit-learn")
    assert cli._version("no_such_module_here") == "not installed"


def test_help_and_version_are_fast_and_import_no_torch():
    code = (
        "import sys\nfrom evsnn.cli import main\nfor args in (['--help'], ['--version']):\n"
        "    try:\n        main(args)\n    except SystemExit as e:\n        assert e.code == 0, e.code\n"
        "print('torch' in sys.modules, 'evsnn.nn' in sys.modules)"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr
    from evsnn import __version__

    assert f"evsnn {__version__}" in proc.stdout and "{train,plot,bench,info}" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "False False"


def test_arguments_are_checked_before_training(evsnn_cmd, monkeypatch, tmp_path):
    from evsnn import train as tr

    def no_data(config):
        raise AssertionError("training started despite a bad argument")

    monkeypatch.setattr(tr, "load_data", no_data)
    _one_line_error(evsnn_cmd("train", "--seed", "-5"), "argument --seed: expected an integer in [0, 2**32), got -5")
    _one_line_error(evsnn_cmd("train", "--lr", "inf"), "expected a finite positive number, got inf")
    _one_line_error(evsnn_cmd("train", "--lr", "nan"), "expected a finite positive number, got nan")
    proc = evsnn_cmd("train", "--lr", "1e300", "--out", str(tmp_path / "lr"))
    _one_line_error(proc, "lr must be a finite number in (0, 3.4e+38], got 1e+300")
    _one_line_error(evsnn_cmd("train", "--device", "gpu0"), "device must be auto, cpu, cuda or cuda:N, got 'gpu0'")
    _one_line_error(evsnn_cmd("train", "--resume"), "--resume needs --out")
    if not torch.cuda.is_available():
        _one_line_error(evsnn_cmd("train", "--device", "cuda", "--out", str(tmp_path / "cuda")), "no CUDA GPU")
    assert not (tmp_path / "lr").exists() and not (tmp_path / "cuda").exists()
    (tmp_path / "file").write_text("")
    proc = evsnn_cmd("train", "--out", str(tmp_path / "file" / "run"))
    _one_line_error(proc, f"cannot create run folder {tmp_path / 'file' / 'run'}")
    assert proc.stdout == ""  # not one epoch (nor the thread line) before the refusal


def test_bench_runs_only_the_projects_benchmarks(tmp_path, monkeypatch, evsnn_cmd):
    planted = tmp_path / "benchmarks"
    planted.mkdir()
    marker = tmp_path / "executed"
    for name in ("planted", "alif"):
        (planted / f"{name}.py").write_text(f"open({str(marker)!r}, 'w').write('{name}')\n")
    monkeypatch.chdir(tmp_path)
    ran: list[list[str]] = []
    monkeypatch.setattr(cli.subprocess, "call", lambda argv, cwd: ran.append(list(argv)) or 0)
    _one_line_error(evsnn_cmd("bench", "planted"), f"no benchmark named planted in {ROOT / 'benchmarks'}")
    listed = evsnn_cmd("bench", "--list").stdout.split()
    assert "planted" not in listed and listed == sorted(p.stem for p in (ROOT / "benchmarks").glob("[!_]*.py"))
    assert evsnn_cmd("bench", "alif").returncode == 0
    assert ran == [[sys.executable, str(ROOT / "benchmarks" / "alif.py")]]
    assert not marker.exists()


def _plot_folder(folder: Path, *, events=None, labels=None, history=None, metrics=None, ids=("a", "a")) -> Path:
    folder.mkdir()
    if metrics is None:
        rows = [{"epoch": 1, "loss": 2.0, "test_loss": 2.1, "accuracy": 0.3, "activity": 0.1}]
        metrics = {"history": rows if history is None else history, "run_id": ids[0]}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    ev = (torch.rand(6, 2, 5) < 0.3).float() if events is None else events
    saved = {
        "events": ev,
        "labels": torch.tensor([3, 1]) if labels is None else labels,
        "model": "alif",
        "run_id": ids[1],
    }
    torch.save(saved, folder / "events.pt")
    return folder


@pytest.mark.parametrize(
    "case, needle",
    [
        (dict(labels=torch.tensor([], dtype=torch.long)), "'labels' must be a non-empty 1-d tensor, got (0,)"),
        (dict(events=torch.zeros(6, 5)), "'events' must be a non-empty [T, samples, units] tensor, got shape (6, 5)"),
        (dict(events=torch.zeros(6, 0, 5)), "got shape (6, 0, 5)"),
        (dict(events=[1, 2]), "has no 'events' tensor"),
        (dict(history=["epoch 1"]), "a history row is not a dict of numbers"),
        (dict(history=[{"epoch": 1, "loss": "low"}]), "a history row is not a dict of numbers"),
        (dict(metrics=[1, 2]), "has no 'history' list"),
        (dict(ids=("a", "b")), "mixes files of different runs (metrics.json: a, events.pt: b)"),
    ],
)
def test_plot_rejects_corrupt_folders_in_one_line(tmp_path, evsnn_cmd, case, needle):
    from evsnn.train import load_run

    load_run(_plot_folder(tmp_path / "good"))  # the base folder is valid; only `case` breaks it
    proc = evsnn_cmd("plot", str(_plot_folder(tmp_path / "bad", **case)))
    _one_line_error(proc, needle)
    assert proc.returncode == 1


def test_plot_draws_a_valid_hand_made_folder(tmp_path, evsnn_cmd):
    folder = _plot_folder(tmp_path / "good")
    proc = evsnn_cmd("plot", str(folder))
    assert proc.returncode == 0 and proc.stdout.split() == [str(folder / "raster.png"), str(folder / "curves.png")]
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize(("fmt", "magic"), [("pdf", b"%PDF"), ("svg", b"<?xml"), ("eps", b"%!PS"), ("png", b"\x89PNG")])
def test_plot_writes_the_asked_format_size_and_dpi(tmp_path, evsnn_cmd, fmt, magic):
    folder = _plot_folder(tmp_path / "good")
    proc = evsnn_cmd("plot", str(folder), "--format", fmt, "--dpi", "200", "--size", "page")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(folder / f"raster.{fmt}"), str(folder / f"curves.{fmt}")]
    for name in ("raster", "curves"):
        assert (folder / f"{name}.{fmt}").read_bytes().startswith(magic)
    if fmt == "png":
        from PIL import Image

        with Image.open(folder / "curves.png") as image:
            assert image.size[0] == 7 * 200  # "page" is 7 in wide, at the asked dpi


def test_plot_refuses_an_unknown_format_in_one_line(tmp_path, evsnn_cmd):
    folder = _plot_folder(tmp_path / "good")
    _one_line_error(evsnn_cmd("plot", str(folder), "--format", "jpg"), "invalid choice")
    _one_line_error(evsnn_cmd("plot", str(folder), "--dpi", "0"), "positive integer")


def test_corrupt_shd_file_is_named(tmp_path, evsnn_cmd):
    import tonic  # noqa: F401  (the [dev] extra has it: a missing tonic fails this test)

    (tmp_path / "SHD").mkdir()
    for split in ("train", "test"):
        (tmp_path / "SHD" / f"shd_{split}.h5").write_bytes(b"not an HDF5 file" * 8)
    out = tmp_path / "run"
    proc = evsnn_cmd("train", "--data", "shd", "--data-dir", str(tmp_path), "--out", str(out))
    _one_line_error(proc, f"cannot read shd data from {tmp_path / 'SHD' / 'shd_train.h5'}: ")
    assert not out.exists()


def test_without_matplotlib_a_run_finishes_with_a_note(tmp_path, monkeypatch, evsnn_cmd, single_thread):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    out = tmp_path / "run"
    proc = evsnn_cmd("train", "--hidden", "16", "--epochs", "1", "--max-steps", "2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert f"metrics.json, checkpoint.pt and events.pt are in {out}" in proc.stdout
    assert "evsnn.plot needs matplotlib" in proc.stdout
    assert f"run folder: {out} (run.json, checkpoint.pt, metrics.json, events.pt)" in proc.stdout
    assert not (out / "raster.png").exists()


def test_closed_stdout_pipe_ends_quietly(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "evsnn",
            "train",
            "--hidden",
            "16",
            "--epochs",
            "3",
            "--max-steps",
            "6",
            "--out",
            str(tmp_path / "run"),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    first = proc.stdout.readline()  # like `evsnn train | head -1`
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141, err
    assert first.startswith("threads: ") and err == ""


def test_interrupt_keeps_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    # A test run started in the background of a non-interactive shell inherits SIGINT ignored, and
    # so would the trainer: give it the default disposition, as a terminal's Ctrl-C finds it.
    proc = subprocess.Popen(
        [sys.executable, "-m", "evsnn", "train", "--hidden", "16", "--epochs", "200", "--quiet", "--out", str(out)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        ckpt = out / "checkpoint.pt"
        # The first epoch includes numba compilation; on a loaded 2-core machine it took over 90 s.
        deadline = time.time() + 300
        while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert ckpt.exists(), "no checkpoint after the first epoch"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=180)
    finally:
        proc.kill()  # no 200-epoch run left behind when an assertion or the timeout fails the test
        proc.wait()
    assert proc.returncode == 130
    assert "interrupted; last checkpoint kept at" in err and "Traceback" not in err
    saved = torch.load(ckpt, weights_only=True)
    assert saved["epoch"] >= 1 and not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_global_batches_are_full_and_shared():
    a = _global_batches(10, 4, epoch=1, seed=0)
    assert [len(b) for b in a] == [4, 4]
    assert all(torch.equal(x, y) for x, y in zip(a, _global_batches(10, 4, epoch=1, seed=0)))
    assert not torch.equal(a[0], _global_batches(10, 4, epoch=2, seed=0)[0])


def test_config_validation():
    with pytest.raises(ValueError, match="unknown model"):
        TrainConfig(model="gru").validate()
    with pytest.raises(ValueError, match="hidden must be"):
        TrainConfig(hidden=0).validate()


@pytest.mark.parametrize("model", ["egru", "deltagru", "deltalstm"])
def test_other_models_train_a_few_steps(model, tmp_path):
    metrics = train(TrainConfig(model=model, hidden=16, epochs=1, max_steps=2, out=str(tmp_path)), progress=False)
    assert metrics["layers"][0]["layer"] == {"egru": "EGRU", "deltagru": "DeltaGRU", "deltalstm": "DeltaLSTM"}[model]
    assert (tmp_path / "raster.png").exists()
