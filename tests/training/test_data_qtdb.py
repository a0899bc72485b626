"""QTDB ECG: the loader on tiny hand-written .mat files, its errors, and ``evsnn train --data ecg``.

The files are written here with scipy.io.savemat, with the real files' field names and dtypes
(x int16 [N, T, 4], y uint8 one-hot [N, T, 6], t uint16 [N, T], max_i uint16 [N, 1]); the real
data (../shared/data/qtdb) is never needed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
import torch.nn.functional as F

from evsnn import cli
from evsnn.data import QTDBSplit, load_qtdb
from evsnn.train import PerStepALIF, TrainConfig, train

STEPS = 14


def _one_hot(labels: list[list[int]]) -> np.ndarray:
    """One-hot uint8 [N, T, 6]; a label of -1 leaves the step's row all zero (unlabelled)."""
    y = np.zeros((len(labels), len(labels[0]), 6), dtype=np.uint8)
    for n, row in enumerate(labels):
        for t, c in enumerate(row):
            if c >= 0:
                y[n, t, c] = 1
    return y


def _write(folder: Path, name: str, x: np.ndarray, labels: list[list[int]]) -> None:
    n, t, _ = x.shape
    scipy.io.savemat(
        folder / name,
        {
            "x": x.astype(np.int16),
            "y": _one_hot(labels),
            "t": np.tile(np.arange(t, dtype=np.uint16), (n, 1)),
            "max_i": np.full((n, 1), t, dtype=np.uint16),
        },
    )


# Two training traces and one test trace with hand-chosen content.
TRAIN_X = np.array(
    [
        [[1, 0, -1, 0]] * 7 + [[0, 1, 0, -1]] * 7,
        [[-1, -1, 1, 1]] * 14,
    ]
)
TRAIN_LABELS = [
    [-1, -1, 5, 5, 4, 4, 4, 1, 1, 2, 2, 3, 3, 0],  # first two steps unlabelled -> class 0 (np.argmax)
    [4] * 7 + [5] * 7,
]
TEST_X = np.array([[[0, 0, 1, 1]] * 14])
TEST_LABELS = [[2] * 5 + [3] * 5 + [-1] * 4]


@pytest.fixture
def qtdb_dir(tmp_path: Path) -> Path:
    _write(tmp_path, "QTDB_train.mat", TRAIN_X, TRAIN_LABELS)
    _write(tmp_path, "QTDB_test.mat", TEST_X, TEST_LABELS)
    return tmp_path


def test_loader_returns_float_inputs_and_per_step_labels(qtdb_dir):
    split = load_qtdb(qtdb_dir)
    assert isinstance(split, QTDBSplit)
    assert (split.n_features, split.n_classes, split.steps) == (4, 6, STEPS)
    x, y = split.train.tensors
    assert x.dtype == torch.float32 and x.shape == (2, STEPS, 4)
    assert y.dtype == torch.int64 and y.shape == (2, STEPS)
    assert torch.equal(x, torch.tensor(TRAIN_X, dtype=torch.float32))
    assert y[0].tolist() == [0, 0, 5, 5, 4, 4, 4, 1, 1, 2, 2, 3, 3, 0]
    assert y[1].tolist() == [4] * 7 + [5] * 7
    xt, yt = split.test.tensors
    assert torch.equal(xt, torch.tensor(TEST_X, dtype=torch.float32))
    assert yt[0].tolist() == [2] * 5 + [3] * 5 + [0] * 4
    sample_x, sample_y = split.test[0]
    assert sample_x.shape == (STEPS, 4) and sample_y.shape == (STEPS,)


