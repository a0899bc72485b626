"""Loads the CUDA sources of the top-level ``cuda/`` folder and launches them with CuPy on torch's stream.

- The sources (``cuda/*.cu``, ``*.cuh``) ship inside the wheel as ``evsnn/_cuda_src/`` (setup.py
  maps that package onto ``cuda/``); a source checkout or editable install reads ``cuda/`` itself
  (`CUDA_DIR`). Local ``#include "x.cuh"`` lines are inlined before compiling.
- Each (source, defines, device) is compiled once through NVRTC (``cupy.RawModule``) and cached
  in memory (CuPy also caches the binaries on disk).
- A launch passes raw device pointers (``numpy.uint64``) of torch tensors: no copies, no CuPy
  allocations, on ``torch.cuda.current_stream()`` under the tensors' device, and never
  synchronises with the host.
- A persistent kernel (one launch over all steps, blocks waiting on each other through a grid
  barrier or flags) deadlocks if some of its blocks are not resident while others wait:
  `launch_persistent` checks with the CUDA occupancy API that the whole grid fits on the
  device at once and otherwise raises `CoResidencyError` before launching. The check
  counts free SMs: kernels of other streams running at the same time are not accounted for.
- `compile_check` compiles a source through NVRTC for a given architecture WITHOUT a GPU
  (CI uses it on CPU machines): errors and warnings both fail.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..functional.precision import LOW_PRECISION
from .compile_marks import assume_constant_result

__all__ = [
    "CUDA_DIR",
    "CompileError",
    "kernel_source",
    "unavailable_reason",
    "get_kernel",
    "launch",
    "launch_persistent",
    "CoResidencyError",
    "coresidency_reason",
    "max_active_blocks_per_sm",
    "ptr",
    "i32",
    "f32",
    "f64",
    "scalar",
    "scalar_define",
    "sm_count",
    "compile_check",
    "surrogate_kernel_args",
    "low_precision_hint",
]


def _find_cuda_dir() -> Path:
    # A wheel holds the sources as package data of evsnn._cuda_src; an editable install or a checkout
    # keeps them in the repository's top-level cuda/ (a nested folder without __init__.py is not
    # importable through setuptools' editable finder, so it is found by path there). Not finding
    # them is reported when a kernel is compiled, not at import: the CPU backends do not need them.
    for candidate in _CUDA_DIR_CANDIDATES:
        if (candidate / "common.cuh").is_file():
            return candidate
    return _CUDA_DIR_CANDIDATES[-1]


_PACKAGE = Path(__file__).resolve().parent.parent
_CUDA_DIR_CANDIDATES = (_PACKAGE / "_cuda_src", _PACKAGE.parent / "cuda")
CUDA_DIR = _find_cuda_dir()
_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]+"([^"]+)"[ \t]*$', re.M)
_SCALAR = {torch.float32: "float", torch.float64: "double"}
BASE_OPTIONS = ("-std=c++17",)


class CompileError(RuntimeError):
    """NVRTC rejected a source (or warned, where warnings are errors)."""


def kernel_source(filename: str, _seen: frozenset[str] = frozenset()) -> str:
    """The text of ``cuda/<filename>`` (`CUDA_DIR`) with its local includes inlined (each once)."""
    path = CUDA_DIR / filename
    if not path.is_file():
        raise FileNotFoundError(
            f"CUDA source {filename!r} not found: evsnn's kernel sources are expected in "
            f"{_CUDA_DIR_CANDIDATES[0]} (installed wheel) or {_CUDA_DIR_CANDIDATES[1]} (source checkout)"
        )
    text = path.read_text()
    seen = _seen | {filename}

    def expand(match: re.Match) -> str:
        name = match.group(1)
        if name in seen:
            return f"// {name} already included"
        return f"// begin {name}\n{kernel_source(name, seen)}\n// end {name}"

    return _INCLUDE.sub(expand, text)


_PROBE: dict[str, str | None] = {}
CUPY_MISSING = 'CuPy is not installed: pip install "evsnn[cuda13]" (or "evsnn[cuda12]" for CUDA 12)'


# A constant for the life of the process: torch.compile calls it once while tracing and bakes in
# the answer instead of tracing a cached Python function.
@assume_constant_result
def unavailable_reason() -> str | None:
    """``None`` if CuPy and a CUDA GPU are usable here, else why not (with the install hint)."""
    if "reason" not in _PROBE:
        _PROBE["reason"] = _probe()
    return _PROBE["reason"]


def _probe() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible to PyTorch"
    if not (CUDA_DIR / "common.cuh").is_file():
        return (
            f"evsnn's CUDA kernel sources are missing (expected in {_CUDA_DIR_CANDIDATES[0]} or "
            f"{_CUDA_DIR_CANDIDATES[1]}): reinstall evsnn"
        )
    try:
        import cupy  # noqa: F401
    except ImportError:
        return CUPY_MISSING
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "CuPy sees no CUDA device"
    except Exception as exc:  # CuPy present but its CUDA runtime does not match the driver
        return f"CuPy cannot use the GPU ({type(exc).__name__}: {exc})"
    return None


def scalar_define(dtype: torch.dtype) -> str:
    if dtype not in _SCALAR:
        raise TypeError(f"the CuPy kernels support float32 and float64, got {dtype}")
    return f"-Dscalar_t={_SCALAR[dtype]}"


@functools.cache
def _module(filename: str, options: tuple[str, ...], device_index: int):
    # Every kernel is compiled here first: a scan called directly (not through dispatch, which
    # checks CuPy) on a machine without CuPy learns what to install, not just the module name.
    try:
        import cupy
    except ImportError as exc:
        raise ImportError(f"the {filename} kernels need CuPy. {CUPY_MISSING}") from exc

    with cupy.cuda.Device(device_index):
        return cupy.RawModule(code=kernel_source(filename), options=BASE_OPTIONS + options)


@functools.cache
def _kernel(filename: str, name: str, options: tuple[str, ...], device_index: int):
    import cupy

    with cupy.cuda.Device(device_index):
        return _module(filename, options, device_index).get_function(name)


def get_kernel(filename: str, name: str, *, dtype: torch.dtype, device: torch.device, defines: Iterable[str] = ()):
    """The compiled ``extern "C"`` kernel ``name`` of ``filename`` for this dtype and device.

    ``scalar_t`` is defined as the C type of ``dtype``; ``defines`` adds more ``-D`` options.
    """
    index = device.index if device.index is not None else torch.cuda.current_device()
    options = (scalar_define(dtype),) + tuple(defines)
    return _kernel(filename, name, options, index)


@functools.lru_cache(maxsize=64)
def _external_stream(handle: int, device_index: int):
    import cupy

    return cupy.cuda.ExternalStream(handle, device_index)


def ptr(t: torch.Tensor | None) -> np.uint64:
    """Device pointer of a tensor (0 for ``None``). The tensor must be contiguous."""
    if t is None:
        return np.uint64(0)
    if not t.is_contiguous():
        raise ValueError("kernel arguments must be contiguous tensors")
    return np.uint64(t.data_ptr())


def i32(v: int) -> np.int32:
    return np.int32(v)


def f32(v: float) -> np.float32:
    return np.float32(v)


def f64(v: float) -> np.float64:
    return np.float64(v)


def scalar(v: float, dtype: torch.dtype) -> Any:
    """A host scalar in the kernel's ``scalar_t``."""
    return np.float64(v) if dtype == torch.float64 else np.float32(v)


