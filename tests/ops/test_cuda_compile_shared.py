"""One ``__device__`` function per equation on the CUDA side, shared by the kernels that need it.

- Structure (no compiler): each shared function of ``cuda/*.cuh`` is defined once, in its
  family's header, and called by every kernel listed for it; the text of each equation occurs
  once in all of ``cuda/`` (no kernel restates a step, an adjoint or the sigmoid), and the delta
  cells' accumulator slots are indexed by the names of ``delta.cuh`` only.
- NVRTC (CuPy's compiler, no GPU): the family headers compile on their own, after
  ``common.cuh``, with every shared function called with the argument types the kernels pass.
- Host C++ (``g++``): the family headers hold plain arithmetic, so the same text compiled for the
  CPU in float64 computes each forward step and each adjoint; they are checked against the
  reference (``evsnn.functional``: its values and torch autograd of it). This checks the
  equations of the headers, not the GPU kernels' launches, which only a GPU test can run.
"""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from evsnn.functional.alif import ALIFState, alif_dynamics
from evsnn.functional.delta import delta_encode, delta_gru_gates, delta_lstm_gates
from evsnn.functional.egru import EGRUState, egru_pointwise
from evsnn.ops import cupy_runtime as rt
from evsnn.surrogate import MultiGaussian, Triangle

CUDA_DIR = rt.CUDA_DIR

# Shared function -> (file that defines it: its family's header, or the .cu for a kernel helper
# that is no equation; kernels that must call it).
SHARED = {
    "evsnn_sigmoid": ("common.cuh", ()),
    "evsnn_surrogate_grad": ("common.cuh", ("egru_backward",)),
    "alif_threshold": ("alif.cuh", ("alif_ff_backward", "alif_rec_backward", "alif_rec_backward_smem")),
    "alif_step": ("alif.cuh", ("alif_ff_forward", "alif_rec_forward")),
    "alif_adjoint_step": ("alif.cuh", ("alif_ff_backward", "alif_rec_backward", "alif_rec_backward_smem")),
    # Not an equation but the same nine lines in each backward: the state of step t-1 the adjoint reads.
    "alif_previous_state": ("alif.cu", ("alif_ff_backward", "alif_rec_backward", "alif_rec_backward_smem")),
    "egru_step": ("egru.cuh", ("egru_forward",)),
    "egru_adjoint_step": ("egru.cuh", ("egru_backward",)),
    "egru_reset": ("egru.cuh", ("egru_backward",)),
    "egru_in_support": ("egru.cuh", ("egru_backward",)),
    "delta_pass": ("delta.cuh", ()),
    "delta_encode": ("delta.cuh", ("delta_encode_input", "delta_forward")),
    "delta_gru_gates": ("delta.cuh", ()),
    "delta_gru_step": ("delta.cuh", ("delta_forward",)),
    "delta_gru_adjoint": ("delta.cuh", ("delta_backward",)),
    "delta_lstm_gates": ("delta.cuh", ()),
    "delta_lstm_step": ("delta.cuh", ("delta_forward",)),
    "delta_lstm_adjoint": ("delta.cuh", ("delta_backward",)),
}

# Shared function -> the shared functions it must call.
USES = {
    "alif_step": ("alif_threshold",),
    "egru_step": ("evsnn_sigmoid", "egru_reset"),
    "delta_encode": ("delta_pass",),
    "delta_gru_gates": ("evsnn_sigmoid",),
    "delta_gru_step": ("delta_gru_gates",),
    "delta_gru_adjoint": ("delta_gru_gates",),
    "delta_lstm_gates": ("evsnn_sigmoid",),
    "delta_lstm_step": ("delta_lstm_gates",),
    "delta_lstm_adjoint": ("delta_lstm_gates",),
}

