"""The delta-cell kernels (cuda/delta.cu) compile through NVRTC without a GPU.

sm_80 and sm_90, float and double, GRU and LSTM, one-sample and 4-sample column tiles
(the two tiles the op uses); any error or warning fails.
"""

from __future__ import annotations

import pytest
import torch

from evsnn.ops import cupy_runtime as rt
from evsnn.ops.delta.cuda import kernel_defines

try:
    from cupy_backends.cuda.libs import nvrtc  # noqa: F401

    NVRTC_REASON = None
except Exception as exc:  # pragma: no cover - CuPy missing on this machine
    NVRTC_REASON = f"NVRTC from CuPy is not importable ({type(exc).__name__}: {exc})"

pytestmark = pytest.mark.skipif(NVRTC_REASON is not None, reason=str(NVRTC_REASON))


@pytest.mark.parametrize("arch", ["80", "90"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("lstm", [False, True])
def test_delta_kernels_compile(arch: str, dtype: torch.dtype, lstm: bool) -> None:
    # Exactly the variants the op compiles (kernel_defines picks the chunk width per dtype/tile).
    for tile in (1, 4):
        rt.compile_check("delta.cu", arch, [rt.scalar_define(dtype), *kernel_defines(lstm, dtype, tile)])


def test_chunk_width_per_variant() -> None:
    # 48 KB of static shared memory: float 1-sample tile 4 columns/thread, double 4-sample tile 1.
    assert kernel_defines(False, torch.float32, 1)[-1] == "-DDELTA_PER=4"
    assert kernel_defines(False, torch.float32, 4)[-1] == "-DDELTA_PER=3"
    assert kernel_defines(True, torch.float64, 1)[-1] == "-DDELTA_PER=4"
    assert kernel_defines(True, torch.float64, 4)[-1] == "-DDELTA_PER=1"


def test_delta_source_needs_scalar_t() -> None:
    with pytest.raises(rt.CompileError, match="scalar_t"):
        rt.compile_check("delta.cu", "90", ["-DDELTA_LSTM=0"])
