"""CuPy ALIF kernels (cuda/alif.cu) against the PyTorch reference ``alif_scan``.

GPU tests (``@pytest.mark.gpu``) compare outputs, final states, traces and the gradients of
every input (current, initial state, τ_m, τ_adp, b0, β, W_hh, b_hh) with autograd of the
reference run on the same GPU. Tolerances, as max|a − b| / max(1, max|b|):
float64 1e-9 everywhere; float32 1e-5 on membranes and thresholds, 2e-4 on gradients; spikes
identical in both. The CPU tests check the backend's refusal paths and argument handling.
"""

from __future__ import annotations

import copy

import pytest
import torch

from evsnn.functional import alif_scan
from evsnn.functional.alif import ALIFState
from evsnn.ops import cupy_runtime as rt
from evsnn.ops import dispatch
from evsnn.ops.alif import cuda as alif_cuda
from evsnn.surrogate import ATan, FastSigmoid, Gaussian, MultiGaussian, SnnTorchSurrogate, Triangle

SURROGATES = {
    "multi_gaussian": MultiGaussian(),
    "triangle": Triangle(),
    "gaussian": Gaussian(),
    "atan": ATan(),
    "fast_sigmoid": FastSigmoid(),
    "multi_gaussian_trunc0.5": MultiGaussian().truncate(0.5),
    "multi_gaussian_trunc0.05": MultiGaussian().truncate(0.05),
    "triangle_trunc": Triangle(0.5).truncate(0.3),
}
TOL = {torch.float64: (1e-9, 1e-9), torch.float32: (1e-5, 2e-4)}


# --------------------------------------------------------------------------------------------
# CPU: argument handling and refusals (run everywhere)
# --------------------------------------------------------------------------------------------
def test_registered_with_dispatcher():
    assert "cupy" in dispatch.registered("alif")
    backend = dispatch._REGISTRY[("alif", "cupy")]
    # registered as the scan itself: torch.compile traces it down to its custom ops
    assert backend.fn is alif_cuda.alif_scan_cuda and backend.check is alif_cuda.check_cuda


@pytest.mark.parametrize(
    "surrogate, expected",
    [
        (Triangle(0.3, 2.0), (0, (0.3, 2.0, 0.0, 0.0), 0.0)),
        (Gaussian(0.4, 0.7), (1, (0.4, 0.7, 0.0, 0.0), 0.0)),
        (MultiGaussian(0.5, 0.15, 6.0, 0.5), (2, (0.5, 0.15, 6.0, 0.5), 0.0)),
        (ATan(3.0), (3, (3.0, 0.0, 0.0, 0.0), 0.0)),
        (FastSigmoid(10.0), (4, (10.0, 0.0, 0.0, 0.0), 0.0)),
        (MultiGaussian().truncate(0.5), (2, (0.5, 0.15, 6.0, 0.5), 0.5)),
        (ATan().truncate(0.7).truncate(0.2), (3, (2.0, 0.0, 0.0, 0.0), 0.2)),
    ],
)
def test_surrogate_kernel_args(surrogate, expected):
    assert alif_cuda.surrogate_kernel_args(surrogate) == expected


def test_surrogate_without_kernel_form_is_refused():
    sg = SnnTorchSurrogate(lambda x: (x > 0).float())
    assert alif_cuda.surrogate_kernel_args(sg) is None
    reason = alif_cuda.check_cuda(device=torch.device("cuda", 0), dtype=torch.float32, surrogate=sg)
    assert reason is not None
    if rt.unavailable_reason() is None:  # with a GPU the surrogate itself is the reason
        assert "kernel_spec" in reason


def test_check_cpu_tensor_names_cuda_and_install_hint():
    reason = alif_cuda.check_cuda(device=torch.device("cpu"), dtype=torch.float32, surrogate=MultiGaussian())
    assert reason is not None and "CUDA tensors" in reason and 'pip install "evsnn[cuda13]"' in reason


def test_explicit_cupy_on_cpu_raises_and_auto_falls_back_to_reference():
    with pytest.raises(dispatch.BackendUnavailable, match="CUDA tensors"):
        dispatch.resolve("alif", "cupy", device=torch.device("cpu"), dtype=torch.float32, surrogate=MultiGaussian())
    backend = dispatch.resolve("alif", "torch", device=torch.device("cpu"), dtype=torch.float32)
    assert backend.fn is alif_scan