# The text of each equation (spaces ignored), which must occur exactly once in all sources.
EQUATIONS = {
    "sigmoid": "scalar_t(1)/(scalar_t(1)+exp(-x))",
    "ALIF adaptation trace": "rho*b+one_m_rho*s",
    "ALIF threshold": "b0+beta*b",
    "ALIF membrane": "alpha*v+one_m_alpha*i_t-threshold*s",
    "ALIF adjoint, threshold": "g_thr-dx-gv*s_p",
    "ALIF adjoint, dalpha": "gv*(v_p-i_t)",
    "ALIF adjoint, spike carry": "(scalar_t(1)-rho)*gb-gv*thr",
    "ALIF previous state, traces": "s_p=spikes[off-BN]",
    "ALIF previous state, initial": "s_p=s0[sidx]",
    "EGRU candidate": "z*cprev+(scalar_t(1)-z)*n",
    "EGRU threshold reset": "p-th:p",
    "EGRU adjoint, candidate": "Y*(o+p*g)",
    "EGRU adjoint, r gate": "dan*hn*r*(scalar_t(1)-r)",
    "delta encoder memory": "memory+d",
    "DeltaGRU output": "(scalar_t(1)-z)*n+z*hprev",
    "DeltaGRU adjoint, z": "lh*(hprev-n)*z*(scalar_t(1)-z)",
    "DeltaLSTM cell": "fg*cprev+ig*gg",
    "DeltaLSTM adjoint, o": "lh*tc*og*(scalar_t(1)-og)",
}

