"""evsnn train's loop: truncated BPTT (--tbptt, --tbptt-update), skipped non-finite steps,
non-finite inputs.

The ECG task (per-step loss) runs on tiny QTDB files written here; the oracles are the
untruncated loop (a window as long as the trace), truncated loops written out by hand with the
layers' own calls (one step per batch, or an SGD step after every window), and the untouched
initial weights for a step that must not be applied.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
import torch.nn.functional as F

import evsnn.train as tr
from evsnn.train import PerStepALIF, TrainConfig

STEPS, N_TRAIN = 23, 4


def _write(folder: Path, name: str, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 6, size=(n, STEPS))
    y = np.zeros((n, STEPS, 6), np.uint8)
    np.put_along_axis(y, labels[..., None], 1, axis=-1)
    scipy.io.savemat(folder / name, {"x": rng.integers(-2, 3, size=(n, STEPS, 4)).astype(np.int16), "y": y})


@pytest.fixture
def qtdb_dir(tmp_path: Path) -> Path:
    _write(tmp_path, "QTDB_train.mat", N_TRAIN, 0)
    _write(tmp_path, "QTDB_test.mat", 2, 1)
    return tmp_path


def _ecg(qtdb_dir: Path, out: Path, **kw) -> TrainConfig:
    options = dict(
        data="ecg",
        data_dir=str(qtdb_dir),
        hidden=8,
        epochs=1,
        batch_size=2,
        backend="torch",
        out=str(out),
        threads=1,
        adaptive=True,
    )
    return TrainConfig(**{**options, **kw})


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "checkpoint.pt", weights_only=True)["model"]


def test_tbptt_window_as_long_as_the_trace_is_the_untruncated_run(qtdb_dir, tmp_path, single_thread):
    runs = {}
    for name, k in (("full", None), ("same", STEPS), ("longer", 100), ("short", 5)):
        tr.train(_ecg(qtdb_dir, tmp_path / name, tbptt=k), progress=False)
        runs[name] = _weights(tmp_path / name)
    for name in ("same", "longer"):
        assert all(torch.equal(runs[name][key], runs["full"][key]) for key in runs["full"])
    assert not all(torch.equal(runs["short"][key], runs["full"][key]) for key in runs["full"])
    metrics = json.loads((tmp_path / "short" / "metrics.json").read_text())
    assert metrics["config"]["tbptt"] == 5 and metrics["skipped_steps"] == 0


def _hand_truncated_gradients(model: PerStepALIF, x: torch.Tensor, y: torch.Tensor, k: int) -> list[torch.Tensor]:
    """The ECG loss of the whole trace on windows of k steps, each window starting from the
    previous one's state with every field detached by hand; one backward at the end."""
    model.zero_grad()
    outputs, hidden, readout = [], None, None
    for start in range(0, x.shape[0], k):
        spikes, hidden = model.layer(x[start : start + k], hidden)
        v, readout = model.readout(spikes, readout)
        outputs.append(F.log_softmax(v, dim=-1))
        hidden = type(hidden)(*(t.detach() for t in hidden))
        readout = type(readout)(*(t.detach() for t in readout))
    model.loss(torch.cat(outputs), y).backward()
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("k", [1, 4, 9])
def test_tbptt_gradient_is_the_hand_written_truncated_loop(k):
    torch.manual_seed(3)
    model = PerStepALIF(4, 8, 6, adaptive=True, backend="torch")
    x = torch.randint(-2, 3, (STEPS, 3, 4)).float()
    y = torch.randint(0, 6, (3, STEPS))
    expected = _hand_truncated_gradients(model, x, y, k)
    model.zero_grad()
    [(loss, _)] = list(tr._gradients(model, model, x, y, k, "sequence"))
    full = model.loss(model(x)[0], y)
    # float32: the same terms, backpropagated window by window instead of in one pass, so the
    # sums of the gradient contributions run in another order (a few float32 ulp).
    assert loss == pytest.approx(float(full.detach()), rel=1e-5)
    for p, e in zip(model.parameters(), expected):
        torch.testing.assert_close(p.grad, e, rtol=1e-4, atol=1e-6)


def _hand_window_updates(model: PerStepALIF, x: torch.Tensor, y: torch.Tensor, k: int, lr: float) -> list[float]:
    """Truncated BPTT as Williams & Peng (and Yin et al.'s scripts) run it: each window's part of
    the ECG loss is backpropagated and an SGD step taken before the next window runs, from the
    previous window's state detached by hand. Returns the losses of the windows that hold one."""
    losses, hidden, readout = [], None, None
    for start in range(0, x.shape[0], k):
        spikes, hidden = model.layer(x[start : start + k], hidden)
        v, readout = model.readout(spikes, readout)
        log_probs = F.log_softmax(v, dim=-1)
        hidden = type(hidden)(*(t.detach() for t in hidden))
        readout = type(readout)(*(t.detach() for t in readout))
        first = max(model.warmup - start, 0)
        if first >= log_probs.shape[0]:
            continue
        target = y.t()[start + first : start + log_probs.shape[0]]
        loss = F.nll_loss(log_probs[first:].reshape(-1, 6), target.reshape(-1), reduction="sum") / y.shape[0]
        model.zero_grad()
        loss.backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= lr * p.grad
        losses.append(float(loss.detach()))
    return losses


