"""DeltaL1Regularizer(trace=...) uses the Δh of the pass it is given instead of recomputing them:
same value and same float64 gradient as the recomputation from the output."""

from __future__ import annotations

import pytest
import torch

import evsnn
from evsnn import regularizers as R
from evsnn.functional import DeltaTrace
from evsnn.metrics import reference_traces

F64 = torch.float64


@pytest.mark.parametrize("cls", [evsnn.DeltaGRU, evsnn.DeltaLSTM])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_trace_gives_the_recomputed_value_and_gradient(cls, reduction):
    layer = cls(3, 5, theta_x=0.05, theta_h=0.02, batch_first=True).double()
    x = torch.randn(2, 7, 3, dtype=F64)
    reg = R.DeltaL1Regularizer(strength=0.5, reduction=reduction)
    params = [layer.weight_ih, layer.weight_hh, layer.bias_hh]
    rec = reference_traces(layer, x)
    assert (rec.trace.delta_h != 0).any() and (rec.trace.delta_h == 0).any()
    out = rec.output.transpose(0, 1)  # the layer's batch_first layout
    with_trace = reg(out, layer, trace=rec.trace)
    recomputed = reg(out, layer)
    torch.testing.assert_close(with_trace, recomputed, rtol=1e-14, atol=0)
    got = torch.autograd.grad(with_trace, params, retain_graph=True)  # both losses share the pass
    for g, e in zip(got, torch.autograd.grad(recomputed, params)):
        assert e.abs().sum() > 0
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-14)


def test_trace_of_another_pass_is_refused():
    layer = evsnn.DeltaGRU(3, 5, theta_h=0.02)
    x = torch.randn(7, 2, 3)
    rec = reference_traces(layer, x)
    reg = R.DeltaL1Regularizer()
    with pytest.raises(
        ValueError, match=r"trace.delta_h must be the same pass's time-first \(7, 2, 5\), got \(6, 2, 5\)"
    ):
        reg(rec.output, layer, trace=DeltaTrace(rec.trace.delta_x[:-1], rec.trace.delta_h[:-1]))
    with pytest.raises(TypeError, match="trace must be a DeltaTrace, got tuple"):
        reg(rec.output, layer, trace=(rec.trace.delta_x, rec.trace.delta_h))