def test_scan_on_cpu_tensor_raises_value_error():
    x = torch.randn(3, 2, 4)
    with pytest.raises(ValueError, match="CUDA tensors"):
        alif_cuda.alif_scan_cuda(x, None, tau_mem=torch.full((4,), 20.0), tau_adapt=torch.full((4,), 150.0))


def test_scan_rejects_bad_shapes_and_types():
    with pytest.raises(ValueError, match=r"\[T, B, N\]"):
        alif_cuda.alif_scan_cuda(torch.randn(2, 3), None, tau_mem=torch.ones(3), tau_adapt=torch.ones(3))
    like = torch.zeros(2, 3, 5)
    with pytest.raises(ValueError, match=r"shape \(5,\)"):
        alif_cuda._per_neuron("b0", torch.ones(4), 5, like)
    with pytest.raises(TypeError, match="float or a tensor"):
        alif_cuda._per_neuron("beta", "1.8", 5, like)
    assert torch.equal(alif_cuda._per_neuron("b0", 0.5, 5, like), torch.full((5,), 0.5))
    assert torch.equal(alif_cuda._per_neuron("b0", torch.tensor(2.0), 5, like), torch.full((5,), 2.0))


def test_kernel_block_size_matches_source():
    text = (rt.CUDA_DIR / alif_cuda.SOURCE).read_text()
    assert f"#define ALIF_REC_THREADS {alif_cuda.REC_THREADS}" in text


# --------------------------------------------------------------------------------------------
# GPU: against the reference
# --------------------------------------------------------------------------------------------
def _case(T, B, N, dtype, recurrent, seed, with_state=True, bias=True, device="cuda"):
    g = torch.Generator().manual_seed(seed)
    dev = torch.device(device)

    def leaf(t):
        return t.to(device=dev, dtype=dtype).requires_grad_(True)

    tau_mem = 20.0 + 5.0 * torch.randn(N, generator=g)
    tau_mem[0] = 0.5  # below one step: clamped to 1 by decay()
    tau_adapt = 150.0 + 10.0 * torch.randn(N, generator=g)
    tau_adapt[1::3] = 3.0  # fast adaptation, visible within a short sequence
    case = {
        "current": leaf(0.3 + torch.randn(T, B, N, generator=g)),
        "tau_mem": leaf(tau_mem),
        "tau_adapt": leaf(tau_adapt),
        "b0": leaf(0.01 + 0.05 * torch.rand(N, generator=g)),
        "beta": leaf(1.8 + 0.2 * torch.randn(N, generator=g)),
    }
    if with_state:
        case["v"] = leaf(0.5 * torch.rand(B, N, generator=g))
        case["b"] = leaf(0.01 + 0.1 * torch.rand(B, N, generator=g))
        case["s"] = leaf((torch.rand(B, N, generator=g) < 0.3).double())
    if recurrent:
        case["weight_hh"] = leaf(2.0 * torch.randn(N, N, generator=g) / N**0.5)
        if bias:
            case["bias_hh"] = leaf(0.1 * torch.randn(N, generator=g))
    weights = [torch.randn(T, B, N, generator=g) for _ in range(3)] + [torch.randn(B, N, generator=g) for _ in range(3)]
    return case, [w.to(device=dev, dtype=dtype) for w in weights]


def _run(fn, case, surrogate, weights):
    state = ALIFState(case["v"], case["b"], case["s"]) if "v" in case else None
    spikes, final, trace = fn(
        case["current"],
        state,
        tau_mem=case["tau_mem"],
        tau_adapt=case["tau_adapt"],
        b0=case["b0"],
        beta=case["beta"],
        surrogate=surrogate,
        weight_hh=case.get("weight_hh"),
        bias_hh=case.get("bias_hh"),
    )
    outs = [spikes, trace.v, trace.threshold, final.v, final.b, final.s]
    loss = sum((o * w).sum() for o, w in zip(outs, weights))
    names = sorted(case)
    grads = torch.autograd.grad(loss, [case[k] for k in names])
    return outs, dict(zip(names, grads))


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp(min=1.0)).item()


def _compare(case, surrogate, weights, dtype):
    out_tol, grad_tol = TOL[dtype]
    got, got_g = _run(alif_cuda.alif_scan_cuda, case, surrogate, weights)
    ref, ref_g = _run(alif_scan, case, surrogate, weights)
    rate = ref[0].mean().item()
    assert 0.005 < rate < 0.95, f"test case has a degenerate spike rate {rate}"
    for name, a, b in zip(("spikes", "v", "threshold", "v_T", "b_T", "s_T"), got, ref):
        if name in ("spikes", "s_T"):
            assert torch.equal(a, b), f"{name}: {(a != b).sum().item()} spikes differ"
        else:
            assert _rel(a, b) <= out_tol, f"{name}: rel err {_rel(a, b):.3g}"
    for name in ref_g:
        assert _rel(got_g[name], ref_g[name]) <= grad_tol, f"grad {name}: rel err {_rel(got_g[name], ref_g[name]):.3g}"


