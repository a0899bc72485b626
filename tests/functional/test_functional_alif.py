"""ALIF reference math (SPEC §2): a hand trace, the non-adaptive mode, step == scan, gradcheck."""

from __future__ import annotations

import math

import pytest
import torch

import evsnn
from evsnn import surrogate as sg
from evsnn.functional import (
    ALIFState,
    alif_initial_state,
    alif_scan,
    alif_step,
    decay,
    leaky_readout_scan,
    leaky_readout_step,
)

F64 = torch.float64

pytestmark = pytest.mark.usefixtures("single_thread")


def _hand_trace(current: float, tau_m: float, tau_a: float, b0: float, beta: float, steps: int):
    """SPEC §2 with plain Python floats, one neuron."""
    alpha, rho = math.exp(-1.0 / tau_m), math.exp(-1.0 / tau_a)
    v, b, s = 0.0, b0, 0.0
    vs, thresholds, spikes = [], [], []
    for _ in range(steps):
        b = rho * b + (1.0 - rho) * s
        threshold = b0 + beta * b
        v = alpha * v + (1.0 - alpha) * current - threshold * s
        s = 1.0 if v - threshold > 0 else 0.0
        vs.append(v)
        thresholds.append(threshold)
        spikes.append(s)
    return vs, thresholds, spikes


def test_one_neuron_constant_current_matches_hand_trace():
    steps, current, tau_m, tau_a, b0, beta = 60, 0.5, 5.0, 10.0, 0.01, 1.8
    vs, ths, spikes = _hand_trace(current, tau_m, tau_a, b0, beta, steps)
    # the trace is non-trivial: several spikes, and never within rounding of the threshold
    assert sum(spikes) >= 5 and min(abs(v - t) for v, t in zip(vs, ths)) > 1e-4

    i = torch.full((steps, 1, 1), current, dtype=F64)
    out, final, trace = alif_scan(
        i, None, tau_mem=torch.tensor([tau_m], dtype=F64), tau_adapt=torch.tensor([tau_a], dtype=F64), b0=b0, beta=beta
    )
    assert out.flatten().tolist() == spikes
    torch.testing.assert_close(trace.v.flatten(), torch.tensor(vs, dtype=F64), rtol=0, atol=1e-6)
    torch.testing.assert_close(trace.threshold.flatten(), torch.tensor(ths, dtype=F64), rtol=0, atol=1e-6)
    assert final.v.item() == pytest.approx(vs[-1], abs=1e-6) and final.s.item() == spikes[-1]

    # the same through the layer: one input, weight 1, no bias, fixed τ, in float32
    layer = evsnn.ALIF(1, 1, recurrent=False, bias=False, tau_mem=tau_m, tau_adapt=tau_a, b0=b0, beta=beta)
    with torch.no_grad():
        layer.weight_ih.fill_(1.0)
    spk, _ = layer(torch.full((steps, 1, 1), current))
    assert spk.flatten().tolist() == spikes


def test_non_adaptive_threshold_stays_at_b0():
    b0 = 0.2
    i = torch.rand(40, 3, 4, dtype=F64) * 1.5
    tau = torch.full((4,), 4.0, dtype=F64)
    out, _, trace = alif_scan(i, None, tau_mem=tau, tau_adapt=tau * 10, b0=b0, beta=0.0)
    assert out.sum() > 10  # it spikes, and still the threshold does not move
    assert (trace.threshold == b0).all()

    layer = evsnn.ALIF(4, 5, adaptive=False, b0=b0, dtype=F64)
    assert (layer.beta == 0).all()
    x = torch.rand(30, 2, 4, dtype=F64) * 4
    layer_out, _ = layer(x)
    cur = torch.nn.functional.linear(x, layer.weight_ih, layer.bias_ih)
    ref, _, tr = alif_scan(
        cur,
        None,
        tau_mem=layer.tau_mem,
        tau_adapt=layer.tau_adapt,
        b0=layer.b0,
        beta=layer.beta,
        surrogate=layer.surrogate,
        weight_hh=layer.weight_hh,
        bias_hh=layer.bias_hh,
    )
    assert torch.equal(layer_out, ref)
    assert (tr.threshold == b0).all()


def test_adaptive_threshold_rises_after_a_spike():
    i = torch.full((3, 1, 1), 10.0, dtype=F64)
    tau = torch.tensor([2.0], dtype=F64)
    out, _, trace = alif_scan(i, None, tau_mem=tau, tau_adapt=tau, b0=0.01, beta=1.8)
    assert out[0].item() == 1.0
    # b_0 = ρ·b0 (no spike yet), b_1 = ρ·b_0 + (1 − ρ)·s_0, B_1 = b0 + 1.8·b_1
    rho = math.exp(-0.5)
    assert trace.threshold[0].item() == pytest.approx(0.01 + 1.8 * rho * 0.01, abs=1e-12)
    assert trace.threshold[1].item() == pytest.approx(0.01 + 1.8 * (rho * rho * 0.01 + 1 - rho), abs=1e-12)


