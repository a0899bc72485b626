"""evsnn.regularizers: values against the layers' statistics and traces, gradients reach the
weights, and a few training steps on each regulariser lower the layer's activity."""

from __future__ import annotations

import pytest
import torch

import evsnn
from evsnn import metrics
from evsnn import regularizers as R


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny ops on a shared 2-core machine run far faster on one thread than fighting for two.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _train(layer, x, loss_of_output, steps: int, lr: float) -> list[float]:
    """Adam on the regulariser alone; returns the layer's mean event fraction before each step
    and after the last one (read from ``last_stats``)."""
    opt = torch.optim.Adam(layer.parameters(), lr=lr)
    fractions = []
    for _ in range(steps):
        out, _ = layer(x)
        fractions.append(layer.last_stats.mean_event_fraction)
        loss = loss_of_output(out)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        layer(x)
    fractions.append(layer.last_stats.mean_event_fraction)
    return fractions


# --- EGRU activity -------------------------------------------------------------------------


def _egru(seed: int = 0) -> evsnn.EGRU:
    torch.manual_seed(seed)
    return evsnn.EGRU(5, 12, threshold_init="constant", threshold=0.1)


def test_event_indicator_value_and_gradient():
    c = torch.tensor([0.5, 0.0, -0.2, 2.0], requires_grad=True)
    o = torch.tensor([1.0, 0.0, 0.0, 1.0])
    ind = R.event_indicator(o * c)
    assert torch.equal(ind.detach(), o)
    ind.sum().backward()
    # d(y / sg(y)) / dc = o / c at events (y = o·c with o constant here), 0 elsewhere.
    torch.testing.assert_close(c.grad, torch.tensor([2.0, 0.0, 0.0, 0.5]))
    with pytest.raises(TypeError, match="floating-point"):
        R.event_indicator(torch.tensor([1, 0]))


