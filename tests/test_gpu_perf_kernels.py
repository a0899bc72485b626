"""The faster kernel variants of the GPU performance follow-up, against the reference and against
the variants they replace (GPU tests skip without CUDA/CuPy; the plan test runs everywhere).

- ALIF recurrent backward with W_hh resident in shared memory (``alif_rec_backward_smem``): several
  4-sample passes per block, a partial last pass and a partial last column chunk, float32 and
  float64, against autograd of the reference and against the previous kernel.
- Delta forward with the tagged Δh exchange (float32, no grid barrier): bitwise equal to the
  barrier version (same sums in the same order), one and several sample tiles, GRU and LSTM.
"""

from __future__ import annotations

import pytest
import torch

from evsnn.functional import alif_scan
from evsnn.functional.alif import ALIFState
from evsnn.ops import alif_cupy, delta_cupy
from evsnn.surrogate import MultiGaussian


def test_smem_plan_shapes_and_limits():
    # P2 shape on 132 SMs: 16 chunks of 32 columns x 8 groups of 4 samples; 79,360 bytes.
    assert alif_cupy.smem_plan(32, 512, 4, 132, 232448) == (128, 4, 4 * (512 * 32 + 512 * 4 + 4 * 4 * 32 + 7 * 4 * 32))
    # One sample: one group; the grid is the number of chunks.
    assert alif_cupy.smem_plan(1, 100, 8, 132, 232448)[:2] == (4, 1)
    # No empty group: 9 samples over at most 4 groups -> 3 per block, 3 groups.
    assert alif_cupy.smem_plan(9, 32, 4, 4, 232448)[:2] == (3, 3)
    # More chunks than resident blocks, or more shared memory than a block may have: no plan.
    assert alif_cupy.smem_plan(4, 600, 4, 2, 232448) is None
    assert alif_cupy.smem_plan(4, 2048, 4, 132, 232448) is None


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
    monkeypatch.setattr(alif_cupy, "MAX_BLOCKS", 2)
    plan = alif_cupy.smem_plan(9, 40, torch.empty(0, dtype=dtype).element_size(), 2, 10**6)
    assert plan is not None and plan[:2] == (2, 9)
    case, weights = _alif_case(14, 9, 40, dtype, seed=11)
    got, got_g = _alif_run(alif_cupy.alif_scan_cupy, case, weights, surrogate)
    ref, ref_g = _alif_run(alif_scan, case, weights, surrogate)
    monkeypatch.setattr(alif_cupy, "SMEM_BACKWARD", False)
    _, old_g = _alif_run(alif_cupy.alif_scan_cupy, case, weights, surrogate)
    assert 0.005 < ref[0].mean().item() < 0.95
    assert torch.equal(got[0], ref[0])
    tol = 1e-9 if dtype == torch.float64 else 2e-4
    for name in ref_g:
        assert _rel(got_g[name], ref_g[name]) <= tol, (name, _rel(got_g[name], ref_g[name]))
        assert _rel(got_g[name], old_g[name]) <= tol, (name, _rel(got_g[name], old_g[name]))


@pytest.mark.gpu
@pytest.mark.parametrize("lstm", [False, True], ids=["gru", "lstm"])
@pytest.mark.parametrize("batch", [1, 6])
def test_delta_tagged_exchange_equals_barrier(monkeypatch, lstm, batch):
    pytest.importorskip("cupy")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    gates, inp, hidden, steps = (4 if lstm else 3), 24, 300, 40
    g = torch.Generator().manual_seed(12 + batch)
    s = hidden**-0.5
    w_ih = ((torch.rand(gates * hidden, inp, generator=g) * 2 - 1) * s).cuda()
    w_hh = ((torch.rand(gates * hidden, hidden, generator=g) * 2 - 1) * s).cuda()
    b_ih, b_hh = ((torch.rand(2, gates * hidden, generator=g) * 2 - 1) * s).cuda()
    x = torch.randn(steps, batch, inp, generator=g).cuda()
    scan = delta_cupy.delta_lstm_scan_cupy if lstm else delta_cupy.delta_gru_scan_cupy
    results = []
    for tagged in (True, False):
        monkeypatch.setattr(delta_cupy, "TAGGED_EXCHANGE", tagged)
        with torch.no_grad():
            out, final, trace = scan(x, None, w_ih, w_hh, b_ih, b_hh, theta_x=0.05, theta_h=0.02)
        results.append([out, *final, *trace])
    occupancy = (results[0][-1] != 0).float().mean().item()
    assert 0.02 < occupancy < 0.98, occupancy  # some hidden columns skipped, some read
    for a, b in zip(*results):
        assert torch.equal(a, b)