def launch(
    kernel, grid: tuple[int, ...], block: tuple[int, ...], args: tuple, *, device: torch.device, shared_mem: int = 0
) -> None:
    """Launch on torch's current stream of ``device``; asynchronous, no host sync."""
    import cupy

    index = device.index if device.index is not None else torch.cuda.current_device()
    stream = torch.cuda.current_stream(index)
    with cupy.cuda.Device(index), _external_stream(stream.cuda_stream, index):
        if shared_mem > 48 * 1024:
            kernel.max_dynamic_shared_size_bytes = shared_mem
        kernel(grid, block, args, shared_mem=shared_mem)


class CoResidencyError(RuntimeError):
    """A persistent kernel's grid cannot be resident all at once on this device."""


def coresidency_reason(*, blocks: int, threads: int, shared_mem: int, sm_count: int, blocks_per_sm: int) -> str | None:
    """``None`` when a persistent grid of ``blocks`` blocks (``threads`` each, ``shared_mem``
    bytes of dynamic shared memory) is resident all at once on ``sm_count`` SMs holding
    ``blocks_per_sm`` of its blocks each (the CUDA occupancy result), else why not."""
    if blocks < 1:
        raise ValueError(f"blocks must be >= 1, got {blocks}")
    if blocks_per_sm < 1:
        return (
            f"one block of {threads} threads with {shared_mem} bytes of dynamic shared memory does not fit on an SM "
            "(occupancy: 0 blocks per SM; registers or shared memory exceed the SM's)"
        )
    capacity = sm_count * blocks_per_sm
    if blocks > capacity:
        return (
            f"its grid of {blocks} blocks exceeds the {capacity} blocks resident at once ({sm_count} SMs x "
            f"{blocks_per_sm} per SM): blocks waiting at its grid barrier would wait forever for the others"
        )
    return None


_OCCUPANCY: dict[tuple[int, int, int, int], int] = {}


def max_active_blocks_per_sm(kernel, threads: int, shared_mem: int, device_index: int) -> int:
    """``cuOccupancyMaxActiveBlocksPerMultiprocessor`` of ``kernel`` (cached per launch shape)."""
    key = (int(kernel.kernel.ptr), threads, shared_mem, device_index)
    if key not in _OCCUPANCY:
        import cupy
        from cupy_backends.cuda.api import driver

        with cupy.cuda.Device(device_index):
            _OCCUPANCY[key] = int(driver.occupancyMaxActiveBlocksPerMultiprocessor(key[0], threads, shared_mem))
    return _OCCUPANCY[key]