def test_missing_folder_and_files_say_where_the_data_comes_from(tmp_path):
    nowhere = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as err:
        load_qtdb(nowhere)
    msg = str(err.value)
    assert str(nowhere) in msg and "does not exist" in msg
    assert "github.com/byin-cwi/Efficient-spiking-networks" in msg and "data/" in msg and "MIT" in msg
    assert "never downloads" in msg
    _write(tmp_path, "QTDB_train.mat", TRAIN_X, TRAIN_LABELS)
    with pytest.raises(FileNotFoundError, match="QTDB_test.mat is missing") as err:
        load_qtdb(tmp_path)
    assert "github.com/byin-cwi/Efficient-spiking-networks" in str(err.value)


def test_malformed_files_are_refused_with_what_was_expected(tmp_path):
    scipy.io.savemat(tmp_path / "QTDB_train.mat", {"x": TRAIN_X.astype(np.int16)})
    _write(tmp_path, "QTDB_test.mat", TEST_X, TEST_LABELS)
    with pytest.raises(ValueError, match="no field 'y'"):
        load_qtdb(tmp_path)
    y = _one_hot(TRAIN_LABELS)
    y[0, 3, 0] = 1  # two classes at one step
    scipy.io.savemat(tmp_path / "QTDB_train.mat", {"x": TRAIN_X.astype(np.int16), "y": y})
    with pytest.raises(ValueError, match="one-hot"):
        load_qtdb(tmp_path)
    scipy.io.savemat(tmp_path / "QTDB_train.mat", {"x": TRAIN_X[:, :5].astype(np.int16), "y": _one_hot(TRAIN_LABELS)})
    with pytest.raises(ValueError, match=r"x \[N, T, F\]"):
        load_qtdb(tmp_path)


def test_per_step_model_loss_and_accuracy_are_the_recipes(single_thread):
    """Loss: nn.NLLLoss (mean over the batch) of log_softmax(membrane) at each step t >= 10,
    summed over steps, as Yin et al.'s loop; accuracy over the same steps."""
    model = PerStepALIF(4, 8, 6, backend="torch")
    x = torch.tensor(TRAIN_X, dtype=torch.float32).transpose(0, 1)
    y = torch.tensor([[0, 0, 5, 5, 4, 4, 4, 1, 1, 2, 2, 3, 3, 0], [4] * 7 + [5] * 7])
    log_probs, spikes = model(x)
    assert log_probs.shape == (STEPS, 2, 6) and spikes.shape == (STEPS, 2, 8)
    v, _ = model.readout(spikes)
    torch.testing.assert_close(log_probs, F.log_softmax(v, -1))
    expected = sum(F.nll_loss(log_probs[t], y[:, t]) for t in range(10, STEPS))
    torch.testing.assert_close(model.loss(log_probs, y), expected)
    pred = log_probs.argmax(-1)
    correct = sum(int((pred[t] == y[:, t]).sum()) for t in range(10, STEPS))
    assert model.hits(log_probs, y) == (correct, 2 * (STEPS - 10))


def test_per_step_model_initialisation_and_learning_rates():
    model = PerStepALIF(4, 36, 6, adaptive=False)
    w = model.layer.weight_hh.detach()
    torch.testing.assert_close(w @ w.t(), torch.eye(36), atol=1e-5, rtol=0)  # orthogonal
    for b in (model.layer.bias_ih, model.layer.bias_hh, model.readout.bias_ih):
        assert torch.count_nonzero(b) == 0
    assert torch.all(model.layer.tau_mem == 20) and torch.all(model.layer.tau_adapt == 7)
    assert torch.all(model.readout.tau_mem == 20) and torch.all(model.readout.tau_adapt == 100)
    assert torch.all(model.layer.beta == 0) and torch.all(model.readout.beta == 1.8)
    groups = model.param_groups(0.01)
    rates = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert len(rates) == len(list(model.parameters()))
    assert rates[id(model.layer.tau_mem)] == pytest.approx(0.03)
    assert rates[id(model.readout.tau_adapt)] == pytest.approx(0.02)
    assert rates[id(model.layer.weight_hh)] == pytest.approx(0.01)