_KERNEL = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s*)?(\w+)\s*\(')
_DEVICE_FN = re.compile(r"__device__\s+__forceinline__\s+[\w\s&*:<>]*?\b(\w+)\s*\([^;{]*\)\s*\{")


def _strip_comments(text: str) -> str:
    return re.sub(r"//[^\n]*", "", re.sub(r"/\*.*?\*/", "", text, flags=re.S))


def _sources(directory: Path = CUDA_DIR) -> dict[str, str]:
    return {p.name: _strip_comments(p.read_text()) for p in sorted(directory.iterdir()) if p.suffix in (".cu", ".cuh")}


def _bodies(sources: dict[str, str], pattern: re.Pattern) -> dict[str, str]:
    # The brace-matched body that follows each match's signature, by name.
    bodies = {}
    for text in sources.values():
        for match in pattern.finditer(text):
            start = text.index("{", match.start(1))
            depth, i = 0, start
            while True:
                depth += {"{": 1, "}": -1}.get(text[i], 0)
                if depth == 0:
                    break
                i += 1
            bodies[match.group(1)] = text[start : i + 1]
    return bodies


def _kernel_bodies(sources: dict[str, str]) -> dict[str, str]:
    return _bodies(sources, _KERNEL)


def _device_bodies(sources: dict[str, str]) -> dict[str, str]:
    return _bodies(sources, _DEVICE_FN)


def _equation_counts(sources: dict[str, str]) -> dict[str, int]:
    flat = "".join(re.sub(r"\s+", "", text) for text in sources.values())
    return {name: flat.count(expr) for name, expr in EQUATIONS.items()}


def test_each_shared_function_is_defined_once_in_its_file() -> None:
    defined: dict[str, list[str]] = {}
    for name, text in _sources().items():
        for match in _DEVICE_FN.finditer(text):
            defined.setdefault(match.group(1), []).append(name)
    for fn, (header, _) in SHARED.items():
        assert defined.get(fn) == [header], f"{fn}: defined in {defined.get(fn)}, expected once in {header}"


def test_every_kernel_calls_the_shared_functions() -> None:
    bodies = _kernel_bodies(_sources())
    assert {"alif_ff_forward", "alif_rec_backward_smem", "egru_backward", "delta_forward"} <= bodies.keys()
    for fn, (_, kernels) in SHARED.items():
        for kernel in kernels:
            assert re.search(rf"\b{fn}\s*\(", bodies[kernel]), f"kernel {kernel} does not call {fn}"
    # Shared functions built from shared functions (the step from its gates, the gates from the sigmoid).
    bodies = _device_bodies(_sources())
    for fn, callees in USES.items():
        for callee in callees:
            assert re.search(rf"\b{callee}\s*\(", bodies[fn]), f"{fn} does not call {callee}"


def test_each_equation_is_written_once() -> None:
    sources = _sources()
    counts = _equation_counts(sources)
    assert counts == dict.fromkeys(EQUATIONS, 1)
    flat = "".join(sources.values())
    assert "delta_sigmoid" not in flat
    # The accumulator slots of a delta cell are named once (DELTA_GRU_*, DELTA_LSTM_*), never indexed by number.
    assert not re.search(r"\bm\[[0-3]\]", flat)
    assert set(re.findall(r"#define (DELTA_(?:GRU|LSTM)_\w+)", sources["delta.cuh"])) == {
        "DELTA_GRU_R", "DELTA_GRU_Z", "DELTA_GRU_NX", "DELTA_GRU_NH",
        "DELTA_LSTM_I", "DELTA_LSTM_F", "DELTA_LSTM_G", "DELTA_LSTM_O",
    }  # fmt: skip


def test_a_restated_equation_is_caught() -> None:
    # The check above can fail: a kernel that writes the ALIF adjoint inline again is counted twice.
    sources = _sources()
    sources["alif.cu"] += "\nconst scalar_t gB = g_thr - dx - gv * s_p;\n"
    assert _equation_counts(sources)["ALIF adjoint, threshold"] == 2
    sources["alif.cu"] += "\nif (t > 0) s_p = spikes[off - BN]; else s_p = s0[sidx];\n"
    counts = _equation_counts(sources)
    assert counts["ALIF previous state, traces"] == counts["ALIF previous state, initial"] == 2
    sources["delta.cu"] += "\nconst scalar_t r = evsnn_sigmoid(m[0]);\n"
    assert re.search(r"\bm\[[0-3]\]", "".join(sources.values()))


# ---------------------------------------------------------------------------------------------
# NVRTC: the headers compile alone, with the signatures the kernels use.
# ---------------------------------------------------------------------------------------------
_PROBE = r"""
#include "common.cuh"
#include "alif.cuh"
#include "egru.cuh"
#include "delta.cuh"
extern "C" __global__ void probe(scalar_t* x, int reset, int inclusive) {
    scalar_t v = x[0], b = x[1], s = x[2], thr;
    alif_step(x[3], x[4], x[5], x[6], x[7], x[8], x[9], v, b, s, thr);
    scalar_t Gv = x[10], Gb = x[11], Gs = x[12], pa = 0, pr = 0, pb0 = 0, pbeta = 0;
    x[13] = alif_adjoint_step(x[14], x[15], x[16], x[17], x[4], x[6], x[9], alif_threshold(x[8], x[9], b), b, x[0],
                              x[1], x[2], x[3], Gv, Gb, Gs, pa, pr, pb0, pbeta);
    scalar_t r, z, n, hnb, p, y, c, dar, daz, dan, dp, dth, dc;
    egru_step(x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7], x[8], x[9], x[10], x[11], reset, r, z, n, hnb, p, y, c);
    egru_adjoint_step(x[12], x[13], x[14], r, z, n, hnb, p, x[11], egru_reset(x[15], x[11], reset), reset, dar, daz,
                      dan, dp, dth, dc);
    const bool need = egru_in_support(p - x[11], x[16]);
    scalar_t m[4] = {x[0], x[1], x[2], x[3]}, g[4], lam_c = x[4], c2, mem = x[5];
    const scalar_t h = delta_gru_step(m, x[6]) + delta_lstm_step(m, x[7], c2);
    const scalar_t direct = delta_gru_adjoint(m, x[6], x[8], g);
    delta_lstm_adjoint(m, c2, x[7], x[8], lam_c, g);
    const scalar_t d = delta_encode(x[9], mem, x[10], inclusive);
    x[0] = v + b + s + thr + Gv + Gb + Gs + pa + pr + pb0 + pbeta + y + c + dar + daz + dan + dp + dth + dc;
    x[1] = (need ? h : direct) + g[0] + lam_c + d + mem;
}
"""


@pytest.mark.parametrize("scalar", ["float", "double"])
def test_headers_compile_alone_with_the_kernels_signatures(scalar: str, tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("cupy_backends.cuda.libs.nvrtc", reason="NVRTC from CuPy (the nvrtc extra)")
    for header in ("common.cuh", "alif.cuh", "egru.cuh", "delta.cuh"):
        shutil.copy(CUDA_DIR / header, tmp_path / header)
    (tmp_path / "probe.cu").write_text(_PROBE)
    monkeypatch.setattr(rt, "CUDA_DIR", tmp_path)
    rt.compile_check("probe.cu", "80", [f"-Dscalar_t={scalar}", "--fmad=false"])


# ---------------------------------------------------------------------------------------------
# Host C++: the header equations against the reference, float64.
# ---------------------------------------------------------------------------------------------
_DRIVER = r"""
#include <math.h>
#define __device__
#define __forceinline__ inline
#define scalar_t double
SIGMOID
#include "alif.cuh"
#include "egru.cuh"
#include "delta.cuh"
// Inputs and outputs as rows of n values: in[k * n + i] is input k of element i.
#define IN(k) in[(k) * n + i]
#define OUT(k) out[(k) * n + i]
extern "C" void alif_fwd(int n, const double* in, double* out) {
    for (int i = 0; i < n; ++i) {
        double v = IN(0), b = IN(1), s = IN(2), thr;
        alif_step(IN(3), IN(4), 1.0 - IN(4), IN(5), 1.0 - IN(5), IN(6), IN(7), v, b, s, thr);
        OUT(0) = v; OUT(1) = b; OUT(2) = s; OUT(3) = thr;
    }
}
extern "C" void alif_adj(int n, const double* in, double* out) {
    for (int i = 0; i < n; ++i) {
        double Gv = IN(14), Gb = IN(15), Gs = IN(16), pa = IN(17), pr = IN(18), pb0 = IN(19), pbeta = IN(20);
        OUT(0) = alif_adjoint_step(IN(0), IN(1), IN(2), IN(3), IN(4), IN(5), IN(6), IN(7), IN(8), IN(9), IN(10),
                                   IN(11), IN(12), Gv, Gb, Gs, pa, pr, pb0, pbeta);
        OUT(1) = Gv; OUT(2) = Gb; OUT(3) = Gs; OUT(4) = pa; OUT(5) = pr; OUT(6) = pb0; OUT(7) = pbeta;
    }
}
extern "C" void egru_fwd(int n, int reset, const double* in, double* out) {
    for (int i = 0; i < n; ++i) {
        double r, z, nn, hnb, p, y, c;
        egru_step(IN(0), IN(1), IN(2), IN(3), IN(4), IN(5), IN(6), IN(7), IN(8), IN(9), IN(10), IN(11), reset, r, z, nn,
                  hnb, p, y, c);
        OUT(0) = r; OUT(1) = z; OUT(2) = nn; OUT(3) = hnb; OUT(4) = p; OUT(5) = y; OUT(6) = c;
        OUT(7) = egru_reset(p, IN(11), reset);
        OUT(8) = egru_in_support(p - IN(11), IN(12)) ? 1.0 : 0.0;
    }
}
extern "C" void egru_adj(int n, int reset, const double* in, double* out) {
    for (int i = 0; i < n; ++i) {
        double dar, daz, dan, dp, dth, dc;
        egru_adjoint_step(IN(0), IN(1), IN(2), IN(3), IN(4), IN(5), IN(6), IN(7), IN(8), IN(9), reset, dar, daz, dan,
                          dp, dth, dc);
        OUT(0) = dar; OUT(1) = daz; OUT(2) = dan; OUT(3) = dp; OUT(4) = dth; OUT(5) = dc;
    }
}
// The accumulators of unit i are m[4 * i + slot] (unit-major, as M in the kernels).
extern "C" void delta_cells(int n, const double* m_all, const double* in, double* out) {
    for (int i = 0; i < n; ++i) {
        const double m[4] = {m_all[4 * i], m_all[4 * i + 1], m_all[4 * i + 2], m_all[4 * i + 3]};
        double g[4], c, lam_c = IN(3);
        OUT(0) = delta_gru_step(m, IN(0));
        OUT(1) = delta_lstm_step(m, IN(1), c);
        OUT(2) = c;
        OUT(3) = delta_gru_adjoint(m, IN(0), IN(2), g);
        for (int s = 0; s < 4; ++s) OUT(4 + s) = g[s];
        delta_lstm_adjoint(m, c, IN(1), IN(2), lam_c, g);
        for (int s = 0; s < 4; ++s) OUT(8 + s) = g[s];
        OUT(12) = lam_c;
    }
}
extern "C" void delta_enc(int n, double theta, int inclusive, const double* in, double* out) {
    for (int i = 0; i < n; ++i) {
        double mem = IN(1);
        OUT(0) = delta_encode(IN(0), mem, theta, inclusive);
        OUT(1) = mem;
    }
}
"""


class _Lib:
    def __init__(self, path: Path):
        self.lib = ctypes.CDLL(str(path))

    def __call__(self, name: str, ins: list[torch.Tensor], n_out: int, *scalars) -> list[torch.Tensor]:
        n = ins[0].numel()
        a = np.ascontiguousarray(np.stack([t.detach().reshape(-1).numpy() for t in ins]), dtype=np.float64)
        out = np.zeros((n_out, n), dtype=np.float64)
        ptr = ctypes.POINTER(ctypes.c_double)
        args = [ctypes.c_int(n)]
        for v in scalars:
            args.append(ctypes.c_double(v) if isinstance(v, float) else ctypes.c_int(v))
        getattr(self.lib, name)(*args, a.ctypes.data_as(ptr), out.ctypes.data_as(ptr))
        return [torch.from_numpy(row.copy()) for row in out]

    def cells(self, m: torch.Tensor, ins: list[torch.Tensor], n_out: int) -> list[torch.Tensor]:
        mm = np.ascontiguousarray(m.detach().numpy(), dtype=np.float64)
        a = np.ascontiguousarray(np.stack([t.detach().numpy() for t in ins]), dtype=np.float64)
        out = np.zeros((n_out, mm.shape[0]), dtype=np.float64)
        ptr = ctypes.POINTER(ctypes.c_double)
        self.lib.delta_cells(
            ctypes.c_int(mm.shape[0]), mm.ctypes.data_as(ptr), a.ctypes.data_as(ptr), out.ctypes.data_as(ptr)
        )
        return [torch.from_numpy(row.copy()) for row in out]


@pytest.fixture(scope="module")
def host(tmp_path_factory) -> _Lib:
    cxx = shutil.which("g++")
    assert cxx is not None, "needs a host C++ compiler (g++) to run the header equations on the CPU"
    common = (CUDA_DIR / "common.cuh").read_text()
    sigmoid = re.search(r"__device__ __forceinline__ scalar_t evsnn_sigmoid\(.*?\}\n", common, re.S)
    assert sigmoid is not None, "evsnn_sigmoid not found in common.cuh"
    folder = tmp_path_factory.mktemp("host_headers")
    (folder / "driver.cpp").write_text(_DRIVER.replace("SIGMOID", sigmoid.group(0)))
    lib = folder / "driver.so"
    cmd = [cxx, "-std=c++17", "-O1", "-ffp-contract=off", "-shared", "-fPIC", "-Wall", "-Werror", f"-I{CUDA_DIR}"]
    subprocess.run([*cmd, str(folder / "driver.cpp"), "-o", str(lib)], check=True, capture_output=True, text=True)
    return _Lib(lib)


def _close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    torch.testing.assert_close(
        actual.reshape(-1), expected.detach().reshape(-1), rtol=1e-12, atol=1e-12, msg=lambda m: f"{what}: {m}"
    )


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_(True)


def test_alif_step_and_adjoint_match_autograd_of_the_reference(host: _Lib) -> None:
    n = 256
    dd = torch.float64
    v_p, b_p = _leaf(torch.randn(n, dtype=dd)), _leaf(0.01 + 0.2 * torch.rand(n, dtype=dd))
    s_p = _leaf((torch.rand(n, dtype=dd) < 0.3).to(dd))
    current = _leaf(torch.randn(n, dtype=dd))
    alpha, rho = (
        _leaf(torch.exp(-1 / (20 + 5 * torch.rand(n, dtype=dd)))),
        _leaf(torch.exp(-1 / (150 + torch.rand(n, dtype=dd)))),
    )
    b0, beta = _leaf(torch.full((n,), 0.01, dtype=dd)), _leaf(1.8 * torch.rand(n, dtype=dd))
    surrogate = MultiGaussian()
    s, state, thr = alif_dynamics(current, ALIFState(v_p, b_p, s_p), alpha, rho, b0, beta, surrogate)

    out = host("alif_fwd", [v_p, b_p, s_p, current, alpha, rho, b0, beta], 4)
    for got, ref, what in zip(out, (state.v, state.b, s, thr), ("v_t", "b_t", "s_t", "B_t")):
        _close(got, ref, what)
    assert 0 < int(s.sum()) < n  # both branches of the spike test ran

    # Upstream: carries from step t+1 (Gv, Gb, Gs) and the traces' gradients (g_s, g_v, g_thr).
    up = [torch.randn(n, dtype=dd) for _ in range(6)]
    gv_in, gb_in, gs_in, g_s, g_v, g_thr = up
    loss = ((gv_in + g_v) * state.v + gb_in * state.b + (gs_in + g_s) * s + g_thr * thr).sum()
    leaves = (current, v_p, b_p, s_p, alpha, rho, b0, beta)
    grads = torch.autograd.grad(loss, leaves)
    partials = [torch.randn(n, dtype=dd) for _ in range(4)]  # the kernels' running parameter sums
    g = surrogate.grad(state.v - thr).detach()
    ins = [g, g_s, g_v, g_thr, alpha, rho, beta, thr, state.b, v_p, b_p, s_p, current, current, gv_in, gb_in, gs_in]
    out = host("alif_adj", ins + partials, 8)
    names = ("dI_t", "dL/dv_{t-1}", "dL/db_{t-1}", "dL/ds_{t-1}", "dalpha", "drho", "db0", "dbeta")
    expected = list(grads[:4]) + [p + gr for p, gr in zip(partials, grads[4:])]
    for got, ref, what in zip(out, expected, names):
        _close(got, ref, what)


@pytest.mark.parametrize("reset", ["output", "threshold"])
def test_egru_step_and_adjoint_match_autograd_of_the_reference(host: _Lib, reset: str) -> None:
    n = 256
    dd = torch.float64
    gi = [_leaf(torch.randn(n, dtype=dd)) for _ in range(3)]
    hh = [_leaf(torch.randn(n, dtype=dd)) for _ in range(3)]
    bh = [torch.randn(n, dtype=dd) * 0.1 for _ in range(3)]
    c_prev, y_prev = _leaf(torch.randn(n, dtype=dd)), _leaf(torch.randn(n, dtype=dd).clamp(min=0))
    theta = _leaf(0.2 + 0.2 * torch.rand(n, dtype=dd))
    surrogate = Triangle(0.3)
    gh = torch.cat([h + b for h, b in zip(hh, bh)]).unsqueeze(0)
    y, state, c_pre = egru_pointwise(torch.cat(gi).unsqueeze(0), gh, EGRUState(c_prev, y_prev), theta, reset, surrogate)
    flag = int(reset == "threshold")

    out = host("egru_fwd", [*gi, *hh, *bh, c_prev, y_prev, theta, torch.full((n,), 0.3, dtype=dd)], 9, flag)
    r, z, nn, hnb, p, y_k, c_k, c_again, need = out
    _close(p, c_pre, "c_pre")
    _close(y_k, y, "y_t")
    _close(c_k, state.c, "c_t")
    _close(c_again, state.c, "egru_reset(c_pre)")  # the backward's c_{t-1} equals the forward's c_t
    x = (c_pre - theta).detach().reshape(-1)
    assert torch.equal(need.bool(), (x > 0) | (x.abs() < 0.3))
    assert 0 < int((x > 0).sum()) < n and bool(((x.abs() < 0.3) & (x <= 0)).any())

    Y, C = torch.randn(n, dtype=dd), torch.randn(n, dtype=dd)
    loss = (Y * y.reshape(-1) + C * state.c.reshape(-1)).sum()
    leaves = (*gi, *hh, theta, c_prev, y_prev, c_pre)
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)  # y_{t-1} is unused under the threshold reset
    *d_i, d_hr, _, d_hn, d_theta, d_c, d_y, d_pre = (
        torch.zeros_like(t) if g is None else g for t, g in zip(leaves, grads)
    )
    g = surrogate.grad(x)
    dar, daz, dan, dp, dth, dc = host("egru_adj", [Y, C, g, r, z, nn, hnb, p, theta, c_prev], 6, flag)
    _close(dar, d_i[0], "dL/da_r")
    _close(daz, d_i[1], "dL/da_z")
    _close(dan, d_i[2], "dL/da_n (input side)")
    _close(dar, d_hr, "dL/dh_r")
    _close(dan * r, d_hn, "dL/dh_n (dan * r)")
    _close(dp, d_pre, "dL/dc_pre")
    _close(dth, d_theta, "dL/dtheta")
    _close(dc, d_c, "dL/dc_{t-1}")
    # Output reset: y_{t-1} enters c_pre with a minus sign, so its gradient is -dp (dp_next in the kernel).
    _close(-dp if reset == "output" else torch.zeros(n, dtype=dd), d_y, "dL/dy_{t-1}")


def test_delta_cells_and_adjoints_match_autograd_of_the_reference(host: _Lib) -> None:
    n = 128
    dd = torch.float64
    m = _leaf(torch.randn(n, 4, dtype=dd))  # unit-major, as the kernels' accumulators
    h_prev, c_prev = _leaf(torch.randn(n, dtype=dd)), _leaf(torch.randn(n, dtype=dd))
    lh, lam_c = torch.randn(n, dtype=dd), torch.randn(n, dtype=dd)
    # The reference takes [M_0 | M_1 | M_2 | M_3] over units: slot s of unit i at s * n + i.
    m_ref = m.t().reshape(1, 4 * n)
    h_gru = delta_gru_gates(m_ref, h_prev).reshape(-1)
    h_lstm, c = (t.reshape(-1) for t in delta_lstm_gates(m_ref, c_prev))
    out = host.cells(m, [h_prev, c_prev, lh, lam_c], 13)
    _close(out[0], h_gru, "DeltaGRU h_t")
    _close(out[1], h_lstm, "DeltaLSTM h_t")
    _close(out[2], c, "DeltaLSTM c_t")

    dm, dh = torch.autograd.grad((lh * h_gru).sum(), (m, h_prev))
    _close(torch.stack(out[4:8], 1), dm, "DeltaGRU dL/dM")
    _close(out[3], dh, "DeltaGRU dL/dh_{t-1}")
    dm, dc = torch.autograd.grad((lh * h_lstm + lam_c * c).sum(), (m, c_prev))
    _close(torch.stack(out[8:12], 1), dm, "DeltaLSTM dL/dM")
    _close(out[12], dc, "DeltaLSTM dL/dc_{t-1}")


@pytest.mark.parametrize("rule", ["strict", "inclusive"])
def test_delta_encoder_matches_the_reference_ties_and_nan(host: _Lib, rule: str) -> None:
    theta = 0.25
    memory = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, 1.0, -2.0, 0.5, 0.0], dtype=torch.float64)
    value = torch.tensor([0.25, -0.25, 0.0, 0.1, 1.3, 0.7, -2.0, float("nan"), 3.0], dtype=torch.float64)
    delta, new_memory = delta_encode(value, memory, theta, rule)
    got_delta, got_memory = host("delta_enc", [value, memory], 2, theta, int(rule == "inclusive"))
    torch.testing.assert_close(got_delta, delta, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(got_memory, new_memory, rtol=0, atol=0, equal_nan=True)
    # The ties at |diff| = theta are what the two rules disagree on.
    assert (got_delta[:2] != 0).all() == (rule == "inclusive")
