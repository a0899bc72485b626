"""The symmetric sparse BPTT of the delta cells (evsnn/ops/delta/cuda.py) on CPU, float64.

The ``"torch"`` engine runs the same recurrences as the CUDA kernels in torch ops; its forward must
equal the reference scan and its custom backward must equal autograd of the reference to 1e-10.
"""

from __future__ import annotations

import pytest
import torch

from evsnn.functional import delta_gru_scan, delta_lstm_scan
from evsnn.functional.delta import DeltaGRUState, DeltaLSTMState
from evsnn.ops.delta.cuda import (
    _input_memory_backward,
    _pack_weights,
    delta_gru_scan_bptt,
    delta_lstm_scan_bptt,
    units_per_block,
)

TOL = 1e-10
CELLS = {
    "gru": (3, delta_gru_scan, delta_gru_scan_bptt, DeltaGRUState),
    "lstm": (4, delta_lstm_scan, delta_lstm_scan_bptt, DeltaLSTMState),
}


def _params(gates, inp, hidden, gen, bias=True):
    s = 1.0 / hidden**0.5
    w_ih = ((torch.rand(gates * hidden, inp, generator=gen, dtype=torch.float64) * 2 - 1) * s).requires_grad_()
    w_hh = ((torch.rand(gates * hidden, hidden, generator=gen, dtype=torch.float64) * 2 - 1) * s).requires_grad_()
    if not bias:
        return w_ih, w_hh, None, None
    b_ih = ((torch.rand(gates * hidden, generator=gen, dtype=torch.float64) * 2 - 1) * s).requires_grad_()
    b_hh = ((torch.rand(gates * hidden, generator=gen, dtype=torch.float64) * 2 - 1) * s).requires_grad_()
    return w_ih, w_hh, b_ih, b_hh


def _random_state(state_type, batch, inp, hidden, gen):
    def r(*shape):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * 0.5).requires_grad_()

    if state_type is DeltaGRUState:
        return DeltaGRUState(r(batch, hidden), r(batch, inp), r(batch, hidden), r(batch, 4 * hidden))
    return DeltaLSTMState(r(batch, hidden), r(batch, hidden), r(batch, inp), r(batch, hidden), r(batch, 4 * hidden))


def _loss(out, final, trace, gen):
    """A random linear functional of everything the scan returns (incl. the trace: an L1-like cost)."""
    total = (out * torch.randn(out.shape, generator=gen, dtype=out.dtype)).sum()
    for part in final:
        total = total + (part * torch.randn(part.shape, generator=gen, dtype=part.dtype)).sum()
    total = (
        total
        + 0.3 * trace.delta_h.abs().sum()
        + 0.2 * (trace.delta_x * torch.randn(trace.delta_x.shape, generator=gen, dtype=out.dtype)).sum()
    )
    return total


def _run(fn, x, state, params, theta, seed, **kw):
    out, final, trace = fn(x, state, *params, theta_x=theta[0], theta_h=theta[1], **kw)
    loss = _loss(out, final, trace, torch.Generator().manual_seed(seed))
    leaves = [x, *params] + ([] if state is None else list(state))
    leaves = [t for t in leaves if t is not None]
    # With a given state the biases are unused (they only set the initial accumulators).
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return out, final, trace, grads


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize(
    ("steps", "batch", "inp", "hidden", "theta", "given_state", "bias"),
    [
        (7, 3, 5, 6, (0.0, 0.0), False, True),
        (9, 2, 4, 5, (0.3, 0.05), True, True),
        (6, 1, 3, 7, (0.5, 0.1), False, False),
        (5, 4, 6, 3, (0.2, 0.2), True, False),
    ],
)
def test_sparse_bptt_equals_autograd_of_reference(cell, steps, batch, inp, hidden, theta, given_state, bias):
    gates, ref_fn, fn, state_type = CELLS[cell]
    gen = torch.Generator().manual_seed(steps * 100 + hidden)
    params = _params(gates, inp, hidden, gen, bias)
    x = torch.randn(steps, batch, inp, generator=gen, dtype=torch.float64).requires_grad_()
    state = _random_state(state_type, batch, inp, hidden, gen) if given_state else None

    ref = _run(ref_fn, x, state, params, theta, seed=1)
    got = _run(fn, x, state, params, theta, seed=1, engine="torch")

    torch.testing.assert_close(got[0], ref[0], rtol=0, atol=TOL)
    for a, b in zip(got[1], ref[1]):
        torch.testing.assert_close(a, b, rtol=0, atol=TOL)
    for a, b in zip(got[2], ref[2]):
        torch.testing.assert_close(a, b, rtol=0, atol=TOL)
    assert len(got[3]) == len(ref[3])
    for a, b in zip(got[3], ref[3]):
        assert (a is None) == (b is None)
        if b is not None:
            torch.testing.assert_close(a, b, rtol=0, atol=TOL)
    assert sum(g is not None for g in ref[3]) >= 3
    if theta[1] > 0:
        # The thresholds must really have masked something, or this test would not test sparsity.
        assert (ref[2].delta_h == 0).any() and (ref[2].delta_h != 0).any()


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_gradcheck_of_sparse_bptt(cell):
    """Finite differences of the twin itself (masks fixed away from the thresholds by small steps)."""
    gates, _, fn, _ = CELLS[cell]
    gen = torch.Generator().manual_seed(5)
    params = _params(gates, 3, 4, gen)
    x = torch.randn(4, 2, 3, generator=gen, dtype=torch.float64).requires_grad_()

    def f(x, w_ih, w_hh, b_ih, b_hh):
        out, final, trace = fn(x, None, w_ih, w_hh, b_ih, b_hh, theta_x=0.1, theta_h=0.01, engine="torch")
        return out, final.m, trace.delta_h

    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-7, atol=1e-6)


