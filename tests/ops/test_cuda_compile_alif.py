"""The ALIF kernel source compiles through NVRTC for sm_80 and sm_90, float and double, with no
warning — on any machine, GPU or not (CuPy's NVRTC bindings are enough)."""

from __future__ import annotations

import importlib.util

import pytest

from evsnn.ops.alif import cuda as alif_cuda

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("cupy") is None, reason='needs CuPy: pip install "evsnn[cuda13]"'
)


@pytest.mark.parametrize("arch", ["80", "90"])
@pytest.mark.parametrize("scalar", ["float", "double"])
def test_alif_kernels_compile(arch, scalar):
    from evsnn.ops.cupy_runtime import compile_check

    # The same options as at run time: scalar type and --fmad=false.
    compile_check(alif_cuda.SOURCE, arch, [f"-Dscalar_t={scalar}", *alif_cuda._DEFINES])


def test_compile_check_catches_an_error(tmp_path, monkeypatch):
    # The check above can fail: a broken copy of the source is rejected.
    from evsnn.ops import cupy_runtime as rt

    broken = tmp_path / "alif.cu"
    broken.write_text((rt.CUDA_DIR / "alif.cu").read_text().replace("alif_step(", "alif_stepp(", 1))
    for header in ("common.cuh", "alif.cuh"):
        (tmp_path / header).write_text((rt.CUDA_DIR / header).read_text())
    monkeypatch.setattr(rt, "CUDA_DIR", tmp_path)
    with pytest.raises(rt.CompileError):
        rt.compile_check("alif.cu", "90", ["-Dscalar_t=float", *alif_cuda._DEFINES])
