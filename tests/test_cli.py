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

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "evsnn", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env=env)


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
    _one_line_error(evsnn_cmd("train", "--data", "shd", "--data-dir", str(tmp_path), "--max-steps", "1"),
                    "never downloads")
    _one_line_error(evsnn_cmd("frobnicate"), "invalid choice")


def test_bench_errors_and_runs(tmp_path, evsnn_cmd):
    _one_line_error(evsnn_cmd("bench", "--dir", str(ROOT / "benchmarks"), "no_such_benchmark"),
                    "no benchmark named no_such_benchmark")
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


def test_interrupt_keeps_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "evsnn", "train", "--hidden", "16", "--epochs", "200", "--quiet",
                             "--out", str(out)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    ckpt = out / "checkpoint.pt"
    deadline = time.time() + 90
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert ckpt.exists(), "no checkpoint after the first epoch"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "interrupted; last checkpoint kept at" in err and "Traceback" not in err
    saved = torch.load(ckpt, weights_only=True)
    assert saved["epoch"] >= 1 and not (out / "checkpoint.pt.tmp").exists()


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
