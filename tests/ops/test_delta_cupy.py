"""CuPy DeltaGRU / DeltaLSTM kernels against the reference scans (GPU; skipped without one).

Outputs, final states, trace deltas and every gradient against autograd of the reference:
float32 within stated tolerances, float64 to 1e-10; Θ = 0 equals cuDNN ``nn.GRU``/``nn.LSTM``;
two runs are bitwise identical.
"""

from __future__ import annotations

import pytest
import torch

from evsnn.functional import delta_gru_scan, delta_lstm_scan
from evsnn.functional.delta import DeltaGRUState, DeltaLSTMState
from evsnn.nn import DeltaGRU, DeltaLSTM
from evsnn.ops import dispatch
from evsnn.ops.delta.cuda import check_cuda, delta_gru_scan_cuda, delta_lstm_scan_cuda

pytestmark = pytest.mark.gpu

CELLS = {
    "gru": (3, delta_gru_scan, delta_gru_scan_cuda, DeltaGRUState),
    "lstm": (4, delta_lstm_scan, delta_lstm_scan_cuda, DeltaLSTMState),
}
# float32: relative L2 error ‖got − ref‖ / ‖ref‖ (sums in another order; T ≤ 24 steps).
F32_FWD, F32_GRAD = 2e-5, 2e-4


def _rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _setup(cell, steps, batch, inp, hidden, dtype, given_state, seed):
    gates, _, _, state_type = CELLS[cell]
    gen = torch.Generator().manual_seed(seed)
    s = 1.0 / hidden**0.5

    def u(*shape):
        return ((torch.rand(*shape, generator=gen, dtype=torch.float64) * 2 - 1) * s).to("cuda", dtype).requires_grad_()

    def n(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to("cuda", dtype).requires_grad_()

    params = (u(gates * hidden, inp), u(gates * hidden, hidden), u(gates * hidden), u(gates * hidden))
    x = n(steps, batch, inp)
    state = None
    if given_state:
        if state_type is DeltaGRUState:
            state = DeltaGRUState(
                n(batch, hidden, scale=0.5),
                n(batch, inp, scale=0.5),
                n(batch, hidden, scale=0.5),
                n(batch, 4 * hidden, scale=0.5),
            )
        else:
            state = DeltaLSTMState(
                *(
                    n(*sh, scale=0.5)
                    for sh in [(batch, hidden), (batch, hidden), (batch, inp), (batch, hidden), (batch, 4 * hidden)]
                )
            )
    return x, state, params


def _run(fn, x, state, params, theta, seed):
    out, final, trace = fn(x, state, *params, theta_x=theta[0], theta_h=theta[1])
    gen = torch.Generator().manual_seed(seed)

    def w(t):
        return torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.device, t.dtype)

    loss = (out * w(out)).sum() + sum((p * w(p)).sum() for p in final) + 0.1 * trace.delta_h.abs().sum()
    leaves = [t for t in [x, *params, *(state or ())] if t is not None]
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return out, final, trace, grads


def _compare(got, ref, fwd_tol, grad_tol):
    assert _rel(got[0], ref[0]) <= fwd_tol
    for a, b in zip(got[1], ref[1]):
        assert _rel(a, b) <= fwd_tol
    for a, b in zip(got[2], ref[2]):
        assert _rel(a, b) <= fwd_tol
    for a, b in zip(got[3], ref[3]):
        assert (a is None) == (b is None)
        if b is not None:
            assert torch.isfinite(a).all()
            assert _rel(a, b) <= grad_tol, _rel(a, b)