@pytest.mark.gpu
@pytest.mark.parametrize("recurrent", [False, True], ids=["ff", "rec"])
@pytest.mark.parametrize("sg_name", list(SURROGATES))
def test_float64_matches_reference_every_surrogate(recurrent, sg_name):
    case, weights = _case(9, 3, 37, torch.float64, recurrent, seed=1)
    _compare(case, SURROGATES[sg_name], weights, torch.float64)


@pytest.mark.gpu
@pytest.mark.parametrize("recurrent", [False, True], ids=["ff", "rec"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", [(12, 2, 130), (5, 5, 1), (1, 3, 257)], ids=str)
def test_odd_shapes(recurrent, dtype, shape):
    case, weights = _case(*shape, dtype, recurrent, seed=2)
    _compare(case, MultiGaussian(), weights, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("recurrent", [False, True], ids=["ff", "rec"])
def test_default_initial_state_and_no_bias(recurrent):
    # state=None: b starts at b0, so b0's gradient also collects the initial-state term.
    case, weights = _case(10, 4, 45, torch.float64, recurrent, seed=3, with_state=False, bias=False)
    _compare(case, MultiGaussian().truncate(0.5), weights, torch.float64)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_recurrent_many_units_per_block_and_several_tiles(monkeypatch, dtype):
    # N = 600 spans two 512-column tiles of the forward gather; 2 blocks walk 10 units each step.
    monkeypatch.setattr(rt, "sm_count", lambda index: 2)
    case, weights = _case(8, 2, 600, dtype, True, seed=4)
    _compare(case, MultiGaussian().truncate(0.5), weights, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("recurrent", [False, True], ids=["ff", "rec"])
def test_bitwise_identical_runs(recurrent):
    case, weights = _case(30, 4, 200, torch.float32, recurrent, seed=5)
    a, ga = _run(alif_cuda.alif_scan_cuda, case, MultiGaussian(), weights)
    b, gb = _run(alif_cuda.alif_scan_cuda, case, MultiGaussian(), weights)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    for k in ga:
        assert torch.equal(ga[k], gb[k]), k


@pytest.mark.gpu
@pytest.mark.parametrize("recurrent", [False, True], ids=["ff", "rec"])
def test_no_grad_forward_equals_reference(recurrent):
    case, _ = _case(15, 3, 70, torch.float64, recurrent, seed=6)
    kwargs = {k: case.get(k) for k in ("tau_mem", "tau_adapt", "b0", "beta", "weight_hh", "bias_hh")}
    state = ALIFState(case["v"], case["b"], case["s"])
    with torch.no_grad():
        s1, f1, t1 = alif_cuda.alif_scan_cuda(case["current"], state, **kwargs)
        s2, f2, t2 = alif_scan(case["current"], state, **kwargs)
    assert not s1.requires_grad
    assert torch.equal(s1, s2)
    for a, b in zip(list(f1) + list(t1), list(f2) + list(t2)):
        assert _rel(a, b) <= 1e-9


@pytest.mark.gpu
@pytest.mark.parametrize("recurrent", [False, True], ids=["ff", "rec"])
def test_layer_cupy_backend_equals_torch_backend(recurrent):
    from evsnn.nn import ALIF

    torch.manual_seed(7)
    ref = ALIF(16, 48, recurrent=recurrent, learn_threshold=True, backend="torch").cuda().double()
    fast = copy.deepcopy(ref)
    fast.backend = "cupy"
    x = torch.randn(11, 3, 16, device="cuda", dtype=torch.float64) * 2.0
    outs = []
    for layer in (ref, fast):
        spikes, final = layer(x)
        (spikes.sum() + final.v.pow(2).sum()).backward()
        outs.append((spikes, final, {n: p.grad.clone() for n, p in layer.named_parameters()}))
    assert torch.equal(outs[0][0], outs[1][0])
    for name, g in outs[0][2].items():
        assert _rel(outs[1][2][name], g) <= 1e-9, name
    assert fast.last_stats is not None and fast.last_stats.backward_sparsity is not None
