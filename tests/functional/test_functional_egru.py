"""EGRU reference math (SPEC §3): events only where c − θ > 0, both resets, θ > 0, gradcheck."""

from __future__ import annotations

import pytest
import torch

from evsnn import surrogate as sg
from evsnn.functional import EGRUState, egru_initial_state, egru_scan, egru_step

F64 = torch.float64

pytestmark = pytest.mark.usefixtures("single_thread")


def _params(i: int, h: int, scale: float = 1.0, dtype=F64):
    return (
        torch.randn(3 * h, i, dtype=dtype) * scale,
        torch.randn(3 * h, h, dtype=dtype) * scale,
        torch.randn(3 * h, dtype=dtype) * 0.1,
        torch.randn(3 * h, dtype=dtype) * 0.1,
    )


def _independent_egru(x, w_ih, w_hh, b_ih, b_hh, theta, reset):
    """SPEC §3 written out gate by gate, row by row: a second implementation to compare with."""
    steps, batch, _ = x.shape
    h = w_hh.shape[1]
    c = torch.zeros(batch, h, dtype=x.dtype)
    y = torch.zeros(batch, h, dtype=x.dtype)
    ys, cs = [], []
    w_ir, w_iz, w_in = w_ih[:h], w_ih[h : 2 * h], w_ih[2 * h :]
    w_hr, w_hz, w_hn = w_hh[:h], w_hh[h : 2 * h], w_hh[2 * h :]
    b_ir, b_iz, b_in = b_ih[:h], b_ih[h : 2 * h], b_ih[2 * h :]
    b_hr, b_hz, b_hn = b_hh[:h], b_hh[h : 2 * h], b_hh[2 * h :]
    for t in range(steps):
        xt = x[t]
        r = torch.sigmoid(xt @ w_ir.T + b_ir + y @ w_hr.T + b_hr)
        z = torch.sigmoid(xt @ w_iz.T + b_iz + y @ w_hz.T + b_hz)
        n = torch.tanh(xt @ w_in.T + b_in + r * (y @ w_hn.T + b_hn))
        if reset == "output":
            c = z * c + (1 - z) * n - y
            o = (c > theta).to(x.dtype)
            y = o * c
        else:
            c_tilde = z * c + (1 - z) * n
            o = (c_tilde > theta).to(x.dtype)
            y = o * c_tilde
            c = c_tilde - o * theta
        ys.append(y)
        cs.append(c)
    return torch.stack(ys), torch.stack(cs)


