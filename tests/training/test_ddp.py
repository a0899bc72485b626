"""torchrun with 2 CPU processes (gloo) gives the same weights as one process on the same global batch."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import evsnn.train as train_mod

ROOT = Path(__file__).resolve().parents[2]
ARGS = [
    "train",
    "--hidden",
    "16",
    "--epochs",
    "1",
    "--max-steps",
    "3",
    "--batch-size",
    "32",
    "--quiet",
    "--threads",
    "1",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(shutil.which("torchrun") is None and not hasattr(torch.distributed, "run"), reason="no torchrun")
def test_two_processes_equal_one_process(tmp_path):
    if not torch.distributed.is_gloo_available():
        pytest.skip("this torch build has no gloo backend")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--nnodes=1",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        "-m",
        "evsnn",
        *ARGS,
        "--out",
        str(tmp_path / "ddp"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 processes" in proc.stdout

    single = train_mod.TrainConfig(
        hidden=16, epochs=1, max_steps=3, batch_size=32, threads=1, out=str(tmp_path / "one")
    )
    train_mod.train(single, progress=False)

    ddp = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=True)
    one = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=True)
    assert ddp["step"] == one["step"] == 3
    for name, w in one["model"].items():
        # equal up to the order of the float sums in gloo's all-reduce
        torch.testing.assert_close(ddp["model"][name], w, rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
    # the three steps really moved the weights away from the (seeded) initialisation, so the
    # equality above is that of two trained models, not of two untouched inits
    torch.manual_seed(0)
    fresh = train_mod.SequenceClassifier("alif", 8, 16, 10).state_dict()
    assert (fresh["layer.weight_ih"] - one["model"]["layer.weight_ih"]).abs().max() > 1e-3
    # and a single process on a HALF batch (what each rank saw) ends elsewhere: the all-reduce mattered
    half = train_mod.TrainConfig(hidden=16, epochs=1, max_steps=3, batch_size=16, threads=1, out=str(tmp_path / "half"))
    train_mod.train(half, progress=False)
    other = torch.load(tmp_path / "half" / "checkpoint.pt", weights_only=True)
    assert not torch.allclose(other["model"]["layer.weight_ih"], ddp["model"]["layer.weight_ih"], atol=1e-5)
