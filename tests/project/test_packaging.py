"""The CUDA kernel sources live in the top-level ``cuda/`` and are found from both install layouts.

- Editable install / source checkout: :data:`evsnn.ops.cupy_runtime.CUDA_DIR` is ``cuda/`` and
  every source it serves equals the file there.
- Built wheel: the wheel carries every ``cuda/*.cu`` and ``*.cuh`` (as ``evsnn/_cuda_src/``), and
  evsnn imported from the unpacked wheel (not from this checkout) reads its sources from there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from evsnn.ops import cupy_runtime as rt

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted(p for p in (ROOT / "cuda").iterdir() if p.suffix in (".cu", ".cuh"))


def test_checkout_has_the_kernel_sources_at_the_top_level() -> None:
    names = {p.name for p in SOURCES}
    assert {"alif.cu", "egru.cu", "delta.cu", "delta.cuh", "common.cuh"} <= names
    assert not (ROOT / "evsnn" / "cuda").exists()


def test_editable_install_reads_the_top_level_sources() -> None:
    assert rt.CUDA_DIR.resolve() == (ROOT / "cuda").resolve()
    for path in SOURCES:
        assert (rt.CUDA_DIR / path.name).read_bytes() == path.read_bytes()
    # kernel_source inlines the local includes: delta.cu pulls in delta.cuh and common.cuh.
    text = rt.kernel_source("delta.cu")
    assert "// begin delta.cuh" in text and "// begin common.cuh" in text


@pytest.mark.slow
def test_built_wheel_ships_and_finds_every_source(tmp_path: Path) -> None:
    # Built from a copy: setuptools reuses an in-tree build/ folder, stale files included.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("evsnn", "cuda"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "wheel"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q", "-w", str(out)],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    (wheel,) = out.glob("evsnn-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        shipped = {n for n in zf.namelist() if n.startswith("evsnn/_cuda_src/")}
        assert shipped == {f"evsnn/_cuda_src/{p.name}" for p in SOURCES}
        for path in SOURCES:
            assert zf.read(f"evsnn/_cuda_src/{path.name}") == path.read_bytes()
        site = tmp_path / "site"
        zf.extractall(site)
    # Import evsnn from the unpacked wheel in a fresh interpreter, away from this checkout.
    probe = (
        "import evsnn, evsnn.ops.cupy_runtime as rt; "
        "print(evsnn.__file__); print(rt.CUDA_DIR); print(len(rt.kernel_source('delta.cu')))"
    )
    # -S: no .pth files, so setuptools' editable finder for this checkout is not installed; torch and
    # numpy still come from this interpreter's paths (the checkout itself left out).
    paths = [p for p in sys.path if p and Path(p).resolve() != ROOT]
    env = {**os.environ, "PYTHONPATH": str(site), "PYTHONNOUSERSITE": "1"}
    res = subprocess.run(
        [sys.executable, "-S", "-c", f"import sys; sys.path.extend({paths!r}); {probe}"],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    module_file, cuda_dir, length = res.stdout.split()
    assert Path(module_file).is_relative_to(site)
    assert Path(cuda_dir) == site / "evsnn" / "_cuda_src"
    assert int(length) > (ROOT / "cuda" / "delta.cu").stat().st_size


_NO_SOURCES_SCRIPT = """
import torch
import evsnn
from evsnn.ops import cupy_runtime as rt
torch.set_num_threads(1)
out, _ = evsnn.EGRU(3, 8)(torch.randn(4, 2, 3))
print("cpu", tuple(out.shape), evsnn.__file__.startswith({root!r}))
try:
    rt.kernel_source("egru.cu")
except FileNotFoundError as err:
    print("missing", err)
"""


def test_a_copy_without_kernel_sources_runs_on_the_cpu_and_names_them_when_asked(tmp_path) -> None:
    """The CUDA sources are looked for only when a kernel is compiled: a package copied without
    them (no _cuda_src, no cuda/ beside it) still imports and runs the CPU backends, and asking
    for a source names both places it is looked for."""
    shutil.copytree(ROOT / "evsnn", tmp_path / "evsnn", ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "OMP_NUM_THREADS": "1"}
    script = _NO_SOURCES_SCRIPT.format(root=str(tmp_path))
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "cpu (4, 2, 8) True"
    assert lines[1].startswith("missing ") and "_cuda_src" in lines[1] and str(tmp_path / "cuda") in lines[1]