def test_input_memory_backward_matches_loop():
    """The vectorised input-encoder backward equals its step-by-step recurrence."""
    gen = torch.Generator().manual_seed(0)
    steps, batch, inp = 8, 3, 5
    dx = torch.randn(steps, batch, inp, generator=gen, dtype=torch.float64)
    dx = dx * (torch.rand(steps, batch, inp, generator=gen) < 0.4)
    e_x = torch.randn(steps, batch, inp, generator=gen, dtype=torch.float64)
    g_t = torch.randn(batch, inp, generator=gen, dtype=torch.float64)
    lam = g_t.clone()
    g_x = torch.zeros_like(dx)
    for t in range(steps - 1, -1, -1):
        m = dx[t] != 0
        g_x[t] = torch.where(m, e_x[t] + lam, torch.zeros_like(lam))
        lam = torch.where(m, -e_x[t], lam)
    got_x, got_x0 = _input_memory_backward(dx, e_x, g_t)
    torch.testing.assert_close(got_x, g_x, rtol=0, atol=0)
    torch.testing.assert_close(got_x0, lam, rtol=0, atol=0)


@pytest.mark.parametrize("lstm", [False, True])
def test_packed_weights_layout(lstm):
    gates, hidden, inp = (4 if lstm else 3), 3, 2
    w_ih = torch.arange(gates * hidden * inp, dtype=torch.float64).reshape(gates * hidden, inp) + 1
    w_hh = -torch.arange(gates * hidden * hidden, dtype=torch.float64).reshape(gates * hidden, hidden) - 1
    wp = _pack_weights(w_ih, w_hh, lstm)
    assert wp.shape == (inp + hidden, hidden, 4)
    ih_slots = (0, 1, 2, 3) if lstm else (0, 1, 2)
    hh_slots = (0, 1, 2, 3) if lstm else (0, 1, 3)
    for k in range(inp):
        for j in range(hidden):
            for g, s in enumerate(ih_slots):
                assert wp[k, j, s] == w_ih[g * hidden + j, k]
            if not lstm:
                assert wp[k, j, 3] == 0
    for k in range(hidden):
        for j in range(hidden):
            for g, s in enumerate(hh_slots):
                assert wp[inp + k, j, s] == w_hh[g * hidden + j, k]
            if not lstm:
                assert wp[inp + k, j, 2] == 0


def test_units_per_block():
    assert units_per_block(1024, 132) == 8
    assert units_per_block(100, 132) == 1
    assert units_per_block(133, 132) == 2
    with pytest.raises(ValueError, match="units per block"):
        units_per_block(10**6, 132)


def test_bad_arguments():
    gen = torch.Generator().manual_seed(0)
    params = _params(3, 2, 3, gen)
    x = torch.randn(4, 1, 2, dtype=torch.float64)
    with pytest.raises(TypeError, match="theta_h must be a Python float"):
        delta_gru_scan_bptt(x, None, *params, theta_h=torch.tensor(0.1), engine="torch")
    with pytest.raises(ValueError, match="theta_x must be a finite number >= 0"):
        delta_gru_scan_bptt(x, None, *params, theta_x=-1.0, engine="torch")
    with pytest.raises(ValueError, match="engine must be one of"):
        delta_gru_scan_bptt(x, None, *params, engine="numba")
    with pytest.raises(ValueError, match=r"\[T, B, input_size\]"):
        delta_gru_scan_bptt(x[0], None, *params, engine="torch")
    with pytest.raises(ValueError, match=r"weight_ih must be \[3H, I\]"):
        delta_gru_scan_bptt(x, None, params[1], params[1], None, None, engine="torch")
    with pytest.raises(TypeError, match="weight_ih is torch.float32"):
        delta_gru_scan_bptt(x, None, params[0].float(), params[1], None, None, engine="torch")
    with pytest.raises(ValueError, match="cupy engine cannot run this call: the CuPy backend runs on CUDA tensors"):
        delta_gru_scan_bptt(x, None, *params, engine="cupy")


def test_cupy_backend_registered_and_refuses_cpu_tensors():
    from evsnn.ops.dispatch import BackendUnavailable, registered, resolve

    assert "cupy" in registered("delta_gru") and "cupy" in registered("delta_lstm")
    with pytest.raises(BackendUnavailable, match="CUDA tensors"):
        resolve("delta_lstm", "cupy", device=torch.device("cpu"), dtype=torch.float32, theta_x=0.0, theta_h=0.0)


def test_inference_mode_skips_saved_state_and_matches_reference():
    gen = torch.Generator().manual_seed(3)
    params = _params(4, 3, 5, gen)
    x = torch.randn(6, 2, 3, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        out, final, _ = delta_lstm_scan_bptt(x, None, *params, theta_x=0.1, theta_h=0.05, engine="torch")
        ref, ref_final, _ = delta_lstm_scan(x, None, *params, theta_x=0.1, theta_h=0.05)
    assert out.grad_fn is None
    torch.testing.assert_close(out, ref, rtol=0, atol=TOL)
    torch.testing.assert_close(final.c, ref_final.c, rtol=0, atol=TOL)
