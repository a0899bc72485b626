"""The delta-cell kernels (evsnn/cuda/delta.cu) compile through NVRTC without a GPU.

sm_80 and sm_90, float and double, GRU and LSTM, one-sample and 4-sample column tiles
(the two tiles the op uses); any error or warning fails.
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
@pytest.mark.parametrize("lstm", [0, 1])
def test_delta_kernels_compile(arch: str, scalar: str, lstm: int) -> None:
    for tile in (1, 4):
        rt.compile_check("delta.cu", arch, [f"-Dscalar_t={scalar}", f"-DDELTA_LSTM={lstm}", f"-DDELTA_BT={tile}"])


def test_delta_source_needs_scalar_t() -> None:
    with pytest.raises(rt.CompileError, match="scalar_t"):
        rt.compile_check("delta.cu", "90", ["-DDELTA_LSTM=0"])
