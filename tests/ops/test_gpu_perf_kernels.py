"""The ALIF recurrent backward with W_hh resident in shared memory (``alif_rec_backward_smem``):
its plan, and several 4-sample passes per block, a partial last pass and a partial last column chunk,
float32 and float64, against autograd of the reference (GPU tests skip without CUDA/CuPy; the plan
test runs everywhere). The delta forward's tagged Δh exchange is checked against the reference by
tests/ops/test_delta_cupy.py.
"""

from __future__ import annotations

import pytest
import torch

from evsnn.functional import alif_scan
from evsnn.functional.alif import ALIFState
from evsnn.ops import cupy_runtime as rt
from evsnn.ops.alif import cuda as alif_cuda
from evsnn.surrogate import MultiGaussian


def test_smem_plan_shapes_and_limits():
    # The ALIF GPU benchmark's shape (B=32, H=512) on 132 SMs: 16 chunks of 32 columns x 8 groups of 4 samples; 79,360 bytes.
    assert alif_cuda.smem_plan(32, 512, 4, 132, 232448) == (128, 4, 4 * (512 * 32 + 512 * 4 + 4 * 4 * 32 + 7 * 4 * 32))
    # One sample: one group; the grid is the number of chunks.
    assert alif_cuda.smem_plan(1, 100, 8, 132, 232448)[:2] == (4, 1)
    # No empty group: 9 samples over at most 4 groups -> 3 per block, 3 groups.
    assert alif_cuda.smem_plan(9, 32, 4, 4, 232448)[:2] == (3, 3)
    # More chunks than resident blocks, or more shared memory than a block may have: no plan.
    assert alif_cuda.smem_plan(4, 600, 4, 2, 232448) is None
    assert alif_cuda.smem_plan(4, 2048, 4, 132, 232448) is None


def _alif_case(T, B, N, dtype, seed):
    g = torch.Generator().manual_seed(seed)

    def leaf(t):
        return t.to("cuda", dtype).requires_grad_(True)

    case = {
        "current": leaf(0.3 + torch.randn(T, B, N, generator=g)),
        "tau_mem": leaf(20.0 + 5.0 * torch.randn(N, generator=g)),
        "tau_adapt": leaf(3.0 + 150.0 * torch.rand(N, generator=g)),
        "b0": leaf(0.01 + 0.05 * torch.rand(N, generator=g)),
        "beta": leaf(1.8 + 0.2 * torch.randn(N, generator=g)),
        "v": leaf(0.5 * torch.rand(B, N, generator=g)),
        "b": leaf(0.01 + 0.1 * torch.rand(B, N, generator=g)),
        "s": leaf((torch.rand(B, N, generator=g) < 0.3).double()),
        "weight_hh": leaf(2.0 * torch.randn(N, N, generator=g) / N**0.5),
        "bias_hh": leaf(0.1 * torch.randn(N, generator=g)),
    }
    weights = [torch.randn(T, B, N, generator=g).to("cuda", dtype) for _ in range(3)]
    weights += [torch.randn(B, N, generator=g).to("cuda", dtype) for _ in range(3)]
    return case, weights


def _alif_run(fn, case, weights, surrogate):
    spikes, final, trace = fn(
        case["current"],
        ALIFState(case["v"], case["b"], case["s"]),
        tau_mem=case["tau_mem"],
        tau_adapt=case["tau_adapt"],
        b0=case["b0"],
        beta=case["beta"],
        surrogate=surrogate,
        weight_hh=case["weight_hh"],
        bias_hh=case["bias_hh"],
    )
    outs = [spikes, trace.v, trace.threshold, final.v, final.b, final.s]
    loss = sum((o * w).sum() for o, w in zip(outs, weights))
    names = sorted(case)
    return outs, dict(zip(names, torch.autograd.grad(loss, [case[k] for k in names])))


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp(min=1.0)).item()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("surrogate", [MultiGaussian(), MultiGaussian().truncate(0.3)], ids=["dense", "trunc"])
def test_alif_smem_backward_multi_pass(monkeypatch, dtype, surrogate):
    pytest.importorskip("cupy")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    # N = 40: two column chunks (the second 8 wide); 2 blocks -> one group of 9 samples = passes
    # of 4, 4 and 1 sample(s).
    monkeypatch.setattr(rt, "sm_count", lambda index: 2)
    plan = alif_cuda.smem_plan(9, 40, torch.empty(0, dtype=dtype).element_size(), 2, 10**6)
    assert plan is not None and plan[:2] == (2, 9)
    case, weights = _alif_case(14, 9, 40, dtype, seed=11)
    got, got_g = _alif_run(alif_cuda.alif_scan_cuda, case, weights, surrogate)
    ref, ref_g = _alif_run(alif_scan, case, weights, surrogate)
    assert 0.005 < ref[0].mean().item() < 0.95
    assert torch.equal(got[0], ref[0])
    tol = 1e-9 if dtype == torch.float64 else 2e-4
    for name in ref_g:
        assert _rel(got_g[name], ref_g[name]) <= tol, (name, _rel(got_g[name], ref_g[name]))
