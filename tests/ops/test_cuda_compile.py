"""Every shared CUDA header and the EGRU kernels compile through NVRTC (no GPU needed).

NVRTC is the compiler CuPy uses at run time; the ``cupy-cuda13x`` wheel brings it. sm_80 and
sm_90, float and double; any error or warning fails (``compile_check`` raises on warnings).
The other families compile-check their own sources in ``tests/ops/test_cuda_compile_<family>.py``.
"""

from __future__ import annotations

import pytest

from evsnn.ops import cupy_runtime as rt

try:
    from cupy_backends.cuda.libs import nvrtc  # noqa: F401

    NVRTC_REASON = None
except Exception as exc:  # pragma: no cover - CuPy missing on this machine
    NVRTC_REASON = f"NVRTC from CuPy is not importable ({type(exc).__name__}: {exc})"

pytestmark = pytest.mark.skipif(NVRTC_REASON is not None, reason=str(NVRTC_REASON))


@pytest.mark.parametrize("arch", ["80", "90"])
@pytest.mark.parametrize("scalar", ["float", "double"])
def test_egru_kernels_compile(arch: str, scalar: str) -> None:
    # The two launch shapes the host uses: 1024 threads up to U=4, 512 threads for the largest tile.
    for units, threads in ((4, 1024), (16, 512)):
        rt.compile_check("egru.cu", arch, [f"-Dscalar_t={scalar}", f"-DEGRU_U={units}", f"-DEGRU_THREADS={threads}"])


def test_compile_check_rejects_errors_and_warnings(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(rt, "CUDA_DIR", tmp_path)
    (tmp_path / "bad.cu").write_text('#include "common.cuh"\nextern "C" __global__ void k() { undefined_name(); }\n')
    (tmp_path / "warn.cu").write_text('extern "C" __global__ void k(int* p) { int unused = 3; p[0] = 1; }\n')
    (tmp_path / "common.cuh").write_text((rt.Path(__file__).parents[2] / "cuda/common.cuh").read_text())
    with pytest.raises(rt.CompileError):
        rt.compile_check("bad.cu", "90", ["-Dscalar_t=float"])
    with pytest.raises(rt.CompileError, match="warning"):
        rt.compile_check("warn.cu", "90", ["-Dscalar_t=float"])


def test_common_header_requires_scalar_t(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(rt, "CUDA_DIR", tmp_path)
    (tmp_path / "common.cuh").write_text((rt.Path(__file__).parents[2] / "cuda/common.cuh").read_text())
    (tmp_path / "use.cu").write_text('#include "common.cuh"\n')
    with pytest.raises(rt.CompileError, match="scalar_t"):
        rt.compile_check("use.cu", "80")
