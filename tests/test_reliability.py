"""Reliability across backends (issue [3/7]): non-finite values propagate exactly as in the
reference, T = 0 behaves the same everywhere, a Stream notices weights changed under it, and
the GPU co-residency decision refuses launches that could deadlock."""

from __future__ import annotations

import pytest
import torch

import evsnn
from evsnn.functional import alif_scan, delta_gru_scan, delta_lstm_scan, egru_scan
from evsnn.ops import cpu_event
from evsnn.streaming import Stream

pytestmark = pytest.mark.usefixtures("reference_backend", "single_thread")

NAN, INF = float("nan"), float("inf")


def _same(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    """Equal values, NaN included, and NaN at exactly the same positions."""
    a, b = a.detach(), b.detach()
    assert torch.equal(torch.isnan(a), torch.isnan(b)), f"{what}: NaN positions differ"
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, equal_nan=True, msg=lambda m: f"{what}: {m}")


def _same_result(ref, got, what: str) -> None:
    out_r, state_r, trace_r = ref
    out_g, state_g, trace_g = got
    _same(out_r, out_g, f"{what} output")
    for name, u, v in zip(type(state_r)._fields, state_r, state_g):
        _same(u, v, f"{what} state.{name}")
    for name, u, v in zip(type(trace_r)._fields, trace_r, trace_g):
        _same(u, v, f"{what} trace.{name}")


def _poisoned_input(t: int, b: int, i: int, gen: torch.Generator) -> torch.Tensor:
    x = torch.randn(t, b, i, generator=gen, dtype=torch.float64)
    x[1, 1, 2] = NAN  # one sample, one step, one feature
    x[2, 0, 0] = INF
    x[3, 0, 1] = -INF
    return x


def _params(family: str, i: int, h: int, gen: torch.Generator) -> tuple:
    gates = {"egru": 3, "delta_gru": 3, "delta_lstm": 4}[family]
    return tuple(
        torch.randn(*shape, generator=gen, dtype=torch.float64) * 0.5
        for shape in ((gates * h, i), (gates * h, h), (gates * h,), (gates * h,))
    )


FAMILIES = {
    "delta_gru": (delta_gru_scan, cpu_event.delta_gru_event_scan),
    "delta_lstm": (delta_lstm_scan, cpu_event.delta_lstm_event_scan),
    "egru": (egru_scan, cpu_event.egru_event_scan),
}


def _run(fn, family, x, params, gen_theta):
    if family == "egru":
        return fn(x, None, *params, gen_theta, reset="threshold")
    return fn(x, None, *params, theta_x=0.1, theta_h=0.05)


@pytest.mark.parametrize("kernel", ["numba", "torch"])
@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_cpu_event_propagates_nan_and_inf_like_the_reference(family, grad, kernel, monkeypatch):
    if kernel == "numba" and not cpu_event.numba_available():
        pytest.skip("numba is not installed")
    monkeypatch.setenv(cpu_event.KERNEL_ENV_VAR, kernel)
    gen = torch.Generator().manual_seed(3)
    t, b, i, h = 6, 3, 4, 7
    x = _poisoned_input(t, b, i, gen)
    params = tuple(p.requires_grad_(grad) for p in _params(family, i, h, gen))
    theta = torch.rand(h, generator=gen, dtype=torch.float64) * 0.2 + 0.05
    ref_fn, event_fn = FAMILIES[family]
    ref = _run(ref_fn, family, x, params, theta)
    got = _run(event_fn, family, x, params, theta)
    assert torch.isnan(ref[0]).any(), "the poisoned input must reach the reference's output"
    _same_result(ref, got, f"{family} ({kernel}, grad={grad})")


def test_cpu_event_alif_propagates_nan_like_the_reference():
    gen = torch.Generator().manual_seed(4)
    t, b, h = 6, 2, 5
    current = torch.randn(t, b, h, generator=gen, dtype=torch.float64)
    current[1, 0, 3] = NAN
    current[2, 1, 0] = INF
    kwargs = {
        "tau_mem": torch.full((h,), 10.0, dtype=torch.float64),
        "tau_adapt": torch.full((h,), 50.0, dtype=torch.float64),
        "weight_hh": torch.randn(h, h, generator=gen, dtype=torch.float64),
        "bias_hh": torch.randn(h, generator=gen, dtype=torch.float64),
    }
    _same_result(alif_scan(current, None, **kwargs), cpu_event.alif_event_scan(current, None, **kwargs), "alif")


@pytest.mark.parametrize("kernel", ["numba", "torch"])
@pytest.mark.parametrize("make", [evsnn.DeltaGRU, evsnn.DeltaLSTM, evsnn.EGRU], ids=lambda c: c.__name__)
def test_stream_propagates_nan_like_the_reference(make, kernel, monkeypatch):
    if kernel == "numba" and not cpu_event.numba_available():
        pytest.skip("numba is not installed")
    monkeypatch.setenv(cpu_event.KERNEL_ENV_VAR, kernel)
    extra = {} if make is evsnn.EGRU else {"theta_x": 0.1, "theta_h": 0.05}
    layer = make(4, 9, dtype=torch.float64, **extra).eval()
    gen = torch.Generator().manual_seed(5)
    x = _poisoned_input(6, 3, 4, gen)
    reference = Stream(layer, batch_size=3, backend="torch")
    event = Stream(layer, batch_size=3, backend="cpu_event")
    assert event.backend == "cpu_event"
    _same(reference.chunk(x[:3]), event.chunk(x[:3]), "chunk")
    for step in range(3, 6):
        _same(reference.step(x[step]), event.step(x[step]), f"step {step}")
    for name, u, v in zip(type(reference.state)._fields, reference.state, event.state):
        _same(u, v, f"state.{name}")
