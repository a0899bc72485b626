"""ALIFReadout: an adaptive spiking output layer whose membrane is the output (Yin et al.'s readout)."""

from __future__ import annotations

import math

import pytest
import torch

from evsnn.functional import ALIFState, alif_scan
from evsnn.nn import ALIFReadout


def test_membrane_by_hand_one_neuron(reference_backend):
    """One neuron, W = 1, b = 0, τ_m = 2, τ_adp = 4, b0 = 0.2, β = 1.8: SPEC §2 step by step."""
    layer = ALIFReadout(1, 1, tau_mem=2.0, tau_adapt=4.0, b0=0.2, beta=1.8, dtype=torch.float64)
    with torch.no_grad():
        layer.weight_ih.fill_(1.0)
        layer.bias_ih.zero_()
    inputs = [1.0, 1.0, 0.0, 2.0]
    v, final = layer(torch.tensor(inputs, dtype=torch.float64).view(4, 1, 1))
    alpha, rho = math.exp(-1 / 2), math.exp(-1 / 4)
    mem, trace, spike, expected = 0.0, 0.2, 0.0, []
    for i in inputs:
        trace = rho * trace + (1 - rho) * spike
        threshold = 0.2 + 1.8 * trace
        mem = alpha * mem + (1 - alpha) * i - threshold * spike
        spike = float(mem - threshold > 0)
        expected.append(mem)
    # the values the loop went through: it fires at steps 0 and 1 and is reset below zero after
    assert expected[0] > 0.2 and expected[2] < 0
    torch.testing.assert_close(v.view(-1), torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-15)
    assert final.s.item() == spike and final.v.item() == pytest.approx(mem, abs=1e-15)


@pytest.mark.parametrize("batch_first", [False, True])
def test_membrane_and_gradients_equal_the_reference_scan(reference_backend, batch_first):
    torch.manual_seed(1)
    layer = ALIFReadout(
        5, 3, tau_mem=(20.0, 5.0), tau_adapt=(100.0, 10.0), batch_first=batch_first, dtype=torch.float64
    )
    x = torch.rand(12, 2, 5, dtype=torch.float64) * 4
    state = ALIFState(
        torch.rand(2, 3, dtype=torch.float64) * 0.01,
        torch.full((2, 3), 0.01, dtype=torch.float64),
        torch.zeros(2, 3, dtype=torch.float64),
    )
    v, final = layer(x.transpose(0, 1) if batch_first else x, state)
    v = v.transpose(0, 1) if batch_first else v
    current = torch.nn.functional.linear(x, layer.weight_ih, layer.bias_ih)
    spikes, ref_final, trace = alif_scan(
        current, state, tau_mem=layer.tau_mem, tau_adapt=layer.tau_adapt, b0=layer.b0, beta=layer.beta
    )
    assert spikes.sum() > 0  # the membrane is reset at least once in this check
    torch.testing.assert_close(v, trace.v, rtol=0, atol=0)
    for a, b in zip(final, ref_final):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    weights = torch.randn_like(v)
    params = (layer.weight_ih, layer.bias_ih, layer.tau_mem, layer.tau_adapt)
    ours = torch.autograd.grad((v * weights).sum(), params, retain_graph=True)
    ref = torch.autograd.grad((trace.v * weights).sum(), params)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert ours[2].abs().sum() > 0  # τ_m learns through the membrane


def test_non_adaptive_readout_keeps_the_baseline_threshold(reference_backend):
    layer = ALIFReadout(2, 2, adaptive=False, tau_mem=5.0)
    assert torch.all(layer.beta == 0)
    with torch.no_grad():
        layer.weight_ih.fill_(1.0)
        layer.bias_ih.zero_()
    x = torch.ones(6, 1, 2) * 3
    v, _ = layer(x)
    # β = 0: a LIF with threshold b0 = 0.01, so v_t = α v_{t-1} + (1 - α)·6 - 0.01·s_{t-1} by hand
    alpha = math.exp(-1 / 5)
    mem, spike, expected = 0.0, 0.0, []
    for _ in range(6):
        mem = alpha * mem + (1 - alpha) * 6.0 - 0.01 * spike
        spike = float(mem > 0.01)
        expected.append(mem)
    torch.testing.assert_close(v[:, 0, 0], torch.tensor(expected), rtol=1e-6, atol=1e-6)


def test_bad_input_and_state_are_refused_by_name():
    layer = ALIFReadout(4, 3)
    with pytest.raises(ValueError, match="ALIFReadout"):
        layer(torch.zeros(5, 2, 7))
    with pytest.raises(ValueError, match="ALIFReadout"):
        layer(torch.zeros(5, 4))
    bad = ALIFState(torch.zeros(2, 4), torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"ALIFReadout state field 'v' must have shape \(2, 3\)"):
        layer(torch.zeros(5, 2, 4), bad)
