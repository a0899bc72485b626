"""CuPy EGRU kernels against the PyTorch reference (SPEC.md §3).

GPU tests (``@pytest.mark.gpu``) skip without CUDA + CuPy. The float64 runs must agree with the
float64 reference to ~1e-10 with identical event masks; float32 runs agree with the float32
reference within the stated tolerance (rtol 1e-4 on outputs, 1e-3 relative-norm on gradients:
the reference sums the recurrent product densely in a different order, and BPTT over T steps
compounds rounding). The host-side helpers (weight packing, surrogate packing, checks) are
tested on any machine.
"""

from __future__ import annotations

import math

import pytest
import torch

from evsnn.functional.egru import EGRUState, egru_scan
from evsnn.ops import cupy_runtime as rt
from evsnn.ops import dispatch
from evsnn.ops.egru import cuda as ec
from evsnn.surrogate import ATan, FastSigmoid, Gaussian, MultiGaussian, Triangle

GPU_REASON = rt.unavailable_reason()
gpu = [pytest.mark.gpu, pytest.mark.skipif(GPU_REASON is not None, reason=f"no GPU/CuPy: {GPU_REASON}")]


# ----------------------------------------------------------------------------- host-side helpers
@pytest.mark.parametrize("hidden,u", [(5, 2), (8, 4), (7, 1)])
def test_pack_forward_layout(hidden: int, u: int) -> None:
    w = torch.randn(3 * hidden, hidden, dtype=torch.float64)
    nb = math.ceil(hidden / u)
    packed = ec._pack_forward(w, u, nb)
    assert packed.shape == (nb, hidden, 3 * u + 1)
    for k in range(nb):
        for j in range(hidden):
            for g in range(3):
                for v in range(u):
                    unit = k * u + v
                    want = w[g * hidden + unit, j] if unit < hidden else 0.0
                    assert packed[k, j, g * u + v] == want
            assert packed[k, j, 3 * u] == 0.0


@pytest.mark.parametrize("hidden,u", [(5, 2), (8, 4)])
def test_pack_backward_layout(hidden: int, u: int) -> None:
    w = torch.randn(3 * hidden, hidden, dtype=torch.float64)
    nb = math.ceil(hidden / u)
    packed = ec._pack_backward(w, u, nb)
    assert packed.shape == (nb, u, 3 * hidden)
    for k in range(nb):
        for v in range(u):
            unit = k * u + v
            want = w[:, unit] if unit < hidden else torch.zeros(3 * hidden, dtype=torch.float64)
            assert torch.equal(packed[k, v], want)


def test_surrogate_kernel_args() -> None:
    args = ec.surrogate_kernel_args(Triangle(0.3), torch.float32)
    assert int(args[0]) == 0 and args[1] == pytest.approx(0.3) and args[2] == pytest.approx(1 / 0.3)
    assert float(args[5]) == 0.0
    args = ec.surrogate_kernel_args(MultiGaussian().truncate(1.5), torch.float64)
    assert int(args[0]) == 2 and [float(a) for a in args[1:]] == [0.5, 0.15, 6.0, 0.5, 1.5]
    args = ec.surrogate_kernel_args(ATan(3.0), torch.float64)
    assert int(args[0]) == 3 and [float(a) for a in args[1:]] == [3.0, 0.0, 0.0, 0.0, 0.0]
    # nested truncation: the smallest support wins, as Truncated.grad does
    args = ec.surrogate_kernel_args(Triangle(0.5).truncate(0.4).truncate(0.2), torch.float64)
    assert float(args[5]) == pytest.approx(0.2)


def test_units_per_block() -> None:
    assert ec.units_per_block(128, 132) == 1
    assert ec.units_per_block(512, 132) == 4
    assert ec.units_per_block(1024, 132) == 8
    assert ec.units_per_block(16 * 132 + 1, 132) is None