def launch_persistent(
    kernel, grid: tuple[int, ...], block: tuple[int, ...], args: tuple, *, device: torch.device, shared_mem: int = 0
) -> None:
    """`launch` for a kernel whose blocks wait on each other: refused with
    `CoResidencyError` unless the whole grid can be resident at once (no host sync: the
    occupancy query is a host-side driver call, cached)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if shared_mem > 48 * 1024:
        # The opt-in above 48 KiB must be set before the occupancy query, which depends on it.
        kernel.max_dynamic_shared_size_bytes = shared_mem
    blocks, threads = math.prod(grid), math.prod(block)
    reason = coresidency_reason(
        blocks=blocks,
        threads=threads,
        shared_mem=shared_mem,
        sm_count=sm_count(index),
        blocks_per_sm=max_active_blocks_per_sm(kernel, threads, shared_mem, index),
    )
    if reason is not None:
        raise CoResidencyError(
            f"cannot launch the persistent kernel {kernel.name} on cuda:{index}: {reason}. "
            "Use a smaller hidden size or batch, or backend='torch'"
        )
    launch(kernel, grid, block, args, device=device, shared_mem=shared_mem)


# Device properties are process constants: torch.compile evaluates them once while tracing the
# backend checks instead of tracing into CUDA queries.
@assume_constant_result
def sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def compile_check(filename: str, arch: str, defines: Iterable[str] = ()) -> str:
    """Compile ``filename`` with NVRTC for ``sm_<arch>`` without any GPU; return the log.

    Raises `CompileError` on an error or on any warning.
    """
    from cupy_backends.cuda.libs import nvrtc

    source = kernel_source(filename)
    options = list(BASE_OPTIONS) + [f"-arch=sm_{arch}", "--device-as-default-execution-space"] + list(defines)
    prog = nvrtc.createProgram(source, filename, [], [])
    try:
        try:
            nvrtc.compileProgram(prog, options)
        except nvrtc.NVRTCError as exc:
            raise CompileError(
                f"{filename} (sm_{arch}, {defines}) failed: {exc}\n{nvrtc.getProgramLog(prog)}"
            ) from None
        log = nvrtc.getProgramLog(prog)
        if "warning" in log.lower():
            raise CompileError(f"{filename} (sm_{arch}, {defines}) compiled with warnings:\n{log}")
        return log
    finally:
        nvrtc.destroyProgram(prog)


# Kind ids and parameter counts of evsnn_surrogate_grad in cuda/common.cuh.
SURROGATE_KINDS = {
    "triangle": (0, 2),
    "gaussian": (1, 2),
    "multi_gaussian": (2, 4),
    "atan": (3, 1),
    "fast_sigmoid": (4, 1),
}


def surrogate_kernel_args(surrogate: Any) -> tuple[int, tuple[float, float, float, float], float] | None:
    """``(kind, (p0, p1, p2, p3), trunc)`` for ``evsnn_surrogate_grad`` of ``common.cuh``, or ``None``
    when the surrogate has no kernel form. Shared by every CuPy family.

    Parameters beyond the kind's own are truncation supports (one per nesting of
    `Surrogate.truncate`); the effective support is the smallest. ``trunc = 0`` means none.
    """
    from ..surrogate import Surrogate

    spec = surrogate.kernel_spec() if isinstance(surrogate, Surrogate) else None
    if spec is None or spec[0] not in SURROGATE_KINDS:
        return None
    name, params = spec
    kind, n_params = SURROGATE_KINDS[name]
    own, supports = tuple(float(p) for p in params[:n_params]), [float(p) for p in params[n_params:]]
    if len(own) != n_params:
        return None
    return kind, own + (0.0,) * (4 - n_params), (min(supports) if supports else 0.0)  # type: ignore[return-value]


def tensor_reason(kernels: str, device: torch.device, dtype: torch.dtype | None) -> str | None:
    """What a call's tensors rule out for CuPy kernels (no probe of the machine): a device other than
    CUDA, a dtype other than float32/float64. ``kernels`` names them in the message."""
    if device.type != "cuda":
        return (
            f'the CuPy backend runs on CUDA tensors, got a {device.type} tensor (pip install "evsnn[cuda13]" '
            "and move it to a GPU)"
        )
    if dtype is not None and dtype not in _SCALAR:
        return f"{kernels} support float32 and float64, got {dtype}{low_precision_hint(dtype)}"
    return None


def low_precision_hint(dtype: torch.dtype | None) -> str:
    """The clause a float32/float64-only kernel's check appends when refused a bf16/fp16 call
    made to it directly (through the layers it is never asked: [`evsnn.ops.dispatch.resolve`][evsnn.ops.dispatch.resolve] lowers first)."""
    if dtype in LOW_PRECISION:
        return (
            "; bfloat16/float16 layers reach these kernels through evsnn.ops.dispatch, which runs them in "
            "float32 on operands rounded to the low dtype (SPEC §6)"
        )
    return ""