def test_step_loop_equals_scan_recurrent():
    steps, batch, n = 12, 3, 6
    cur = torch.randn(steps, batch, n, dtype=F64)
    w = torch.randn(n, n, dtype=F64) * 0.5
    bias = torch.randn(n, dtype=F64) * 0.1
    tau_m = torch.rand(n, dtype=F64) * 10 + 2
    tau_a = torch.rand(n, dtype=F64) * 50 + 20
    out, final, _ = alif_scan(cur, None, tau_mem=tau_m, tau_adapt=tau_a, weight_hh=w, bias_hh=bias)
    state = alif_initial_state(cur[0], 0.01)
    spikes = []
    for t in range(steps):
        s, state = alif_step(cur[t] + state.s @ w.t() + bias, state, tau_mem=tau_m, tau_adapt=tau_a)
        spikes.append(s)
    assert out.sum() > 0
    torch.testing.assert_close(torch.stack(spikes), out, rtol=0, atol=0)
    for a, b in zip(state, final):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_initial_state_and_decay_clamp():
    st = alif_initial_state(torch.zeros(2, 3), 0.05)
    assert isinstance(st, ALIFState)
    assert (st.v == 0).all() and (st.s == 0).all() and torch.allclose(st.b, torch.full((2, 3), 0.05))
    # τ < 1 step is clamped to 1: exp(−1/τ) never falls below e^−1
    torch.testing.assert_close(
        decay(torch.tensor([0.1, -3.0, 1.0, 20.0], dtype=F64)),
        torch.tensor([math.exp(-1), math.exp(-1), math.exp(-1), math.exp(-1 / 20)], dtype=F64),
    )


def test_leaky_readout_by_hand():
    tau = torch.tensor([2.0], dtype=F64)
    a = math.exp(-0.5)
    cur = torch.tensor([1.0, 0.0, 2.0], dtype=F64).view(3, 1, 1)
    m = leaky_readout_scan(cur, None, tau=tau).flatten().tolist()
    m0 = (1 - a) * 1.0
    m1 = a * m0
    m2 = a * m1 + (1 - a) * 2.0
    assert m == pytest.approx([m0, m1, m2], abs=1e-12)
    assert leaky_readout_step(cur[2], torch.tensor([[m1]], dtype=F64), tau=tau).item() == pytest.approx(m2, abs=1e-12)


def test_gradcheck_alif_step():
    # A truncated surrogate with all v − B outside its support: the spikes do not flip under the
    # finite differences and their pseudo-derivative is exactly 0, so the numeric and analytic
    # Jacobians of (v, b, s) must agree, through α(τ_m), ρ(τ_adp), the reset and the threshold.
    support = 0.01
    surrogate = sg.multi_gaussian().truncate(support)
    batch, n = 3, 4
    current = (torch.randn(batch, n, dtype=F64).sign() * (2.0 + torch.rand(batch, n, dtype=F64))).requires_grad_()
    v = (torch.randn(batch, n, dtype=F64) * 0.3).requires_grad_()
    b = (0.01 + torch.rand(batch, n, dtype=F64) * 0.2).requires_grad_()
    s = (torch.rand(batch, n, dtype=F64) > 0.5).to(F64).requires_grad_()
    tau_m = (torch.rand(n, dtype=F64) * 5 + 2).requires_grad_()
    tau_a = (torch.rand(n, dtype=F64) * 20 + 5).requires_grad_()

    def f(current, v, b, s, tau_m, tau_a):
        out, st = alif_step(current, ALIFState(v, b, s), tau_mem=tau_m, tau_adapt=tau_a, surrogate=surrogate)
        return out, st.v, st.b

    with torch.no_grad():
        out, v1, b1 = f(current, v, b, s, tau_m, tau_a)
        margin = (v1 - (0.01 + 1.8 * b1)).abs().min().item()
    assert margin > 2 * support, margin
    assert 0 < out.sum() < out.numel()  # both spiking and silent units
    assert torch.autograd.gradcheck(f, (current, v, b, s, tau_m, tau_a))


def test_gradient_reaches_threshold_and_tau_through_surrogate():
    # Nothing detached (SPEC §2): ∂s/∂v = g(v − B) and ∂s/∂b = −β g(v − B).
    surrogate = sg.gaussian()
    v = torch.tensor([[0.3]], dtype=F64, requires_grad=True)
    b = torch.tensor([[0.05]], dtype=F64, requires_grad=True)
    zero = torch.zeros(1, 1, dtype=F64)
    tau = torch.tensor([1e9], dtype=F64)  # α ≈ 1, ρ ≈ 1: v_t ≈ v_{t−1}, b_t ≈ b_{t−1}
    s, _ = alif_step(zero, ALIFState(v, b, zero), tau_mem=tau, tau_adapt=tau, b0=0.01, beta=1.8, surrogate=surrogate)
    s.sum().backward()
    x = torch.tensor([0.3 - (0.01 + 1.8 * 0.05)], dtype=F64)
    g = surrogate.grad(x).item()
    assert v.grad.item() == pytest.approx(g, rel=1e-6)
    assert b.grad.item() == pytest.approx(-1.8 * g, rel=1e-6)