def test_check_reports_cpu_and_options() -> None:
    reason = ec.check_cuda(device=torch.device("cpu"), dtype=torch.float32)
    assert reason is not None and 'pip install "evsnn[cuda13]"' in reason
    with pytest.raises(dispatch.BackendUnavailable, match="cuda13"):
        dispatch.resolve("egru", "cupy", torch.device("cpu"), dtype=torch.float32)


# ----------------------------------------------------------------------------- GPU comparisons
def _problem(steps, batch, inp, hidden, dtype, with_state, bias=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    bound = 1.0 / math.sqrt(hidden)

    def u(*shape, scale=bound):
        return ((torch.rand(*shape, generator=gen, dtype=torch.float64) * 2 - 1) * scale).to(dtype).cuda()

    x = torch.randn(steps, batch, inp, generator=gen, dtype=torch.float64).to(dtype).cuda()
    params = {
        "weight_ih": u(3 * hidden, inp, scale=3 * bound),
        "weight_hh": u(3 * hidden, hidden, scale=3 * bound),
        "bias_ih": u(3 * hidden) if bias else None,
        "bias_hh": u(3 * hidden) if bias else None,
        "threshold": (0.05 + 0.2 * torch.rand(hidden, generator=gen, dtype=torch.float64)).to(dtype).cuda(),
    }
    state = None
    if with_state:
        c = torch.randn(batch, hidden, generator=gen, dtype=torch.float64).to(dtype).cuda() * 0.3
        y = torch.where(c > params["threshold"], c, torch.zeros_like(c))
        state = EGRUState(c, y)
    return x, state, params


def _run(fn, x, state, params, reset, surrogate, weights):
    leaves = {"x": x.clone().requires_grad_(True)}
    p = {k: (None if v is None else v.clone().requires_grad_(True)) for k, v in params.items()}
    leaves.update({k: v for k, v in p.items() if v is not None})
    st = None
    if state is not None:
        st = EGRUState(state.c.clone().requires_grad_(True), state.y.clone().requires_grad_(True))
        leaves["c0"], leaves["y0"] = st.c, st.y
    out, final, trace = fn(leaves["x"], st, reset=reset, surrogate=surrogate, **p)
    w_out, w_c, w_y = weights
    loss = (out * w_out).sum() + (final.c * w_c).sum() + (final.y * w_y).sum()
    loss.backward()
    grads = {k: v.grad for k, v in leaves.items()}
    return out.detach(), final, trace.c_pre.detach(), grads


def _compare(steps, batch, inp, hidden, dtype, reset, with_state, surrogate=None, bias=True, seed=0):
    surrogate = surrogate or Triangle(0.3)
    x, state, params = _problem(steps, batch, inp, hidden, dtype, with_state, bias, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    weights = tuple(
        torch.randn(*s, generator=gen, dtype=torch.float64).to(dtype).cuda()
        for s in ((steps, batch, hidden), (batch, hidden), (batch, hidden))
    )
    got = _run(ec.egru_scan_cuda, x, state, params, reset, surrogate, weights)
    want = _run(egru_scan, x, state, params, reset, surrogate, weights)
    return got, want


def _assert_close(got, want, dtype):
    out, final, c_pre, grads = got
    r_out, r_final, r_c_pre, r_grads = want
    activity = (r_out != 0).double().mean().item()
    assert 0.01 < activity < 0.9, f"test problem has degenerate activity {activity}"
    assert torch.equal(out != 0, r_out != 0), "event masks differ"
    tol = {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-5}
    torch.testing.assert_close(out, r_out, **tol)
    torch.testing.assert_close(c_pre, r_c_pre, **tol)
    torch.testing.assert_close(final.c.detach(), r_final.c.detach(), **tol)
    torch.testing.assert_close(final.y.detach(), r_final.y.detach(), **tol)
    assert set(grads) == set(r_grads)
    for name, g in grads.items():
        ref = r_grads[name]
        assert g is not None and ref is not None, name
        if dtype == torch.float64:
            torch.testing.assert_close(g, ref, rtol=1e-9, atol=1e-10, msg=lambda m, n=name: f"{n}: {m}")
        else:
            err = (g.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-12)
            assert err < 1e-3, f"{name}: relative error {err:.2e}"


CASES = [
    # steps, batch, inp, hidden, reset, with_state
    (7, 3, 5, 37, "output", False),
    (7, 3, 5, 37, "threshold", True),
    (1, 1, 4, 33, "output", True),
    (1, 2, 3, 20, "threshold", False),
    (6, 1, 16, 150, "output", True),
    (5, 4, 9, 300, "threshold", True),
    (4, 2, 8, 520, "output", False),
]


@pytest.mark.parametrize("steps,batch,inp,hidden,reset,with_state", CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.gpu
@pytest.mark.skipif(GPU_REASON is not None, reason=f"no GPU/CuPy: {GPU_REASON}")
def test_matches_reference(steps, batch, inp, hidden, reset, with_state, dtype) -> None:
    got, want = _compare(steps, batch, inp, hidden, dtype, reset, with_state)
    _assert_close(got, want, dtype)


@pytest.mark.parametrize(
    "surrogate",
    [Gaussian(), MultiGaussian(), ATan(), FastSigmoid(), Gaussian().truncate(0.2), Triangle(0.5, 1.0)],
    ids=lambda s: repr(s)[:24],
)
@pytest.mark.parametrize("reset", ["output", "threshold"])
@pytest.mark.gpu
@pytest.mark.skipif(GPU_REASON is not None, reason=f"no GPU/CuPy: {GPU_REASON}")
def test_surrogates(surrogate, reset) -> None:
    got, want = _compare(6, 3, 5, 45, torch.float64, reset, True, surrogate=surrogate, seed=3)
    _assert_close(got, want, torch.float64)


@pytest.mark.gpu
@pytest.mark.skipif(GPU_REASON is not None, reason=f"no GPU/CuPy: {GPU_REASON}")
def test_no_bias_and_global_weights(monkeypatch) -> None:
    # A shared-memory limit that holds only the backward's event list (B·U·4 <= 3·16·4 bytes): W_hh is
    # then read from global memory in both directions, the path of large H or float64.
    monkeypatch.setattr(ec, "_smem_limit", lambda index: 3 * 16 * 4)
    for reset in ("output", "threshold"):
        got, want = _compare(5, 3, 6, 70, torch.float64, reset, True, bias=False, seed=5)
        _assert_close(got, want, torch.float64)


@pytest.mark.gpu
@pytest.mark.skipif(GPU_REASON is not None, reason=f"no GPU/CuPy: {GPU_REASON}")
def test_bitwise_deterministic() -> None:
    runs = [_compare(9, 5, 7, 260, torch.float32, "output", True, seed=7)[0] for _ in range(2)]
    (o1, f1, c1, g1), (o2, f2, c2, g2) = runs
    assert torch.equal(o1, o2) and torch.equal(c1, c2) and torch.equal(f1.c, f2.c)
    for name in g1:
        assert torch.equal(g1[name], g2[name]), name


@pytest.mark.gpu
@pytest.mark.skipif(GPU_REASON is not None, reason=f"no GPU/CuPy: {GPU_REASON}")
def test_layer_dispatch_auto_picks_cupy() -> None:
    from evsnn.nn import EGRU

    torch.manual_seed(0)
    layer = EGRU(6, 40, threshold=0.1, backend="auto").cuda().double()
    ref = EGRU(6, 40, threshold=0.1, backend="torch").cuda().double()
    ref.load_state_dict(layer.state_dict())
    assert dispatch.resolve("egru", "auto", torch.device("cuda"), dtype=torch.float64).name == "cupy"
    x = torch.randn(5, 2, 6, device="cuda", dtype=torch.float64)
    y, st = layer(x)
    y_ref, st_ref = ref(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(st.c, st_ref.c, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="zoneout"):
        ec.egru_scan_cuda(x, None, layer.weight_ih, layer.weight_hh, None, None, layer.threshold, zoneout=0.1)