def test_train_ecg_end_to_end_on_tiny_files(qtdb_dir, tmp_path, single_thread):
    out = tmp_path / "run"
    config = TrainConfig(
        model="alif",
        data="ecg",
        data_dir=str(qtdb_dir),
        hidden=6,
        epochs=2,
        batch_size=2,
        backend="torch",
        out=str(out),
        threads=1,
    )
    metrics = train(config, progress=False)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["accuracy"] == metrics["accuracy"]
    # one test trace, steps 10..13 counted: the accuracy is a multiple of 1/4
    assert metrics["accuracy"] * 4 == pytest.approx(round(metrics["accuracy"] * 4))
    assert len(metrics["history"]) == 2
    events = torch.load(out / "events.pt", weights_only=True)
    assert events["events"].shape == (STEPS, 1, 6)
    assert events["step_labels"].tolist() == [[2] * 5 + [3] * 5 + [0] * 4]


def test_cli_ecg_errors_name_the_source(tmp_path, capsys):
    def error(*args: str) -> str:
        capsys.readouterr()
        assert cli.main(list(args)) != 0
        return capsys.readouterr().err

    msg = error("train", "--data", "ecg", "--data-dir", str(tmp_path / "nowhere"))
    assert "does not exist" in msg and "github.com/byin-cwi/Efficient-spiking-networks" in msg
    assert "github.com/byin-cwi/Efficient-spiking-networks" in error("train", "--data", "ecg")
    assert "--model alif" in error("train", "--data", "ecg", "--data-dir", str(tmp_path), "--model", "egru")
    assert "QTDB_train.mat is missing" in error(
        "train", "--data", "ecg", "--data-dir", str(tmp_path), "--out", str(tmp_path / "run")
    )


@pytest.mark.parametrize(
    "content", [b"", b"MATLAB 5.0 MAT-file" + b"\0" * 40, b"x,y\n1,2\n"], ids=["empty", "truncated", "not-mat"]
)
def test_damaged_files_are_refused_naming_the_file(qtdb_dir, content):
    (qtdb_dir / "QTDB_test.mat").write_bytes(content)
    with pytest.raises(ValueError, match="is not a readable MATLAB .mat file") as err:
        load_qtdb(qtdb_dir)
    assert str(qtdb_dir / "QTDB_test.mat") in str(err.value)


def test_a_real_file_cut_short_is_refused_naming_the_file(qtdb_dir):
    whole = (qtdb_dir / "QTDB_train.mat").read_bytes()
    (qtdb_dir / "QTDB_train.mat").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match="is not a readable MATLAB .mat file") as err:
        load_qtdb(qtdb_dir)
    assert str(qtdb_dir / "QTDB_train.mat") in str(err.value)


def test_a_file_without_traces_is_refused_at_load_time(qtdb_dir):
    scipy.io.savemat(
        qtdb_dir / "QTDB_test.mat", {"x": np.zeros((0, STEPS, 4), np.int16), "y": np.zeros((0, STEPS, 6), np.uint8)}
    )
    with pytest.raises(ValueError, match="holds no traces") as err:
        load_qtdb(qtdb_dir)
    assert "QTDB_test.mat" in str(err.value)


def test_traces_shorter_than_the_warm_up_are_refused_before_training(qtdb_dir, tmp_path, single_thread):
    short = 8
    _write(qtdb_dir, "QTDB_train.mat", TRAIN_X[:, :short], [row[:short] for row in TRAIN_LABELS])
    _write(qtdb_dir, "QTDB_test.mat", TEST_X[:, :short], [row[:short] for row in TEST_LABELS])
    assert load_qtdb(qtdb_dir).steps == short  # no use named: any length is data
    with pytest.raises(ValueError, match="traces of 8 steps; expected at least 11") as err:
        load_qtdb(qtdb_dir, min_steps=11)
    assert "QTDB_train.mat" in str(err.value)
    config = TrainConfig(
        data="ecg",
        data_dir=str(qtdb_dir),
        hidden=6,
        epochs=1,
        batch_size=2,
        backend="torch",
        out=str(tmp_path / "run"),
        threads=1,
    )
    with pytest.raises(ValueError, match="traces of 8 steps; expected at least 11"):
        train(config, progress=False)
    assert not (tmp_path / "run").exists()


