"""Options of the evsnn command that must refuse what they cannot do, and bench's --dir.

In-process calls of ``cli.main``: each case stops before any training, so no subprocess and no
data is needed.
"""

from __future__ import annotations

import pytest

import evsnn.train
from evsnn import cli
from evsnn.train_config import TrainConfig


def _error(capsys, *args: str) -> tuple[int, str]:
    capsys.readouterr()
    code = cli.main(list(args))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("evsnn: error: "), err
    return code, lines[0]


def test_bench_runs_the_scripts_of_a_relative_two_part_dir(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "a" / "b"
    folder.mkdir(parents=True)
    marker = tmp_path / "ran.txt"
    (folder / "hello.py").write_text(f"open({str(marker)!r}, 'w').write('ok')\n")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["bench", "--dir", "a/b", "hello"]) == 0
    assert marker.read_text() == "ok"
    assert cli.main(["bench", "--dir", "a/b", "--list"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "hello"


@pytest.mark.parametrize("data", ["vowels", "ecg", "temporal", "mnist1d", "shd"])
@pytest.mark.parametrize("option", [("--encoding", "rate"), ("--repeat", "5"), ("--repeat", "3")])
def test_encoding_and_repeat_are_refused_for_data_without_an_encoding_step(capsys, tmp_path, data, option):
    # --repeat 3 is the default value, given explicitly: it still does nothing for these data sets.
    code, line = _error(
        capsys, "train", "--data", data, *option, "--data-dir", str(tmp_path), "--out", str(tmp_path / "run")
    )
    assert code == 2
    assert f"{option[0]} {option[1]} apply to the digits data" in line and f"--data {data}" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("data", ["digits", "digits-pixels", "digits-permuted"])
def test_encoding_and_repeat_are_accepted_for_the_digits(data):
    TrainConfig(data=data, encoding="rate", repeat=5).validate()


@pytest.mark.parametrize("field, value", [("encoding", "rate"), ("repeat", 5)])
def test_train_config_refuses_encoding_options_for_other_data(field, value):
    with pytest.raises(ValueError, match=f"{field}={value!r} apply to the digits data"):
        TrainConfig(data="vowels", **{field: value}).validate()


@pytest.mark.parametrize("device", ["meta", "mps", "xla", "cuda:x", "CPU", ""])
def test_devices_evsnn_cannot_train_on_are_refused(capsys, tmp_path, device):
    code, line = _error(capsys, "train", "--device", device, "--out", str(tmp_path / "run"))
    assert code == 2
    assert f"device must be auto, cpu, cuda or cuda:N, got {device!r}" in line
    with pytest.raises(ValueError, match="device must be auto, cpu, cuda or cuda:N"):
        TrainConfig(device=device).validate()
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_devices_evsnn_trains_on_pass_the_check(device):
    assert TrainConfig(device=device).validate().device == device


def test_tbptt_and_adaptation_options_reach_the_config(monkeypatch):
    seen = {}

    def fake_train(config, **kwargs):
        seen["config"] = config
        raise KeyboardInterrupt

    monkeypatch.setattr(evsnn.train, "train", fake_train)
    assert cli.main(["train", "--tbptt", "7", "--adaptation", "--quiet"]) == 130
    assert seen["config"].tbptt == 7 and seen["config"].adaptive is True
    assert cli.main(["train", "--no-adaptation", "--quiet"]) == 130
    assert seen["config"].tbptt is None and seen["config"].adaptive is False
    assert cli.main(["train", "--quiet"]) == 130
    assert seen["config"].adaptive is None  # the task's configuration, fixed by TrainConfig.validate
    assert (seen["config"].hidden, seen["config"].epochs) == (TrainConfig.hidden, TrainConfig.epochs)
    assert seen["config"].tbptt_update == "window"
    assert cli.main(["train", "--tbptt", "7", "--tbptt-update", "sequence", "--quiet"]) == 130
    assert (seen["config"].tbptt, seen["config"].tbptt_update) == (7, "sequence")


def test_ecg_takes_its_recipe_for_the_options_left_out(monkeypatch, tmp_path):
    seen = {}

    def fake_train(config, **kwargs):
        seen["config"] = config
        raise KeyboardInterrupt

    monkeypatch.setattr(evsnn.train, "train", fake_train)
    ecg = ["train", "--data", "ecg", "--data-dir", str(tmp_path), "--quiet"]
    assert cli.main(ecg) == 130
    config = seen["config"]
    assert (config.hidden, config.epochs, config.tbptt, config.tbptt_update) == (36, 100, 50, "window")
    assert cli.main([*ecg, "--hidden", "20", "--epochs", "3", "--tbptt", "0"]) == 130
    config = seen["config"]
    assert (config.hidden, config.epochs, config.tbptt) == (20, 3, None)  # 0: the whole sequence