SHAPES = [
    # steps, batch, inp, hidden, (Θx, Θh), given state
    (7, 3, 5, 6, (0.0, 0.0), False),
    (11, 5, 17, 33, (0.3, 0.05), True),  # odd sizes, batch not a multiple of the 4-sample tile
    (9, 1, 8, 200, (0.2, 0.02), False),  # 2 units per block
    (6, 2, 12, 1030, (0.5, 0.05), True),  # 8 units per block on 132 SMs, partial last block
]


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize(("steps", "batch", "inp", "hidden", "theta", "given_state"), SHAPES)
def test_float32_matches_reference(cell, steps, batch, inp, hidden, theta, given_state):
    _, ref_fn, fn, _ = CELLS[cell]
    x, state, params = _setup(cell, steps, batch, inp, hidden, torch.float32, given_state, seed=hidden)
    ref = _run(ref_fn, x, state, params, theta, seed=3)
    got = _run(fn, x, state, params, theta, seed=3)
    _compare(got, ref, F32_FWD, F32_GRAD)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize(("steps", "batch", "inp", "hidden", "theta", "given_state"), SHAPES[1:3])
def test_float64_custom_backward_equals_autograd(cell, steps, batch, inp, hidden, theta, given_state):
    _, ref_fn, fn, _ = CELLS[cell]
    x, state, params = _setup(cell, steps, batch, inp, hidden, torch.float64, given_state, seed=7)
    ref = _run(ref_fn, x, state, params, theta, seed=4)
    got = _run(fn, x, state, params, theta, seed=4)
    for a, b in zip([got[0], *got[1], *got[2]], [ref[0], *ref[1], *ref[2]]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    for a, b in zip(got[3], ref[3]):
        if b is not None:
            torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


@pytest.mark.parametrize(("cls", "torch_cls"), [(DeltaGRU, torch.nn.GRU), (DeltaLSTM, torch.nn.LSTM)])
def test_theta_zero_equals_cudnn(cls, torch_cls, monkeypatch):
    # cuDNN's RNNs use TF32 by default; the comparison is about fp32.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    rnn = torch_cls(24, 96).cuda()
    layer = cls.from_torch(rnn, backend="cupy")
    x = torch.randn(20, 4, 24, device="cuda", requires_grad=True)
    h, _ = layer(x)
    h_ref, _ = rnn(x)
    assert _rel(h, h_ref) <= 2e-5
    g = torch.randn_like(h)
    (gx,) = torch.autograd.grad(h, x, g)
    (gx_ref,) = torch.autograd.grad(h_ref, x, g)
    assert _rel(gx, gx_ref) <= F32_GRAD


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_bitwise_deterministic(cell):
    _, _, fn, _ = CELLS[cell]
    x, state, params = _setup(cell, 10, 6, 9, 70, torch.float32, True, seed=11)
    a = _run(fn, x, state, params, (0.2, 0.03), seed=5)
    b = _run(fn, x, state, params, (0.2, 0.03), seed=5)
    assert torch.equal(a[0], b[0])
    for p, q in zip(a[3], b[3]):
        assert (p is None and q is None) or torch.equal(p, q)


def test_inference_without_grad_and_layer_dispatch():
    layer = DeltaGRU(16, 64, theta_x=0.1, theta_h=0.02, backend="cupy").cuda()
    x = torch.randn(15, 3, 16, device="cuda")
    with torch.no_grad():
        h, final = layer(x)
        ref, ref_final, _ = delta_gru_scan(
            x, None, layer.weight_ih, layer.weight_hh, layer.bias_ih, layer.bias_hh, theta_x=0.1, theta_h=0.02
        )
    assert _rel(h, ref) <= F32_FWD
    assert _rel(final.m, ref_final.m) <= F32_FWD
    assert layer.last_stats is not None
    assert (
        dispatch.resolve("delta_gru", "cupy", device=x.device, dtype=x.dtype, theta_x=0.1, theta_h=0.0).name == "cupy"
    )


def test_check_reasons():
    assert "CUDA tensors" in check_cuda(device=torch.device("cpu"), dtype=torch.float32)
    assert "float32 and float64" in check_cuda(device=torch.device("cuda"), dtype=torch.float16)
    assert "Python float" in check_cuda(device=torch.device("cuda"), dtype=torch.float32, theta_h=torch.tensor(0.1))
    assert check_cuda(device=torch.device("cuda"), dtype=torch.float32, shape=(5, 2, 10**7)) is not None