@pytest.mark.parametrize("k", [1, 4, 9])
def test_tbptt_window_updates_are_the_hand_written_online_loop(k):
    torch.manual_seed(3)
    x = torch.randint(-2, 3, (STEPS, 3, 4)).float()
    y = torch.randint(0, 6, (3, STEPS))
    model = PerStepALIF(4, 8, 6, adaptive=True, backend="torch")
    hand = PerStepALIF(4, 8, 6, adaptive=True, backend="torch")
    hand.load_state_dict(model.state_dict())
    expected = _hand_window_updates(hand, x, y, k, lr=0.05)
    losses = []
    model.zero_grad()
    for loss, _ in tr._gradients(model, model, x, y, k, "window"):
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.05 * p.grad
        model.zero_grad()
        losses.append(loss)
    # Windows wholly inside the warm-up hold no loss term and make no step.
    windows_with_loss = sum(1 for start in range(0, STEPS, k) if min(start + k, STEPS) > model.warmup)
    assert len(losses) == len(expected) == windows_with_loss
    assert losses == pytest.approx(expected, rel=1e-5)
    for (name, p), e in zip(model.named_parameters(), hand.parameters()):
        torch.testing.assert_close(p, e, rtol=1e-5, atol=1e-6, msg=name)


def test_window_updates_make_one_optimiser_step_per_window_with_a_loss(qtdb_dir, tmp_path, single_thread):
    # 23 steps in windows of 5: [0, 5) and [5, 10) lie in the 10-step warm-up; 3 windows step.
    config = _ecg(qtdb_dir, tmp_path / "run", tbptt=5, epochs=2)
    tr.train(config, progress=False)
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    batches = N_TRAIN // config.batch_size
    assert state["step"] == 2 * batches * 3
    assert state["scheduler"]["total_steps"] == state["step"]
    sequence = _ecg(qtdb_dir, tmp_path / "seq", tbptt=5, epochs=2, tbptt_update="sequence")
    tr.train(sequence, progress=False)
    assert torch.load(tmp_path / "seq" / "checkpoint.pt", weights_only=False)["step"] == 2 * batches


def test_tbptt_update_is_checked():
    with pytest.raises(ValueError, match="tbptt_update must be one of window, sequence, got 'batch'"):
        TrainConfig(tbptt=5, tbptt_update="batch").validate()
    with pytest.raises(ValueError, match="it needs a window, tbptt"):
        TrainConfig(tbptt_update="sequence").validate()


def test_tbptt_on_a_sequence_classifier_trains_the_last_window_only(single_thread):
    # The digits loss is on the last step's readout: windows before the last carry no loss term.
    config = TrainConfig(hidden=8, tbptt=4).validate()
    model = tr.build_model(config, 8, 10)
    x, y = torch.rand(24, 5, 8), torch.randint(0, 10, (5,))
    [(loss, _)] = list(tr._gradients(model, model, x, y, 4, "window"))
    torch.testing.assert_close(torch.tensor(loss), model.loss(model(x)[0], y).detach(), rtol=1e-5, atol=1e-6)
    assert model.layer.weight_ih.grad is not None


def test_a_nan_gradient_step_is_skipped_reported_and_never_applied(qtdb_dir, tmp_path, monkeypatch, single_thread):
    build = tr.build_model
    poisoned = {"left": 1}

    def build_with_a_nan_first_gradient(config, n_features, n_classes):
        model = build(config, n_features, n_classes)

        def poison(grad: torch.Tensor) -> torch.Tensor:
            if poisoned["left"]:
                poisoned["left"] -= 1
                return torch.full_like(grad, float("nan"))
            return grad

        model.readout.weight_ih.register_hook(poison)
        return model

    monkeypatch.setattr(tr, "build_model", build_with_a_nan_first_gradient)
    messages: list[str] = []
    out = tmp_path / "run"
    metrics = tr.train(_ecg(qtdb_dir, out, max_steps=1), progress=False, log=messages.append)
    assert metrics["skipped_steps"] == 1
    assert json.loads((out / "metrics.json").read_text())["skipped_steps"] == 1
    assert any("step 1 (epoch 1) skipped" in m and "gradient norm nan" in m for m in messages), messages
    torch.manual_seed(0)
    initial = build(_ecg(qtdb_dir, out), 4, 6).state_dict()
    after = _weights(out)
    assert all(torch.equal(after[key], initial[key]) for key in initial)  # the step was not applied


def test_a_nan_gradient_with_tbptt_is_skipped_too(qtdb_dir, tmp_path, monkeypatch, single_thread):
    build = tr.build_model

    def build_with_nan(config, n_features, n_classes):
        model = build(config, n_features, n_classes)
        model.layer.weight_hh.register_hook(lambda grad: torch.full_like(grad, float("nan")))
        return model

    monkeypatch.setattr(tr, "build_model", build_with_nan)
    messages: list[str] = []
    with pytest.raises(RuntimeError, match=r"steps 1-3 \(3 in a row skipped, none applied"):
        tr.train(_ecg(qtdb_dir, tmp_path / "run", tbptt=5, epochs=3), progress=False, log=messages.append)
    assert sum("skipped" in m for m in messages) == tr.MAX_NONFINITE_IN_A_ROW


def test_non_finite_inputs_are_refused_before_training(tmp_path, monkeypatch, single_thread):
    x = torch.rand(8, 5, 3)
    x[6, 2, 1] = float("nan")
    data = torch.utils.data.TensorDataset(x, torch.zeros(8, dtype=torch.int64))
    monkeypatch.setattr(tr, "load_data", lambda config: (data, data, 3, 2))
    with pytest.raises(ValueError, match="the training set's sample 6 holds a non-finite input value"):
        tr.train(TrainConfig(hidden=4, epochs=1, out=str(tmp_path / "run")), progress=False)
    assert not (tmp_path / "run").exists()


def test_tbptt_is_refused_for_variable_length_data():
    with pytest.raises(ValueError, match="tbptt needs sequences of one length"):
        TrainConfig(data="vowels", tbptt=5).validate()
