"""Stream.step on the cpu_event backend: one fused numba call per step (input projection or input
encoding included) whose outputs and state equal the reference scans of evsnn.functional, in
float64 and float32, at B = 1 and B > 1, from a given state; NaN goes where the reference puts it."""

from __future__ import annotations

import pytest
import torch

import evsnn
from evsnn.functional import delta_gru_scan, delta_lstm_scan, egru_scan
from evsnn.ops.delta import cpu as delta_cpu
from evsnn.ops.egru import cpu as egru_cpu
from evsnn.streaming import Stream

N_IN, H, T = 5, 40, 12
TOL = {torch.float64: {"rtol": 1e-10, "atol": 1e-12}, torch.float32: {"rtol": 1e-5, "atol": 1e-5}}
CASES = ["egru_output", "egru_threshold", "delta_gru_strict", "delta_gru_inclusive", "delta_lstm_strict"]


def _signal(steps: int, batch: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.cumsum(torch.randn(steps, batch, N_IN, generator=gen, dtype=torch.float64), dim=0) * 0.4
    return x.to(dtype)


def _layer(case: str, dtype: torch.dtype) -> torch.nn.Module:
    torch.manual_seed(sum(map(ord, case)))
    if case.startswith("egru"):
        layer = evsnn.EGRU(N_IN, H, reset=case.split("_")[1], threshold=0.12, threshold_init="constant")
    else:
        rule = case.split("_")[2]
        cls = evsnn.DeltaGRU if case.startswith("delta_gru") else evsnn.DeltaLSTM
        layer = cls(N_IN, H, theta_x=0.15, theta_h=0.05, delta_rule=rule)
    return layer.to(dtype).eval()


def _reference(case: str, layer: torch.nn.Module, x: torch.Tensor, state):
    """The family's reference scan of evsnn.functional, called with the layer's parameters."""
    weights = (layer.weight_ih, layer.weight_hh, layer.bias_ih, layer.bias_hh)
    with torch.no_grad():
        if case.startswith("egru"):
            return egru_scan(x, state, *weights, layer.threshold, reset=layer.reset)
        scan = delta_gru_scan if case.startswith("delta_gru") else delta_lstm_scan
        return scan(x, state, *weights, theta_x=layer.theta_x, theta_h=layer.theta_h, delta_rule=layer.delta_rule)


def _activity(case: str, out: torch.Tensor, trace) -> float:
    events = out if case.startswith("egru") else trace.delta_h
    return float((events != 0).double().mean())


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("batch", [1, 3])
def test_fused_step_equals_reference_scan_from_a_given_state(case, dtype, batch, single_thread, monkeypatch):
    layer = _layer(case, dtype)
    x = _signal(T, batch, dtype, seed=batch)
    _, mid, _ = _reference(case, layer, x[:4], None)  # a state away from the initial one
    ref_out, ref_final, ref_trace = _reference(case, layer, x[4:], mid)
    assert 0.0 < _activity(case, ref_out, ref_trace) < 0.9  # the sparse paths are exercised

    stream = Stream(layer, batch_size=batch, backend="cpu_event")
    stream.reset(mid)
    # One compiled call per step and no torch matmul/linear: the projection (EGRU) or the input
    # encoding and row gathers (delta cells) happen inside the loop.
    calls = []
    fused = stream._runner._kernel
    monkeypatch.setattr(stream._runner, "_kernel", lambda *args: calls.append(1) or fused(*args))

    def refuse(*args, **kwargs):
        raise AssertionError("Stream.step ran a torch product")

    with monkeypatch.context() as patch:
        for fn in ("linear", "embedding_bag"):
            patch.setattr(torch.nn.functional, fn, refuse)
        patch.setattr(torch, "matmul", refuse)
        got = torch.stack([stream.step(x[t]) for t in range(4, T)])
    assert len(calls) == T - 4
    assert got.dtype == dtype and got.shape == (T - 4, batch, H)
    torch.testing.assert_close(got, ref_out, **TOL[dtype])
    for field, want in zip(stream.state, ref_final):
        torch.testing.assert_close(field, want, **TOL[dtype])


@pytest.mark.parametrize("case", ["egru_output", "delta_gru_strict", "delta_lstm_strict"])
def test_fused_step_equals_the_chunk_and_the_reference_stream(case, single_thread):
    """The numba step, the numba chunk and the reference stream agree."""
    layer = _layer(case, torch.float64)
    x = _signal(T, 2, torch.float64, seed=11)
    fused = Stream(layer, batch_size=2, backend="cpu_event")
    chunk = Stream(layer, batch_size=2, backend="cpu_event").chunk(x)
    plain = Stream(layer, batch_size=2, backend="torch")
    a = torch.stack([fused.step(x[t]) for t in range(T)])
    b = torch.stack([plain.step(x[t]) for t in range(T)])
    torch.testing.assert_close(a, b, **TOL[torch.float64])
    torch.testing.assert_close(a, chunk, **TOL[torch.float64])


def test_egru_step_reads_every_input_column_like_the_reference(single_thread):
    """A zero input times a NaN input weight is NaN in W_ih x: the fused projection must not skip
    zero inputs (unlike the recurrent product, which only skips units without an event)."""
    layer = _layer("egru_output", torch.float64)
    with torch.no_grad():
        layer.weight_ih[:, 0] = float("nan")
    x = _signal(3, 2, torch.float64, seed=2)
    x[..., 0] = 0.0
    ref = _reference("egru_output", layer, x, None)[0]
    stream = Stream(layer, batch_size=2, backend="cpu_event")
    got = torch.stack([stream.step(x[t]) for t in range(3)])
    assert ref.isnan().all()
    torch.testing.assert_close(got, ref, equal_nan=True)


@pytest.mark.parametrize("case", ["egru_output", "egru_threshold", "delta_gru_strict", "delta_lstm_strict"])
def test_nan_input_goes_where_the_reference_puts_it(case, single_thread):
    layer = _layer(case, torch.float64)
    x = _signal(8, 2, torch.float64, seed=4)
    x[3, 1, 2] = float("nan")  # one sample, one feature, one step
    ref = _reference(case, layer, x, None)[0]
    stream = Stream(layer, batch_size=2, backend="cpu_event")
    got = torch.stack([stream.step(x[t]) for t in range(8)])
    assert ref[:, 0].isfinite().all() and ref[3:, 1].isnan().any()  # the other sample stays clean
    torch.testing.assert_close(got, ref, equal_nan=True, **TOL[torch.float64])


def test_fused_step_refuses_an_input_of_another_dtype():
    runner = egru_cpu.EGRURunner(torch.zeros(6, 2), torch.zeros(6, 2), None, None, torch.ones(2))
    runner.load(evsnn.EGRUState(torch.zeros(1, 2), torch.zeros(1, 2)))
    with pytest.raises(TypeError, match="expected dtype torch.float32 .*got torch.float64"):
        runner.step_input(torch.zeros(1, 2, dtype=torch.float64))
    delta = delta_cpu.DeltaGRURunner(torch.zeros(6, 2), torch.zeros(6, 2), None, None)
    delta.load(delta.initial_state(1, torch.zeros(1, 2)))
    with pytest.raises(TypeError, match="expected dtype torch.float32 .*got torch.float64"):
        delta.step(torch.zeros(1, 2, dtype=torch.float64))


def test_refresh_follows_a_layer_converted_to_another_dtype(single_thread):
    layer = _layer("egru_output", torch.float32)
    stream = Stream(layer, batch_size=2, backend="cpu_event")
    x = _signal(6, 2, torch.float64, seed=8)
    stream.step(x[0].float())
    layer.double()
    with pytest.raises(RuntimeError, match="changed since the stream read them"):
        stream.step(x[1])
    stream.refresh()
    got = torch.stack([stream.step(x[t]) for t in range(6)])
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, _reference("egru_output", layer, x, None)[0], **TOL[torch.float64])