def test_ecg_defaults_to_the_published_network_lif_hidden_adaptive_readout(qtdb_dir, tmp_path, single_thread):
    """Yin et al.'s ECG network: non-adaptive hidden layer (β = 0), adaptive readout; β = 1.8 in
    the hidden layer is the extension, asked for with adaptive=True (--adaptation)."""
    betas = {}
    for adaptive in (None, True):
        out = tmp_path / f"run-{adaptive}"
        config = TrainConfig(
            data="ecg",
            data_dir=str(qtdb_dir),
            hidden=6,
            epochs=1,
            batch_size=2,
            backend="torch",
            out=str(out),
            threads=1,
            adaptive=adaptive,
        )
        metrics = train(config, progress=False)
        state = torch.load(out / "checkpoint.pt", weights_only=True)["model"]
        betas[adaptive] = (
            float(state["layer.beta"].max()),
            float(state["readout.beta"].min()),
            metrics["config"]["adaptive"],
        )
    assert betas[None] == (0.0, pytest.approx(1.8), False)
    assert betas[True] == (pytest.approx(1.8), pytest.approx(1.8), True)


def test_reproduce_ecg_runs_the_published_network_by_default(qtdb_dir, tmp_path, load_example, capsys, single_thread):
    example = load_example("reproduce_ecg")
    out = tmp_path / "runs"
    example.main(
        [
            "--data-dir",
            str(qtdb_dir),
            "--out",
            str(out),
            "--epochs",
            "1",
            "--hidden",
            "6",
            "--batch-size",
            "2",
            "--seeds",
            "0",
            "--backend",
            "torch",
        ]
    )
    printed = capsys.readouterr().out.splitlines()
    summary = json.loads("\n".join(printed[printed.index("{") :]))  # after the runs' progress lines
    assert list(summary) == ["lif"] and summary["lif"]["configuration"] == "published network"
    assert summary["lif"]["published"] == pytest.approx(0.859)
    state = torch.load(out / "lif-seed0" / "checkpoint.pt", weights_only=True)
    assert state["config"]["adaptive"] is False
    assert float(state["model"]["layer.beta"].abs().max()) == 0.0
    assert float(state["model"]["readout.beta"].min()) == pytest.approx(1.8)


def test_ecg_gradient_norms_at_the_full_window_are_plain_autograd(qtdb_dir, tmp_path, load_example, single_thread):
    """examples/ecg_gradient_norms.py: with a window as long as the trace it gives the norm of the
    plain full-BPTT gradient of the saved network's loss; a shorter window gives another one."""
    from evsnn.train import TrainConfig, train

    run = tmp_path / "run"
    config = TrainConfig(
        model="alif", data="ecg", data_dir=str(qtdb_dir), hidden=6, epochs=1, batch_size=2, seed=0,
        backend="torch", out=str(run), threads=1, adaptive=True,
    )  # fmt: skip
    train(config, progress=False)
    example = load_example("ecg_gradient_norms")
    norms = example.gradient_norms(run, str(qtdb_dir), [3, STEPS], batches=1, batch_size=2)

    state = torch.load(run / "checkpoint.pt", weights_only=True)
    model = PerStepALIF(4, 6, 6, adaptive=True, backend="torch")
    model.load_state_dict(state["model"])
    x, y = load_qtdb(qtdb_dir).train.tensors
    order = torch.randperm(2, generator=torch.Generator().manual_seed(0))
    log_probs, _ = model(x[order].transpose(0, 1))
    model.loss(log_probs, y[order]).backward()
    full = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).norm().item()
    assert norms[STEPS] == [pytest.approx(full, rel=1e-5)]
    assert norms[3][0] != pytest.approx(full, rel=1e-3)
