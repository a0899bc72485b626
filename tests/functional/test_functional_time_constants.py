"""The time-constant conversions of evsnn.functional (SPEC §2) that the interop modules call:
hand values in float64 and each the inverse of its partner."""

from __future__ import annotations

import math

import torch

from evsnn.functional import decay, decay_time_constant, euler_time_constant, euler_to_steps

TAUS = torch.tensor([1.0, 1.5, 20.0, 150.0, 1e4], dtype=torch.float64)


def test_decay_time_constant_inverts_decay():
    alpha = torch.tensor([math.exp(-1.0), math.exp(-1.0 / 20.0), 0.999], dtype=torch.float64)
    expected = torch.tensor([1.0, 20.0, -1.0 / math.log(0.999)], dtype=torch.float64)
    torch.testing.assert_close(decay_time_constant(alpha), expected, rtol=1e-14, atol=0)
    torch.testing.assert_close(decay_time_constant(decay(TAUS)), TAUS, rtol=1e-10, atol=0)


def test_euler_time_constant_by_hand_and_inverse():
    dt = 1e-3
    expected = torch.tensor([dt / (1.0 - math.exp(-1.0 / t)) for t in TAUS.tolist()], dtype=torch.float64)
    tau_e = euler_time_constant(TAUS, dt)
    torch.testing.assert_close(tau_e, expected, rtol=1e-14, atol=0)
    # the Euler leak 1 − dt/τ_E is the per-step decay exp(−1/τ)
    torch.testing.assert_close(1.0 - dt / tau_e, decay(TAUS), rtol=1e-14, atol=0)
    torch.testing.assert_close(euler_to_steps(tau_e, dt), TAUS, rtol=1e-10, atol=0)
