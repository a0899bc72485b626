"""Delta GRU/LSTM reference math (SPEC §4): Θ = 0 is nn.GRU/nn.LSTM, the accumulator invariant
for Θ > 0, the delta encoder, gradcheck."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import evsnn
from evsnn.functional import (
    DeltaGRUState,
    DeltaLSTMState,
    delta_accumulator_increment,
    delta_encode,
    delta_gru_initial_state,
    delta_gru_scan,
    delta_gru_step,
    delta_lstm_initial_state,
    delta_lstm_scan,
    delta_lstm_step,
)

F64 = torch.float64

pytestmark = pytest.mark.usefixtures("single_thread")


def _rnn_params(rnn: nn.Module):
    return rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_theta_zero_equals_torch_rnn_float64(kind):
    steps, batch, i, h = 20, 3, 5, 7
    rnn = (nn.GRU if kind == "gru" else nn.LSTM)(i, h).double()
    x = torch.randn(steps, batch, i, dtype=F64)
    h0 = torch.randn(batch, h, dtype=F64)
    with torch.no_grad():
        if kind == "gru":
            ref, hn = rnn(x, h0.unsqueeze(0))
            init = delta_gru_initial_state(batch, i, h, rnn.bias_ih_l0, rnn.bias_hh_l0, x, h0=h0)
            out, final, _ = delta_gru_scan(x, init, *_rnn_params(rnn))
        else:
            c0 = torch.randn(batch, h, dtype=F64)
            ref, (hn, cn) = rnn(x, (h0.unsqueeze(0), c0.unsqueeze(0)))
            init = delta_lstm_initial_state(batch, i, h, rnn.bias_ih_l0, rnn.bias_hh_l0, x, h0=h0, c0=c0)
            out, final, _ = delta_lstm_scan(x, init, *_rnn_params(rnn))
            torch.testing.assert_close(final.c, cn[0], rtol=0, atol=1e-10)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(final.h, hn[0], rtol=0, atol=1e-10)


# float32 over T = 1000: the accumulators add up 1000 rounded deltas, so the error grows like a
# random walk; measured 1.8e-6 … 4.0e-6 (seeds 0-2, both cells) at these sizes.
# Stated tolerance: 5e-5 absolute on h.
FLOAT32_T1000_ATOL = 5e-5


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_theta_zero_equals_torch_rnn_float32_long(kind):
    steps, batch, i, h = 1000, 2, 4, 8
    rnn = (nn.GRU if kind == "gru" else nn.LSTM)(i, h)
    x = torch.randn(steps, batch, i)
    with torch.no_grad():
        ref, _ = rnn(x)
        scan = delta_gru_scan if kind == "gru" else delta_lstm_scan
        out, _, _ = scan(x, None, *_rnn_params(rnn))
    err = (out - ref).abs().max().item()
    assert err < FLOAT32_T1000_ATOL, err


def test_delta_encode_by_hand():
    value = torch.tensor([1.0, 0.3, -0.5, 0.0])
    memory = torch.tensor([0.0, 0.2, 0.0, 0.0])
    delta, new_memory = delta_encode(value, memory, 0.2)
    # |diff| = 1.0 > 0.2 → passes; 0.1 → no; 0.5 → passes; 0 → no (strict ">")
    torch.testing.assert_close(delta, torch.tensor([1.0, 0.0, -0.5, 0.0]))
    torch.testing.assert_close(new_memory, torch.tensor([1.0, 0.2, -0.5, 0.0]))
    delta, _ = delta_encode(torch.tensor([0.2]), torch.tensor([0.0]), 0.2)
    assert delta.item() == 0.0


def _gru_invariant(state: DeltaGRUState, w_ih, w_hh, b_ih, b_hh):
    h = w_hh.shape[1]
    gx = state.x_hat @ w_ih.T
    gh = state.h_hat @ w_hh.T
    return torch.cat(
        [
            gx[:, : 2 * h] + gh[:, : 2 * h] + b_ih[: 2 * h] + b_hh[: 2 * h],
            gx[:, 2 * h :] + b_ih[2 * h :],
            gh[:, 2 * h :] + b_hh[2 * h :],
        ],
        dim=-1,
    )


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_accumulator_invariant_with_positive_theta(kind):
    # M_t = W_x x̂_t + W_h ĥ_{t−1} + b (SPEC §4); ``state.h_hat`` is ĥ_{t−1}, the memory used at step t.
    steps, batch, i, h = 30, 2, 4, 6
    theta_x, theta_h = 0.3, 0.05
    x = torch.cumsum(torch.randn(steps, batch, i, dtype=F64) * 0.2, dim=0)  # slowly varying input
    gates = 3 if kind == "gru" else 4
    w_ih = torch.randn(gates * h, i, dtype=F64) * 0.5
    w_hh = torch.randn(gates * h, h, dtype=F64) * 0.5
    b_ih = torch.randn(gates * h, dtype=F64) * 0.1
    b_hh = torch.randn(gates * h, dtype=F64) * 0.1
    step = delta_gru_step if kind == "gru" else delta_lstm_step
    state, skipped_x, skipped_h = None, 0, 0
    prev_h_hat = torch.zeros(batch, h, dtype=F64)
    prev_h = torch.zeros(batch, h, dtype=F64)
    for t in range(steps):
        prev_x_hat = torch.zeros(batch, i, dtype=F64) if state is None else state.x_hat
        _, state = step(x[t], state, w_ih, w_hh, b_ih, b_hh, theta_x=theta_x, theta_h=theta_h)
        if kind == "gru":
            expected = _gru_invariant(state, w_ih, w_hh, b_ih, b_hh)
        else:
            expected = state.x_hat @ w_ih.T + state.h_hat @ w_hh.T + b_ih + b_hh
        torch.testing.assert_close(state.m, expected, rtol=0, atol=1e-10)
        # the memories follow x_t and h_{t−1} within Θ, and move only where the change exceeded Θ
        assert ((x[t] - state.x_hat).abs() <= theta_x).all()
        assert ((prev_h - state.h_hat).abs() <= theta_h).all()
        moved = state.x_hat != prev_x_hat
        assert torch.equal(moved, (x[t] - prev_x_hat).abs() > theta_x)
        moved_h = state.h_hat != prev_h_hat
        assert torch.equal(moved_h, (prev_h - prev_h_hat).abs() > theta_h)
        skipped_x += int((~moved).sum())
        skipped_h += int((~moved_h).sum()) if t > 0 else 0  # at t = 0, h_{−1} = ĥ = 0 trivially
        prev_h_hat, prev_h = state.h_hat, state.h
    assert skipped_x > 0 and skipped_h > 0  # Θ > 0 actually suppressed deltas


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_scan_equals_step_loop_and_trace(kind):
    steps, batch, i, h = 10, 2, 3, 4
    layer = (evsnn.DeltaGRU if kind == "gru" else evsnn.DeltaLSTM)(i, h, theta_x=0.1, theta_h=0.1, dtype=F64)
    params = (layer.weight_ih, layer.weight_hh, layer.bias_ih, layer.bias_hh)
    x = torch.randn(steps, batch, i, dtype=F64)
    scan = delta_gru_scan if kind == "gru" else delta_lstm_scan
    step = delta_gru_step if kind == "gru" else delta_lstm_step
    with torch.no_grad():
        out, final, trace = scan(x, None, *params, theta_x=0.1, theta_h=0.1)
        state, outs = None, []
        x_hat = torch.zeros(batch, i, dtype=F64)
        for t in range(steps):
            o, state = step(x[t], state, *params, theta_x=0.1, theta_h=0.1)
            outs.append(o)
            torch.testing.assert_close(trace.delta_x[t], state.x_hat - x_hat, rtol=0, atol=1e-15)
            x_hat = state.x_hat
    torch.testing.assert_close(torch.stack(outs), out, rtol=0, atol=1e-14)
    for a, b in zip(state, final):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-14)
    assert (trace.delta_h[0] == 0).all()  # h_{−1} = 0 = ĥ: no hidden delta at the first step


def test_initial_states():
    b_ih = torch.arange(6.0)
    b_hh = torch.arange(6.0) * 10
    st = delta_gru_initial_state(2, 3, 2, b_ih, b_hh, torch.zeros(1))
    assert isinstance(st, DeltaGRUState) and st.m.shape == (2, 8)
    # [M_r, M_z] = b_i + b_h, M_nx = b_in, M_nh = b_hn
    assert st.m[0].tolist() == [0.0, 11.0, 22.0, 33.0, 4.0, 5.0, 40.0, 50.0]
    assert (st.h == 0).all() and (st.x_hat == 0).all() and (st.h_hat == 0).all() and st.x_hat.shape == (2, 3)
    b = torch.arange(8.0)
    lst = delta_lstm_initial_state(1, 3, 2, b, b, torch.zeros(1))
    assert isinstance(lst, DeltaLSTMState) and lst.m[0].tolist() == (2 * b).tolist() and lst.c.shape == (1, 2)


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_gradcheck_delta_step(kind):
    # The masks are piecewise constant: away from |diff| = Θ autograd is the exact derivative.
    batch, i, h = 2, 3, 4
    gates = 3 if kind == "gru" else 4
    theta_x, theta_h = 0.3, 0.2

    def away_from(theta: float, shape) -> torch.Tensor:
        # differences whose magnitude is Θ ± (0.05 … 0.15): some pass the mask, some do not
        side = torch.where(torch.rand(shape) < 0.5, -1.0, 1.0).to(F64)
        sign = torch.where(torch.rand(shape) < 0.5, -1.0, 1.0).to(F64)
        return sign * (theta + side * (0.05 + 0.1 * torch.rand(shape, dtype=F64)))

    x = torch.randn(batch, i, dtype=F64)
    x_hat = x - away_from(theta_x, (batch, i))
    h_prev = torch.randn(batch, h, dtype=F64) * 0.5
    h_hat = h_prev - away_from(theta_h, (batch, h))
    with torch.no_grad():
        margin = min(
            ((x - x_hat).abs() - theta_x).abs().min().item(), ((h_prev - h_hat).abs() - theta_h).abs().min().item()
        )
    assert margin > 1e-2, margin
    m = torch.randn(batch, 4 * h, dtype=F64)
    c = torch.randn(batch, h, dtype=F64)
    w_ih = torch.randn(gates * h, i, dtype=F64) * 0.5
    w_hh = torch.randn(gates * h, h, dtype=F64) * 0.5
    b_ih = torch.randn(gates * h, dtype=F64) * 0.1
    b_hh = torch.randn(gates * h, dtype=F64) * 0.1
    inputs = [t.requires_grad_() for t in (x, h_prev, x_hat, h_hat, m, c, w_ih, w_hh)]

    def f(x, h_prev, x_hat, h_hat, m, c, w_ih, w_hh):
        if kind == "gru":
            out, st = delta_gru_step(
                x, DeltaGRUState(h_prev, x_hat, h_hat, m), w_ih, w_hh, None, None, theta_x=theta_x, theta_h=theta_h
            )
            return out, st.m, st.x_hat, st.h_hat
        out, st = delta_lstm_step(
            x, DeltaLSTMState(h_prev, c, x_hat, h_hat, m), w_ih, w_hh, None, None, theta_x=theta_x, theta_h=theta_h
        )
        return out, st.c, st.m, st.x_hat, st.h_hat

    assert torch.autograd.gradcheck(f, tuple(inputs))

    # and from the initial state, where the biases enter through the accumulators
    step = delta_gru_step if kind == "gru" else delta_lstm_step
    biases = (b_ih.requires_grad_(), b_hh.requires_grad_())
    assert torch.autograd.gradcheck(
        lambda x, w_ih, w_hh, b_ih, b_hh: step(x, None, w_ih, w_hh, b_ih, b_hh, theta_x=theta_x, theta_h=theta_h)[0],
        (inputs[0], inputs[6], inputs[7], *biases),
    )


def test_accumulator_increment_slot_layout_by_hand():
    """GRU: input rows (r, z, n) feed slots (r, z, nx), hidden rows feed (r, z, nh) (SPEC §4); a NaN
    on one side reaches only the slots that side feeds. LSTM: the two products add."""
    gx = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])  # H = 2: r = (1, 2), z = (3, 4), n = (5, 6)
    gh = torch.tensor([[10.0, 20.0, 30.0, 40.0, 50.0, 60.0]])
    got = delta_accumulator_increment(gx, gh, gru=True)
    assert got.tolist() == [[11.0, 22.0, 33.0, 44.0, 5.0, 6.0, 50.0, 60.0]]
    gx[0, 4] = float("nan")
    got = delta_accumulator_increment(gx, gh, gru=True)
    assert got.isnan().tolist() == [[False] * 4 + [True] + [False] * 3]
    lstm = delta_accumulator_increment(torch.arange(8.0), 10 * torch.arange(8.0), gru=False)
    assert lstm.tolist() == (11 * torch.arange(8.0)).tolist()
