"""Run folders of ``evsnn train``: one run per folder, every file atomic and tagged with the run's id,
nothing left half-written, every check that can run before training runs before it."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from evsnn import train as tr
from evsnn.train import RunFolder, RunFolderError, RunFolderInUse, SequenceClassifier, TrainConfig, atomic_write

ROOT = Path(__file__).resolve().parents[2]
TINY = dict(hidden=16, epochs=1, max_steps=2)


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")


def _tiny_run(out: Path, **kw) -> dict:
    return tr.train(TrainConfig(out=str(out), **{**TINY, **kw}), progress=False)


def _run_ids(folder: Path) -> dict[str, str]:
    return {
        "run.json": json.loads((folder / "run.json").read_text())["run_id"],
        "metrics.json": json.loads((folder / "metrics.json").read_text())["run_id"],
        "checkpoint.pt": torch.load(folder / "checkpoint.pt", weights_only=True)["run_id"],
        "events.pt": torch.load(folder / "events.pt", weights_only=True)["run_id"],
    }


def _temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_a_finished_run_is_never_overwritten(tmp_path, single_thread):
    out = tmp_path / "run"
    metrics = _tiny_run(out)
    ids = _run_ids(out)
    assert set(ids.values()) == {metrics["run_id"]}
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(RunFolderInUse, match=rf"run folder {out} already holds a run .*choose a new --out"):
        _tiny_run(out, seed=1)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # the old layout without run.json (a folder from an older evsnn) is refused as well
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "checkpoint.pt").write_bytes(b"old")
    with pytest.raises(RunFolderInUse, match="checkpoint.pt"):
        _tiny_run(legacy)
    assert (legacy / "checkpoint.pt").read_bytes() == b"old" and not (legacy / "run.json").exists()


def test_two_concurrent_runs_into_one_folder(tmp_path):
    out = tmp_path / "shared"
    cmd = [
        sys.executable,
        "-m",
        "evsnn",
        "train",
        "--hidden",
        "16",
        "--epochs",
        "2",
        "--max-steps",
        "4",
        "--quiet",
        "--out",
        str(out),
    ]
    procs = [
        subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [(p.wait(timeout=240), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 1], results
    _, _, err = next(r for r in results if r[0] == 1)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"evsnn: error: run folder {out} already holds a run"), err
    assert len(set(_run_ids(out).values())) == 1  # every file from the one run that owns the folder
    assert _temp_files(out) == []


def test_events_file_holds_a_copy_of_eight_samples(tmp_path, single_thread):
    out = tmp_path / "run"
    _tiny_run(out)
    saved = torch.load(out / "events.pt", weights_only=True)
    ev, labels = saved["events"], saved["labels"]
    # a saved slice would bring the storage of the whole test set (360 samples) along
    assert ev.untyped_storage().nbytes() == ev.numel() * ev.element_size()
    assert labels.untyped_storage().nbytes() == labels.numel() * labels.element_size()
    # the events are those of the checkpointed model on the first 8 test samples, recomputed here
    from evsnn.data import load_digits_sequences

    split = load_digits_sequences("rows", repeat=3, seed=0)
    model = SequenceClassifier("alif", 8, 16, 10)
    model.load_state_dict(torch.load(out / "checkpoint.pt", weights_only=True)["model"])
    x, y = split.test.tensors
    with torch.no_grad():
        _, events = model(x[:8].transpose(0, 1))
    assert ev.shape == (24, 8, 16) and torch.equal(ev, events) and torch.equal(labels, y[:8])


def test_every_write_is_atomic_and_a_failed_one_leaves_nothing(tmp_path, monkeypatch):
    target = tmp_path / "checkpoint.pt"
    atomic_write(target, b"epoch 1")
    umask = os.umask(0o022)
    os.umask(umask)
    assert target.read_bytes() == b"epoch 1" and oct(target.stat().st_mode & 0o777) == oct(0o666 & ~umask)

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", disk_full)  # the kernel reports a full disk when the data is flushed
    with pytest.raises(RunFolderError, match=rf"cannot write {target}: no space left on the device \(disk full\)"):
        atomic_write(target, b"epoch 2")
    assert target.read_bytes() == b"epoch 1"  # the previous epoch's file is intact
    assert _temp_files(tmp_path) == []


def test_file_size_limit_is_a_clear_error_and_leaves_no_temp_file(tmp_path, capsys, single_thread):
    # A real failing write: files may not grow beyond 16 KiB for a moment; the checkpoint is ~30 KB.
    import resource
    import signal

    from evsnn import cli

    out = tmp_path / "run"
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (16384, limits[1]))
    try:
        code = cli.main(["train", "--hidden", "32", "--epochs", "1", "--max-steps", "1", "--quiet", "--out", str(out)])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    assert code == 1
    assert capsys.readouterr().err.strip() == f"evsnn: error: cannot write {out / 'checkpoint.pt'}: File too large"
    assert not out.exists()  # no temporary file, and the claim of a run that saved nothing is given back


def test_unwritable_out_fails_before_any_data_or_epoch(tmp_path, monkeypatch):
    def no_data(config):
        raise AssertionError("the data was loaded although the run folder cannot be created")

    monkeypatch.setattr(tr, "load_data", no_data)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(RunFolderError, match=f"cannot create run folder {blocker / 'run'}"):
        _tiny_run(blocker / "run")


@pytest.mark.parametrize("existed", [False, True])
def test_a_run_that_ends_before_its_first_checkpoint_gives_the_folder_back(tmp_path, monkeypatch, existed):
    out = tmp_path / "run"
    if existed:
        out.mkdir()

    def interrupted(config):
        raise KeyboardInterrupt

    monkeypatch.setattr(tr, "load_data", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _tiny_run(out)
    assert (out.is_dir() and list(out.iterdir()) == []) if existed else not out.exists()


def test_default_folders_of_runs_started_in_the_same_second_differ(tmp_path, monkeypatch):
    monkeypatch.setattr(tr, "default_run_dir", lambda config: tmp_path / "alif-digits-20260101-000000")
    first, second = (tr._claim_run_folder(TrainConfig()) for _ in range(2))
    assert first.path.name == "alif-digits-20260101-000000"
    assert second.path.name == "alif-digits-20260101-000000-2"
    assert first.run_id != second.run_id


def test_claim_is_exclusive(tmp_path):
    a = RunFolder.claim(tmp_path, TrainConfig())
    with pytest.raises(RunFolderInUse, match="run.json"):
        RunFolder.claim(tmp_path, TrainConfig())
    assert json.loads((tmp_path / "run.json").read_text())["run_id"] == a.run_id


@pytest.mark.parametrize(
    "cores, load, current, processes, expected",
    [
        (2, 0.0, 2, 1, 1),
        (1, 0.0, 1, 1, 1),
        (16, 15.5, 16, 1, 1),
        (16, 4.0, 16, 1, 12),
        (16, 0.0, 8, 1, 8),
        (16, 0.0, 16, 4, 4),
        (8, 30.0, 8, 1, 1),
    ],
)
def test_thread_choice(cores, load, current, processes, expected):
    n, why = tr.choose_threads(cores, load, current, processes)
    assert n == expected and f"{cores} cores" in why


def test_train_says_which_threads_it_chose_and_restores_them(tmp_path, single_thread):
    lines: list[str] = []
    torch.set_num_threads(2)
    metrics = tr.train(TrainConfig(out=str(tmp_path / "a"), **TINY), log=lines.append)
    assert torch.get_num_threads() == 2
    expected, _ = tr.choose_threads(tr._usable_cores(), os.getloadavg()[0], 2)
    assert lines[0].startswith(f"threads: {metrics['threads']} (auto: ") and "--threads N to override" in lines[0]
    assert metrics["threads"] in (expected, max(1, expected - 1))  # the load may move between the two readings
    lines.clear()
    metrics = tr.train(TrainConfig(out=str(tmp_path / "b"), threads=1, **TINY), log=lines.append)
    assert lines[0] == "threads: 1 (--threads)" and metrics["threads"] == 1


def test_device_auto():
    assert TrainConfig().device == "auto"
    assert tr.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA GPU is visible"):
            tr.resolve_device("cuda")
    with pytest.raises(ValueError, match="device must be auto, cpu, cuda or cuda:N, got 'gpu0'"):
        TrainConfig(device="gpu0").validate()


def test_progress_bar_only_on_a_terminal(tmp_path, monkeypatch, capsys, single_thread):
    tr.train(TrainConfig(out=str(tmp_path / "piped"), **TINY), progress=True, log=lambda s: None)
    assert capsys.readouterr().err == ""  # stderr is not a terminal here: no bar, no carriage returns

    class Terminal:
        def __init__(self):
            self.text = ""

        def write(self, s: str) -> int:
            self.text += s
            return len(s)

        def flush(self) -> None:
            pass

        def isatty(self) -> bool:
            return True

    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    tr.train(TrainConfig(out=str(tmp_path / "tty"), **TINY), progress=True, log=lambda s: None)
    assert "epoch 1/1" in term.text and "batch" in term.text


def _interrupt_after_epoch_1(line: str) -> None:
    if line.startswith("epoch   1/"):  # logged right after epoch 1's checkpoint is on disk
        raise KeyboardInterrupt


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path, single_thread):
    settings = dict(hidden=16, epochs=2, batch_size=512)
    straight = tr.train(TrainConfig(out=str(tmp_path / "straight"), **settings), progress=False)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        tr.train(TrainConfig(out=str(out), **settings), log=_interrupt_after_epoch_1)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1 and not (out / "metrics.json").exists()
    with pytest.raises(RunFolderInUse, match="holds an unfinished run .*continue it with --resume"):
        tr.train(TrainConfig(out=str(out), **settings), progress=False)
    lines: list[str] = []
    resumed = tr.train(TrainConfig(out=str(out), **settings), log=lines.append, resume=True)
    assert f"resuming {out} after epoch 1 (step 2)" in lines
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    b = torch.load(out / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 4
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert resumed["accuracy"] == straight["accuracy"]
    drop_time = [{k: v for k, v in row.items() if k != "time_s"} for row in straight["history"]]
    assert [{k: v for k, v in row.items() if k != "time_s"} for row in resumed["history"]] == drop_time
    assert len(set(_run_ids(out).values())) == 1  # still the one run of the folder


def test_resume_refuses_what_it_cannot_continue(tmp_path, single_thread):
    with pytest.raises(RunFolderError, match="no interrupted run there"):
        tr.train(TrainConfig(out=str(tmp_path), **TINY), resume=True)
    finished = tmp_path / "finished"
    _tiny_run(finished)
    with pytest.raises(RunFolderError, match="its run has finished"):
        tr.train(TrainConfig(out=str(finished), **TINY), resume=True)
    running = RunFolder.claim(tmp_path / "running", TrainConfig(**TINY))  # holds the lock, like a live run
    running.save("checkpoint.pt", {"config": asdict(TrainConfig(**TINY)), "scheduler": {}, "history": []})
    with pytest.raises(RunFolderInUse, match="is being written by another running evsnn train"):
        tr.train(TrainConfig(out=str(running.path), **TINY), resume=True)
    running.close()
    with pytest.raises(ValueError, match="its run used hidden=16, this command asks hidden=32"):
        tr.train(TrainConfig(out=str(running.path), **{**TINY, "hidden": 32}), resume=True)
    with pytest.raises(ValueError, match="its run used adaptive=True, this command asks adaptive=False"):
        tr.train(TrainConfig(out=str(running.path), **{**TINY, "adaptive": False}), resume=True)
    # a checkpoint written before the option existed ran with its default: adaptive
    older = {k: v for k, v in asdict(TrainConfig(**TINY)).items() if k != "adaptive"}
    running = RunFolder.resume(running.path, TrainConfig(**TINY))[0]
    running.save("checkpoint.pt", {"config": older, "scheduler": {}, "history": []})
    running.close()
    with pytest.raises(ValueError, match="its run used adaptive=True, this command asks adaptive=False"):
        tr.train(TrainConfig(out=str(running.path), **{**TINY, "adaptive": False}), resume=True)


def test_a_diverging_run_stops_with_a_message(tmp_path, single_thread):
    # lr = 1e38 is a valid float32; one Adam step of that size makes the loss infinite at step 2
    out = tmp_path / "run"
    # Steps 2-4 are skipped (never applied); three in a row stop the run.
    with pytest.raises(
        RuntimeError,
        match=r"training diverged: the loss is inf at epoch 1, steps 2-4 \(3 in a row "
        r"skipped, none applied; lr 1e\+38; try",
    ):
        _tiny_run(out, lr=1e38, max_steps=6)
    assert not out.exists()  # nothing was saved, so the folder is given back