@pytest.mark.parametrize("reset", ["output", "threshold"])
def test_scan_matches_independent_implementation(reset):
    steps, batch, i, h = 15, 3, 4, 6
    x = torch.randn(steps, batch, i, dtype=F64)
    w_ih, w_hh, b_ih, b_hh = _params(i, h, scale=1.5)
    theta = torch.rand(h, dtype=F64) * 0.3 + 0.1
    y, final, trace = egru_scan(x, None, w_ih, w_hh, b_ih, b_hh, theta, reset=reset)
    y_ref, c_ref = _independent_egru(x, w_ih, w_hh, b_ih, b_hh, theta, reset)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(final.c, c_ref[-1], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(final.y, y_ref[-1], rtol=1e-12, atol=1e-12)
    # events only where c − θ > 0, and y = c there, exactly 0 elsewhere
    events = trace.c_pre > theta
    assert 0 < events.float().mean() < 0.9
    assert torch.equal(y != 0, events)
    assert torch.equal(y[events], trace.c_pre[events])
    assert (y[~events] == 0).all()


def test_resets_differ_as_specified_on_one_step():
    # One unit, one step from a given state, values checked by hand:
    # z = σ(0) = 0.5, r = 0.5, n = tanh(2) with W_in x = 2;  c_prev = 0.4, y_prev = 0.1
    w_ih = torch.tensor([[0.0], [0.0], [2.0]], dtype=F64)
    w_hh = torch.zeros(3, 1, dtype=F64)
    zeros = torch.zeros(3, dtype=F64)
    theta = torch.tensor([0.2], dtype=F64)
    x = torch.ones(1, 1, dtype=F64)
    state = EGRUState(torch.tensor([[0.4]], dtype=F64), torch.tensor([[0.1]], dtype=F64))
    n = torch.tanh(torch.tensor(2.0, dtype=F64)).item()
    c_tilde = 0.5 * 0.4 + 0.5 * n
    y, st = egru_step(x, state, w_ih, w_hh, zeros, zeros, theta, reset="output")
    # output reset: c = c̃ − y_prev, an event, y = c
    assert st.c.item() == pytest.approx(c_tilde - 0.1, abs=1e-14)
    assert y.item() == pytest.approx(c_tilde - 0.1, abs=1e-14) and st.y is y
    y, st = egru_step(x, state, w_ih, w_hh, zeros, zeros, theta, reset="threshold")
    # threshold reset: y = c̃, c = c̃ − θ
    assert y.item() == pytest.approx(c_tilde, abs=1e-14)
    assert st.c.item() == pytest.approx(c_tilde - 0.2, abs=1e-14)
    # below threshold: no event, no reset
    y, st = egru_step(x, state, w_ih, w_hh, zeros, zeros, torch.tensor([0.9], dtype=F64), reset="threshold")
    assert y.item() == 0.0 and st.c.item() == pytest.approx(c_tilde, abs=1e-14)


def test_step_loop_equals_scan_and_initial_state():
    steps, batch, i, h = 8, 2, 3, 5
    x = torch.randn(steps, batch, i, dtype=F64)
    params = _params(i, h, scale=1.5)
    theta = torch.full((h,), 0.2, dtype=F64)
    st0 = egru_initial_state(batch, h, x)
    assert (st0.c == 0).all() and (st0.y == 0).all() and st0.c.shape == (batch, h)
    y_scan, final, _ = egru_scan(x, st0, *params, theta, reset="threshold")
    state = None
    ys = []
    for t in range(steps):
        y, state = egru_step(x[t], state, *params, theta, reset="threshold")
        ys.append(y)
    torch.testing.assert_close(torch.stack(ys), y_scan, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state.c, final.c, rtol=1e-12, atol=1e-12)


def test_unknown_reset_is_rejected():
    x = torch.randn(2, 3, dtype=F64)
    with pytest.raises(ValueError, match=r"reset must be one of \('output', 'threshold'\), got 'soft'"):
        egru_step(x, None, *_params(3, 4), torch.ones(4, dtype=F64), reset="soft")


def test_zoneout_eval_mixes_expectation():
    steps, batch, i, h = 4, 2, 3, 5
    x = torch.randn(steps, batch, i, dtype=F64)
    params = _params(i, h)
    theta = torch.full((h,), 0.3, dtype=F64)
    # with zoneout p at evaluation, c_t = p·c_{t−1} + (1 − p)·c_new
    _, st_z, _ = egru_scan(x[:1], None, *params, theta, zoneout=0.25, training=False)
    _, st, _ = egru_scan(x[:1], None, *params, theta)
    torch.testing.assert_close(st_z.c, 0.75 * st.c, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reset", ["output", "threshold"])
def test_gradcheck_egru_step(reset):
    # A narrow triangle surrogate and every c − θ outside its support: no event flips under the
    # finite differences and g = 0 exactly, so autograd must equal the numeric Jacobian of (y, c).
    support = 0.02
    surrogate = sg.triangle(support)
    batch, i, h = 3, 3, 4
    x = torch.randn(batch, i, dtype=F64, requires_grad=True)
    c = (torch.randn(batch, h, dtype=F64) * 1.5).requires_grad_()
    y = (torch.randn(batch, h, dtype=F64) * 0.2).requires_grad_()
    params = [p.requires_grad_() for p in _params(i, h, scale=0.8)]

    def f(x, c, y, w_ih, w_hh, b_ih, b_hh, theta):
        out, st = egru_step(x, EGRUState(c, y), w_ih, w_hh, b_ih, b_hh, theta, reset=reset, surrogate=surrogate)
        return out, st.c

    # c − θ with θ = 0 is the pre-threshold state; pick each unit's θ in [0.05, 0.6] as far as
    # possible from its values (θ does not enter c̃), so the margin holds by construction.
    with torch.no_grad():
        _, _, trace = egru_scan(x.unsqueeze(0), EGRUState(c, y), *params, torch.zeros(h, dtype=F64), reset=reset)
        c_pre = trace.c_pre[0]
        candidates = torch.linspace(0.05, 0.6, 56, dtype=F64)
        dist = (c_pre.unsqueeze(-1) - candidates).abs().amin(dim=0)  # [h, candidates]
        theta = candidates[dist.argmax(dim=-1)].clone().requires_grad_()
        distance = (c_pre - theta).abs().min().item()
        events = (c_pre > theta).float().mean().item()
    assert distance > 2 * support, distance
    assert 0 < events < 1  # both branches (y = c and y = 0) are exercised
    assert torch.autograd.gradcheck(f, (x, c, y, *params, theta))
