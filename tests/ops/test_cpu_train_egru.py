"""The fused numba EGRU training kernel (evsnn.ops.egru.cpu_train) against autograd of the reference
scan evsnn.functional.egru_scan: outputs, final state, the c_pre trace and the gradients of all of
them w.r.t. input, initial state, weights, biases and threshold, float64 to 1e-10 and float32 to
rounding, for every evsnn surrogate, both resets and zoneout; non-finite values as in the reference;
and its sparsity bookkeeping (a row of W_hh whose unit never fires nor enters the support is never read)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from evsnn import surrogate as sg
from evsnn.functional import EGRUState, egru_scan
from evsnn.ops.egru import cpu_train

# numba comes with the [dev] extra: without it these tests fail rather than skip.
assert cpu_train.kernels_available(), "tests/ops/test_cpu_train_egru.py needs numba: pip install -e '.[dev]'"


class _SoftStep(sg.Surrogate):
    """A user surrogate with no kernel_spec: the kernel takes its pseudo-derivative from autograd."""

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        return 2.0 / torch.cosh(2.0 * x) ** 2

    def primitive(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(2.0 * x)


SURROGATES = {
    "user_soft_step": _SoftStep(),
    "triangle": sg.Triangle(0.3),
    "multi_gaussian": sg.MultiGaussian(),
    "gaussian": sg.Gaussian(),
    "atan": sg.ATan(),
    "fast_sigmoid": sg.FastSigmoid(),
    "truncated_gaussian": sg.Gaussian().truncate(0.4),
}


def _params(inp: int, hs: int, dtype: torch.dtype, gen: torch.Generator, bias: bool = True) -> list:
    w_ih = torch.randn(3 * hs, inp, generator=gen, dtype=dtype) * 0.8
    w_hh = torch.randn(3 * hs, hs, generator=gen, dtype=dtype) * 0.8
    b_ih = torch.randn(3 * hs, generator=gen, dtype=dtype) * 0.3 if bias else None
    b_hh = torch.randn(3 * hs, generator=gen, dtype=dtype) * 0.3 if bias else None
    theta = torch.rand(hs, generator=gen, dtype=dtype) * 0.3 + 0.05
    return [w_ih, w_hh, b_ih, b_hh, theta]


def _run(fn, x, state, params, weights_out, **options):
    """Forward through ``fn`` and gradients of a loss that reads every output (sequence, final
    state, c_pre trace) with random weights, w.r.t. input, parameters and state."""
    x = x.clone().requires_grad_(True)
    params = [None if p is None else p.clone().requires_grad_(True) for p in params]
    state = None if state is None else EGRUState(*(s.clone().requires_grad_(True) for s in state))
    out, final, trace = fn(x, state, *params, **options)
    results = (out, *final, *trace)
    loss = sum((r * w).sum() for r, w in zip(results, weights_out))
    leaves = [x, *(p for p in params if p is not None)] + ([] if state is None else list(state))
    return results, torch.autograd.grad(loss, leaves, allow_unused=True)


def _compare(shape, dtype, options, given_state, seed, atol, rtol, bias=True, rng_seed=None):
    steps, batch, inp, hs = shape
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(steps, batch, inp, generator=gen, dtype=dtype)
    params = _params(inp, hs, dtype, gen, bias)
    state = None
    if given_state:
        c0 = torch.randn(batch, hs, generator=gen, dtype=dtype) * 0.5
        state = EGRUState(c0, torch.where(c0 > 0.2, c0, torch.zeros_like(c0)))
    with torch.no_grad():
        ref_results = egru_scan(x, state, *params, **options)
    ref_flat = (ref_results[0], *ref_results[1], *ref_results[2])
    weights_out = [torch.randn(t.shape, generator=gen, dtype=dtype) for t in ref_flat]
    if rng_seed is not None:
        torch.manual_seed(rng_seed)
    ref, ref_g = _run(egru_scan, x, state, params, weights_out, **options)
    if rng_seed is not None:
        torch.manual_seed(rng_seed)
    got, got_g = _run(cpu_train.egru_train_scan, x, state, params, weights_out, **options)
    events = (ref[0] != 0).double().mean().item()
    assert 0.02 < events < 0.9, f"the case must have some events and some silence, got {events:.3f}"
    for name, a, b in zip(["y", "final c", "final y", "c_pre"], got, ref):
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol, msg=lambda m, n=name: f"{n}: {m}")
    names = ["x", "weight_ih", "weight_hh", "bias_ih", "bias_hh", "threshold"]
    names = [n for n in names if bias or "bias" not in n] + (["c0", "y0"] if given_state else [])
    assert len(got_g) == len(ref_g) == len(names)
    for name, a, b in zip(names, got_g, ref_g):
        assert b is not None and a is not None, name
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol, msg=lambda m, n=name: f"grad {n}: {m}")


@pytest.mark.parametrize("given_state", [False, True], ids=["zero_state", "given_state"])
@pytest.mark.parametrize("reset", ["output", "threshold"])
@pytest.mark.parametrize("surrogate", sorted(SURROGATES))
def test_float64_equals_reference_autograd(single_thread, surrogate, reset, given_state):
    options = {"reset": reset, "surrogate": SURROGATES[surrogate]}
    _compare((7, 6, 4, 9), torch.float64, options, given_state, seed=1, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("reset", ["output", "threshold"])
def test_float32_equals_reference_autograd(single_thread, reset):
    options = {"reset": reset, "surrogate": SURROGATES["triangle"]}
    _compare((9, 4, 5, 16), torch.float32, options, True, seed=2, atol=1e-4, rtol=1e-4)


def test_without_biases_and_with_a_scalar_threshold(single_thread):
    _compare((6, 2, 3, 8), torch.float64, {"reset": "threshold"}, False, seed=3, atol=1e-10, rtol=1e-10, bias=False)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(5, 2, 3, generator=gen, dtype=torch.float64)
    w_ih, w_hh, b_ih, b_hh, _ = _params(3, 6, torch.float64, gen)
    theta = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    ref = egru_scan(x, None, w_ih, w_hh, b_ih, b_hh, theta)[0]
    got = cpu_train.egru_train_scan(x, None, w_ih, w_hh, b_ih, b_hh, theta)[0]
    torch.testing.assert_close(got, ref, atol=1e-12, rtol=1e-12)
    g_ref = torch.autograd.grad((ref * ref).sum(), theta)[0]
    g_got = torch.autograd.grad((got * got).sum(), theta)[0]
    torch.testing.assert_close(g_got, g_ref, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("reset", ["output", "threshold"])
@pytest.mark.parametrize("training", [True, False], ids=["train_mask", "eval_mean"])
def test_zoneout_equals_reference(single_thread, reset, training):
    """In training both draw the same Bernoulli masks under one seed (the kernel draws them as
    the reference does); in eval zoneout is its expectation."""
    options = {"reset": reset, "zoneout": 0.3, "training": training}
    _compare((8, 3, 4, 9), torch.float64, options, True, seed=4, atol=1e-10, rtol=1e-10, rng_seed=11)


def test_batch_parallel_threads_give_the_same_result(single_thread):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(6, 5, 4, generator=gen, dtype=torch.float64)
    params = _params(4, 10, torch.float64, gen)
    weights_out = [torch.randn(6, 5, 10, generator=gen, dtype=torch.float64)]
    one, one_g = _run(cpu_train.egru_train_scan, x, None, params, weights_out)
    torch.set_num_threads(2)
    two, two_g = _run(cpu_train.egru_train_scan, x, None, params, weights_out)
    for a, b in zip((*one, *one_g), (*two, *two_g)):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("reset", ["output", "threshold"])
def test_non_finite_values_propagate_like_the_reference(single_thread, reset):
    """A NaN and ±inf in the input: the forward (sequence, state, trace) equals the reference's
    with NaN at exactly the same positions, in training mode."""
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(6, 3, 4, generator=gen, dtype=torch.float64)
    x[1, 1, 2] = float("nan")
    x[2, 0, 0] = float("inf")
    x[3, 0, 1] = -float("inf")
    params = [p.requires_grad_(True) for p in _params(4, 7, torch.float64, gen)]
    ref = egru_scan(x, None, *params, reset=reset)
    got = cpu_train.egru_train_scan(x, None, *params, reset=reset)
    assert torch.isnan(ref[0]).any(), "the poisoned input must reach the reference's output"
    assert not torch.isnan(ref[0][:, 2]).any(), "sample 2 is clean and must stay so"
    for a, b in zip((got[0], *got[1], *got[2]), (ref[0], *ref[1], *ref[2])):
        assert torch.equal(torch.isnan(a), torch.isnan(b))
        torch.testing.assert_close(a.detach(), b.detach(), atol=1e-10, rtol=1e-10, equal_nan=True)


@pytest.mark.parametrize("reset", ["output", "threshold"])
def test_never_active_rows_are_never_read(single_thread, reset):
    """Unit 2 can never fire nor enter the triangle's support (θ = 1e6): its column of W_hh is
    poisoned with NaN. The kernel must give what the reference gives with that column zeroed (a
    dense product would spread the NaN), and a zero gradient for it."""
    steps, batch, inp, hs = 10, 3, 4, 6
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(steps, batch, inp, generator=gen, dtype=torch.float64)
    clean = _params(inp, hs, torch.float64, gen)
    clean[4][2] = 1e6
    clean[1][:, 2] = 0.0
    poisoned = [p.clone() for p in clean]
    poisoned[1][:, 2] = float("nan")
    options = {"reset": reset}
    with torch.no_grad():
        ref_out, ref_final, ref_trace = egru_scan(x, None, *clean, **options)
    weights_out = [torch.randn(t.shape, generator=gen, dtype=torch.float64) for t in (ref_out, *ref_final, *ref_trace)]
    ref, ref_g = _run(egru_scan, x, None, clean, weights_out, **options)
    got, got_g = _run(cpu_train.egru_train_scan, x, None, poisoned, weights_out, **options)
    assert (ref[0] != 0).any(), "other units must fire"
    for a, b in zip((*got, *got_g), (*ref, *ref_g)):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
    assert torch.count_nonzero(got_g[2][:, 2]) == 0
    # The dense reference does read it: the poison is real.
    assert torch.isnan(egru_scan(x, None, *poisoned, **options)[0]).any()


_THREADS_SCRIPT = """
import torch
from evsnn.ops.egru.cpu_train import egru_train_scan
torch.set_num_threads(1)
x = torch.randn(4, 3, 2, dtype=torch.float64)
w = [torch.randn(15, 2, dtype=torch.float64, requires_grad=True), torch.randn(15, 5, dtype=torch.float64), None, None]
egru_train_scan(x, None, *w, torch.full((5,), 0.1, dtype=torch.float64))[0].sum().backward()
print(torch.get_num_threads())
"""


def test_torch_thread_setting_survives_the_kernels():
    """Numba's OpenMP pool, when it starts (the first parallel call of a process, hence a fresh
    process here), resets the process-wide OpenMP thread count that torch shares; the kernels
    put torch's setting back: one thread stays one thread."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS")}
    env["NUMBA_NUM_THREADS"] = "2"
    out = subprocess.run([sys.executable, "-c", _THREADS_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1"]


def test_bad_inputs_are_refused():
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(3, 2, 4)
    params = _params(4, 5, torch.float32, gen)
    with pytest.raises(TypeError, match="float64"):
        cpu_train.egru_train_scan(x, None, params[0].double(), *params[1:])
    with pytest.raises(ValueError, match="reset"):
        cpu_train.egru_train_scan(x, None, *params, reset="soft")
    with pytest.raises(ValueError, match="zoneout"):
        cpu_train.egru_train_scan(x, None, *params, zoneout=1.0)
    with pytest.raises(TypeError, match="snntorch"):
        cpu_train.egru_train_scan(x, None, *params, surrogate=sg.SnnTorchSurrogate(torch.sigmoid))
    with pytest.raises(ValueError, match="threshold"):
        cpu_train.egru_train_scan(x, None, *params[:4], torch.ones(3))
    with pytest.raises(ValueError, match="T >= 1"):
        cpu_train.egru_train_scan(x[:0], None, *params)
    with pytest.raises(TypeError, match="state field 'y'"):
        cpu_train.egru_train_scan(x, EGRUState(torch.zeros(2, 5), torch.zeros(2, 4)), *params)


def test_cpu_event_training_path_uses_the_fused_kernel(single_thread, monkeypatch):
    """backend="cpu_event" in training runs the fused kernel (with the reference's gradients)."""
    from evsnn.ops import cpu_common
    from evsnn.ops.egru import cpu as egru_cpu

    calls = []
    real = cpu_train.egru_train_scan
    monkeypatch.setattr(cpu_train, "egru_train_scan", lambda *a, **k: calls.append(1) or real(*a, **k))
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(6, 2, 3, generator=gen)
    params = [p.requires_grad_(True) for p in _params(3, 8, torch.float32, gen)]
    out = egru_cpu.egru_scan_cpu(x, None, *params)[0]
    assert calls == [1]
    ref = egru_scan(x, None, *params)[0]
    torch.testing.assert_close(out, ref)
    for a, b in zip(torch.autograd.grad(out.sum(), params), torch.autograd.grad(ref.sum(), params)):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="zoneout"):
        egru_cpu.egru_scan_cpu(x.detach(), None, *(p.detach() for p in params), zoneout=0.2)
    reason = cpu_common.check_cpu(device="cpu", zoneout=0.2, family="egru", training=False, auto=False)
    assert "zoneout" in reason


def test_layer_training_with_zoneout_runs_the_fused_kernel(single_thread, monkeypatch):
    """evsnn.EGRU with zoneout in training: backend="auto" at a shape inside the training
    crossover goes through dispatch to the fused kernel, and under one seed gives the reference
    layer's outputs and gradients (same zoneout masks)."""
    import evsnn
    from evsnn.ops import cpu_common

    monkeypatch.delenv("EVSNN_BACKEND", raising=False)
    assert cpu_common.check_cpu(device="cpu", zoneout=0.2, family="egru", training=True, auto=False) is None
    calls = []
    real = cpu_train.egru_train_scan
    monkeypatch.setattr(cpu_train, "egru_train_scan", lambda *a, **k: calls.append(1) or real(*a, **k))
    torch.manual_seed(0)
    layer = evsnn.EGRU(3, 64, zoneout=0.2, reset="threshold").train()
    x = torch.randn(5, 2, 3)
    assert layer._resolve_backend(x).name == "cpu_event"
    torch.manual_seed(1)
    out, _ = layer(x)
    assert calls == [1]
    g = torch.autograd.grad(out.sum(), list(layer.parameters()))
    layer.backend = "torch"
    torch.manual_seed(1)
    ref, _ = layer(x)
    r = torch.autograd.grad(ref.sum(), list(layer.parameters()))
    assert (ref != 0).any()
    torch.testing.assert_close(out, ref)
    for a, b in zip(g, r):
        torch.testing.assert_close(a, b)


# Losses that read only some outputs: the others' gradients reach the backward as None and are
# skipped, and a sum's or mean's gradient comes broadcast (all strides 0) or in another layout.
_PARTIAL_LOSSES = {
    "sequence_sum": lambda out, final, trace, w: out.sum(),
    "sequence_mean": lambda out, final, trace, w: out.mean(),
    # The sequence's gradient takes the layout of the weights: strides (H, T·H, 1) and (1, T, T·B).
    "sequence_batch_major": lambda out, final, trace, w: (out * w.transpose(0, 1).contiguous().transpose(0, 1)).sum(),
    "sequence_unit_major": lambda out, final, trace, w: (out * w.permute(2, 1, 0).contiguous().permute(2, 1, 0)).sum(),
    "final_c": lambda out, final, trace, w: (final.c * w[0]).sum(),
    "final_y": lambda out, final, trace, w: (final.y * w[-1]).sum(),
    "trace_only": lambda out, final, trace, w: (trace.c_pre * w).sum(),
    "trace_sum_and_final_y": lambda out, final, trace, w: trace.c_pre.sum() + (final.y * w[1]).sum(),
}


@pytest.mark.parametrize("loss", list(_PARTIAL_LOSSES))
@pytest.mark.parametrize("surrogate", ["triangle", "user_soft_step"])
def test_loss_reading_some_outputs_matches_reference(single_thread, loss, surrogate):
    """Every gradient of a loss that reads only the sequence, only a final state field or only the
    trace (the other outputs' gradients are zero, passed as None) equals float64 autograd of the
    reference, also for a broadcast sequence gradient and for batch-major and unit-major ones."""
    steps, batch, inp, hs = 7, 5, 4, 9
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(steps, batch, inp, generator=gen, dtype=torch.float64)
    params = _params(inp, hs, torch.float64, gen)
    c0 = torch.randn(batch, hs, generator=gen, dtype=torch.float64) * 0.5
    state = EGRUState(c0, torch.where(c0 > 0.2, c0, torch.zeros_like(c0)))
    w = torch.randn(steps, batch, hs, generator=gen, dtype=torch.float64)

    def grads(fn):
        leaves = [t.clone().requires_grad_(True) for t in (x, *params, *state)]
        out, final, trace = fn(
            leaves[0], EGRUState(*leaves[-2:]), *leaves[1:-2], surrogate=SURROGATES[surrogate], reset="threshold"
        )
        return torch.autograd.grad(_PARTIAL_LOSSES[loss](out, final, trace, w), leaves, allow_unused=True)

    for i, (got, want) in enumerate(zip(grads(cpu_train.egru_train_scan), grads(egru_scan))):
        if want is None:
            assert got is None or not got.any(), f"gradient {i}"
        else:
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10, msg=lambda m, i=i: f"gradient {i}: {m}")