def test_egru_activity_rate_equals_stats_and_gradient_reaches_weights():
    layer = _egru()
    x = torch.randn(10, 3, 5)
    y, _ = layer(x)
    reg = R.EGRUActivityRegularizer(target=0.0, strength=2.0)
    rate = reg.rate(y)
    assert rate.item() == pytest.approx(layer.last_stats.mean_event_fraction)
    assert rate.item() > 0
    loss = reg(y)
    assert loss.item() == pytest.approx(2.0 * rate.item() ** 2)
    loss.backward()
    for name in ("weight_ih", "weight_hh", "bias_ih", "log_threshold"):
        grad = getattr(layer, name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    # Lowering the rate must raise the thresholds: θ's gradient is negative where it acts.
    assert (layer.log_threshold.grad <= 0).all()


def test_egru_activity_from_trace_also_reaches_silent_units_near_threshold():
    layer = _egru()
    x = torch.randn(10, 3, 5)
    rec = metrics.reference_traces(layer, x)
    reg = R.EGRUActivityRegularizer(target=0.0)
    rate_trace = reg.rate(rec.output, layer, rec.trace)
    assert rate_trace.item() == pytest.approx(float((rec.output != 0).float().mean()))
    c_pre = rec.trace.c_pre
    (g_trace,) = torch.autograd.grad(reg(rec.output, layer, rec.trace), c_pre, retain_graph=True)
    silent_near = (rec.output == 0) & ((c_pre - layer.threshold).abs() < 0.3)
    assert silent_near.any()
    assert (g_trace[silent_near] != 0).all()
    with pytest.raises(TypeError, match="needs its EGRU layer"):
        reg(rec.output, None, rec.trace)
    with pytest.raises(TypeError, match="must be an EGRUTrace"):
        reg(rec.output, layer, (c_pre,))


def test_egru_activity_regulariser_lowers_activity():
    layer = _egru()
    x = torch.randn(12, 4, 5)
    reg = R.EGRUActivityRegularizer(target=0.0, strength=10.0)
    fractions = _train(layer, x, reg, steps=6, lr=0.03)
    assert fractions[0] > 0.05
    assert fractions[-1] < 0.5 * fractions[0], fractions


def test_one_sided_target_above_the_rate_costs_nothing():
    layer = _egru()
    y, _ = layer(torch.randn(10, 3, 5))
    reg = R.EGRUActivityRegularizer(target=0.99, one_sided=True)
    loss = reg(y)
    assert loss.item() == 0.0
    loss.backward()
    assert layer.weight_hh.grad.abs().sum() == 0
    # two-sided, the same rate costs (ā − target)², ā the fraction of nonzero events
    rate = float((y.detach() != 0).float().mean())
    assert rate < 0.99
    assert float(R.EGRUActivityRegularizer(target=0.99)(y.detach())) == pytest.approx((rate - 0.99) ** 2, rel=1e-6)


# --- ALIF firing rate ----------------------------------------------------------------------


def _alif(seed: int = 0) -> evsnn.ALIF:
    torch.manual_seed(seed)
    layer = evsnn.ALIF(5, 10)
    with torch.no_grad():
        layer.weight_ih.mul_(5.0)
    return layer


def test_firing_rate_values_and_gradient():
    layer = _alif()
    x = (torch.rand(15, 3, 5) < 0.4).float()
    s, _ = layer(x)
    reg = R.FiringRateRegularizer(target=0.1, strength=3.0)
    rates = reg.rates(s)
    torch.testing.assert_close(rates.detach(), s.detach().mean(dim=(0, 1)))
    expected = 3.0 * ((s.detach().mean(dim=(0, 1)) - 0.1) ** 2).mean()
    loss = reg(s)
    torch.testing.assert_close(loss.detach(), expected)
    population = R.FiringRateRegularizer(target=0.1, per_neuron=False)(s)
    torch.testing.assert_close(population.detach(), (s.detach().mean() - 0.1) ** 2)
    loss.backward()
    for name in ("weight_ih", "weight_hh", "tau_mem", "tau_adapt"):
        grad = getattr(layer, name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    # Layout does not matter: units are last in either batch_first mode.
    torch.testing.assert_close(reg.rates(s.transpose(0, 1)).detach(), rates.detach())


def test_firing_rate_regulariser_lowers_activity():
    layer = _alif()
    x = (torch.rand(15, 4, 5) < 0.4).float()
    reg = R.FiringRateRegularizer(target=0.0, strength=10.0)
    fractions = _train(layer, x, reg, steps=6, lr=0.05)
    assert fractions[0] > 0.05
    assert fractions[-1] < 0.6 * fractions[0], fractions


# --- delta L1 ------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [evsnn.DeltaGRU, evsnn.DeltaLSTM])
def test_hidden_deltas_equal_the_reference_trace(cls):
    torch.manual_seed(0)
    layer = cls(4, 6, theta_x=0.05, theta_h=0.03)
    x = torch.randn(8, 2, 4)
    rec = metrics.reference_traces(layer, x)
    dh = R.hidden_deltas(rec.output, layer.theta_h)
    torch.testing.assert_close(dh, rec.trace.delta_h)
    # From a given initial state (h0 and the memory ĥ), continuing a sequence.
    rec2 = metrics.reference_traces(layer, x, rec.final_state)
    dh2 = R.hidden_deltas(rec2.output, layer.theta_h, rec.final_state.h, rec.final_state.h_hat)
    torch.testing.assert_close(dh2, rec2.trace.delta_h)


def test_delta_l1_gradient_matches_autograd_of_the_reference_in_float64():
    torch.manual_seed(0)
    layer = evsnn.DeltaGRU(3, 5, theta_x=0.05, theta_h=0.02, batch_first=True).double()
    x = torch.randn(2, 7, 3, dtype=torch.float64)
    reg = R.DeltaL1Regularizer(strength=0.5)
    out, _ = layer(x)
    loss = reg(out, layer)
    got = torch.autograd.grad(loss, [layer.weight_ih, layer.weight_hh, layer.bias_hh])
    rec = metrics.reference_traces(layer, x)
    truth = 0.5 * rec.trace.delta_h.abs().sum()
    torch.testing.assert_close(loss, truth)
    expected = torch.autograd.grad(truth, [layer.weight_ih, layer.weight_hh, layer.bias_hh])
    for g, e in zip(got, expected):
        assert e.abs().sum() > 0
        torch.testing.assert_close(g, e)
    mean = R.delta_l1(rec.output, layer.theta_h, reduction="mean")
    torch.testing.assert_close(mean, rec.trace.delta_h.abs().mean())


def test_delta_l1_regulariser_lowers_activity():
    torch.manual_seed(0)
    layer = evsnn.DeltaGRU(5, 12, theta_h=0.05)
    x = torch.randn(12, 4, 5)
    reg = R.DeltaL1Regularizer(strength=0.05)
    fractions = _train(layer, x, lambda h: reg(h, layer), steps=6, lr=0.03)
    assert fractions[0] > 0.3
    assert fractions[-1] < 0.6 * fractions[0], fractions


# --- validation ----------------------------------------------------------------------------


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"target must be a rate in \[0, 1\]"):
        R.EGRUActivityRegularizer(target=1.5)
    with pytest.raises(TypeError, match="target must be a number"):
        R.FiringRateRegularizer(target="low")
    with pytest.raises(ValueError, match="strength must be a finite number >= 0"):
        R.FiringRateRegularizer(strength=-1.0)
    with pytest.raises(ValueError, match="reduction must be one of"):
        R.DeltaL1Regularizer(reduction="max")
    layer = evsnn.DeltaGRU(3, 4)
    with pytest.raises(TypeError, match="needs the DeltaGRU/DeltaLSTM layer"):
        R.DeltaL1Regularizer()(torch.zeros(2, 1, 4), evsnn.EGRU(3, 4))
    with pytest.raises(ValueError, match=r"\[T, B, 4\] sequence"):
        R.DeltaL1Regularizer()(torch.zeros(2, 4), layer)
    with pytest.raises(TypeError, match="DeltaGRU expects h_0 as a tensor .* got list"):
        R.DeltaL1Regularizer()(torch.zeros(2, 1, 4), layer, state=[torch.zeros(1, 4)])
    with pytest.raises(ValueError, match=r"h0 must have shape \(1, 4\)"):
        R.hidden_deltas(torch.zeros(2, 1, 4), 0.1, h0=torch.zeros(2, 4))
    with pytest.raises(TypeError, match="spikes must be a torch.Tensor"):
        R.FiringRateRegularizer()([0.0, 1.0])
