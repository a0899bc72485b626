"""The fused numba DeltaGRU/DeltaLSTM training kernels (evsnn.ops.delta.cpu_train) against autograd of
the reference scans evsnn.functional.delta_gru_scan/delta_lstm_scan: outputs, final state, delta traces and the
gradients of all of them, float64 to 1e-10 and float32 to rounding; and its sparsity
bookkeeping (columns that are never active are never read, forward or backward)."""

from __future__ import annotations

import pytest
import torch

from evsnn.functional import DeltaGRUState, DeltaLSTMState, delta_gru_scan, delta_lstm_scan
from evsnn.ops import auto
from evsnn.ops.delta import cpu as delta_cpu
from evsnn.ops.delta import cpu_train

# numba comes with the [dev] extra: without it these tests fail rather than skip.
assert cpu_train.kernels_available(), "tests/ops/test_cpu_train.py needs numba: pip install -e '.[dev]'"


CELLS = {
    "gru": (3, DeltaGRUState, delta_gru_scan, "delta_gru_train_scan"),
    "lstm": (4, DeltaLSTMState, delta_lstm_scan, "delta_lstm_train_scan"),
}


def _params(inp: int, hs: int, dtype: torch.dtype, gen: torch.Generator, gates: int = 3) -> list[torch.Tensor]:
    shapes = [(gates * hs, inp), (gates * hs, hs), (gates * hs,), (gates * hs,)]
    return [torch.randn(s, generator=gen, dtype=dtype) * 0.6 for s in shapes]


def _state(batch: int, inp: int, hs: int, dtype: torch.dtype, gen: torch.Generator, cell: str = "gru"):
    def r(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype) * 0.5

    if cell == "gru":
        return DeltaGRUState(r(batch, hs), r(batch, inp), r(batch, hs), r(batch, 4 * hs))
    return DeltaLSTMState(r(batch, hs), r(batch, hs), r(batch, inp), r(batch, hs), r(batch, 4 * hs))


def _run(fn, x, state, params, weights_out, **options):
    """Forward through ``fn`` and gradients of a loss that reads every output (sequence, final
    state, both delta traces) with random weights, w.r.t. input, state and parameters."""
    x = x.clone().requires_grad_(True)
    params = [p.clone().requires_grad_(True) for p in params]
    state = None if state is None else type(state)(*(s.clone().requires_grad_(True) for s in state))
    out, final, trace = fn(x, state, *params, **options)
    results = (out, *final, *trace)
    loss = sum((r * w).sum() for r, w in zip(results, weights_out) if w is not None)
    leaves = [x, *params] + ([] if state is None else list(state))
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return results, grads


def _compare(shape, dtype, options, given_state, seed, atol, rtol, cell="gru", used=None):
    """``used``: the indices of the results (sequence, final state fields, delta traces) the loss
    reads; all of them by default."""
    steps, batch, inp, hs = shape
    gates, state_type, reference, fused_name = CELLS[cell]
    fused = getattr(cpu_train, fused_name)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(steps, batch, inp, generator=gen, dtype=dtype)
    # Repeat some steps so that some inputs do not change: zero deltas, exactly Θ = 0 ties.
    x[1::3] = x[0::3][: x[1::3].shape[0]]
    params = _params(inp, hs, dtype, gen, gates)
    state = _state(batch, inp, hs, dtype, gen, cell) if given_state else None
    ref_out, ref_final, ref_trace = reference(x, state, *params, **options)
    weights_out = [torch.randn(t.shape, generator=gen, dtype=dtype) for t in (ref_out, *ref_final, *ref_trace)]
    if used is not None:
        weights_out = [w if i in used else None for i, w in enumerate(weights_out)]
    ref, ref_g = _run(reference, x, state, params, weights_out, **options)
    got, got_g = _run(fused, x, state, params, weights_out, **options)
    names = ["h", *(f"final {f}" for f in state_type._fields), "delta_x", "delta_h"]
    for name, a, b in zip(names, got, ref):
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol, msg=lambda m, n=name: f"{n}: {m}")
    grad_names = ["x", "weight_ih", "weight_hh", "bias_ih", "bias_hh", *(f"{f}0" for f in state_type._fields)]
    for name, a, b in zip(grad_names, got_g, ref_g):
        if b is None:
            assert a is None or torch.count_nonzero(a) == 0, name
            continue
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol, msg=lambda m, n=name: f"grad {n}: {m}")


OPTIONS = [
    {"theta_x": 0.0, "theta_h": 0.0, "delta_rule": "strict"},
    {"theta_x": 0.0, "theta_h": 0.0, "delta_rule": "inclusive"},
    {"theta_x": 0.3, "theta_h": 0.1, "delta_rule": "strict"},
    {"theta_x": 0.3, "theta_h": 0.1, "delta_rule": "inclusive"},
]


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: f"{o['delta_rule']}-{o['theta_h']}")
@pytest.mark.parametrize("given_state", [False, True])
def test_float64_equals_reference_autograd(single_thread, options, given_state, cell):
    _compare((9, 3, 5, 7), torch.float64, options, given_state, seed=1, atol=1e-10, rtol=1e-10, cell=cell)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("options", OPTIONS[1:3], ids=lambda o: f"{o['delta_rule']}-{o['theta_h']}")
def test_float32_equals_reference_autograd(single_thread, options, cell):
    _compare((12, 4, 6, 16), torch.float32, options, True, seed=2, atol=2e-5, rtol=1e-4, cell=cell)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_batch_parallel_threads_give_the_same_result(single_thread, cell):
    """With two threads the samples run in parallel and the weight gradients are summed from
    per-chunk parts (an uneven split of B = 5): still the reference's values."""
    torch.set_num_threads(2)  # the fixture restores the previous setting
    with cpu_train._threads(5) as threads:
        assert threads == min(2, cpu_train._kernels().numba.config.NUMBA_NUM_THREADS)
    _compare((7, 5, 4, 6), torch.float64, OPTIONS[2], True, seed=6, atol=1e-10, rtol=1e-10, cell=cell)


# Indices into (sequence, *final state, delta_x, delta_h); the final state has 4 fields (GRU) or 5 (LSTM).
LOSS_PARTS = {
    "sequence": lambda n: {0},
    "final-h": lambda n: {1},
    "final-state": lambda n: set(range(1, n + 1)),
    "traces": lambda n: {n + 1, n + 2},
    "delta_h": lambda n: {n + 2},
}


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("part", list(LOSS_PARTS))
def test_outputs_the_loss_does_not_read(single_thread, part, cell):
    """A loss that reads only some outputs: the others' gradients reach the kernel as None (not
    materialised as zeros) and are skipped there; the gradients are still the reference's."""
    used = LOSS_PARTS[part](len(CELLS[cell][1]._fields))
    _compare((9, 3, 5, 7), torch.float64, OPTIONS[2], True, seed=8, atol=1e-10, rtol=1e-10, cell=cell, used=used)


# Losses whose gradient reaches the kernel in other layouts than a contiguous [T, B, H] tensor.
SEQUENCE_LOSSES = {
    "sum": lambda out, w: out.sum(),  # expanded: strides (0, 0, 0)
    "sum-over-units": lambda out, w: (out.sum(-1) * w[..., 0]).sum(),  # expanded over units: (B, 1, 0)
    "batch-major": lambda out, w: (out.permute(1, 0, 2) * w.permute(1, 0, 2).contiguous()).sum(),  # (H, BH, 1)
    "unit-major": lambda out, w: (out.transpose(1, 2) * w.transpose(1, 2).contiguous()).sum(),  # (BH, 1, B)
}


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("loss", list(SEQUENCE_LOSSES))
def test_sequence_gradient_in_any_layout(single_thread, loss, cell):
    """The sequence's gradient is read through its strides (a broadcast one is not copied out to
    full size): each layout gives the reference's gradients."""
    gates, state_type, reference, fused_name = CELLS[cell]
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(9, 3, 5, generator=gen, dtype=torch.float64)
    params = _params(5, 7, torch.float64, gen, gates)
    state = _state(3, 5, 7, torch.float64, gen, cell)
    w = torch.randn(9, 3, 7, generator=gen, dtype=torch.float64)
    grads = []
    for fn in (getattr(cpu_train, fused_name), reference):
        ps = [p.clone().requires_grad_(True) for p in params]
        st = state_type(*(t.clone().requires_grad_(True) for t in state))
        out = fn(x, st, *ps, **OPTIONS[2])[0]
        grads.append(torch.autograd.grad(SEQUENCE_LOSSES[loss](out, w), [*ps, *st], allow_unused=True))
    assert grads[1][1].abs().sum() > 0  # weight_hh gets a gradient: not a vacuous check
    for got, want in zip(*grads):
        if want is None:
            assert got is None or torch.count_nonzero(got) == 0
            continue
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


def test_per_unit_thresholds(single_thread):
    gen = torch.Generator().manual_seed(3)
    theta_x = torch.rand(5, generator=gen, dtype=torch.float64) * 0.4
    theta_h = torch.rand(7, generator=gen, dtype=torch.float64) * 0.2
    _compare(
        (8, 2, 5, 7), torch.float64, {"theta_x": theta_x, "theta_h": theta_h}, True, seed=3, atol=1e-10, rtol=1e-10
    )


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_never_active_columns_are_never_read(single_thread, cell):
    """Input 0 never changes (x̂_0 already holds its value) and hidden unit 2 can never pass its
    threshold: their weight columns are poisoned with NaN. The kernel must give what the
    reference gives with those columns zeroed (a dense product would spread the NaN), and a
    zero gradient for the poisoned columns (their deltas are always 0)."""
    steps, batch, inp, hs = 10, 3, 4, 6
    dtype = torch.float64
    gates, _, reference, fused_name = CELLS[cell]
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(steps, batch, inp, generator=gen, dtype=dtype)
    x[:, :, 0] = 0.7
    state = _state(batch, inp, hs, dtype, gen, cell)
    state = state._replace(x_hat=state.x_hat.clone())
    state.x_hat[:, 0] = 0.7
    theta_h = torch.full((hs,), 0.05, dtype=dtype)
    theta_h[2] = 1e6
    options = {"theta_x": 0.1, "theta_h": theta_h}
    clean = _params(inp, hs, dtype, gen, gates)
    clean[0][:, 0] = 0.0
    clean[1][:, 2] = 0.0
    poisoned = [p.clone() for p in clean]
    poisoned[0][:, 0] = float("nan")
    poisoned[1][:, 2] = float("nan")
    ref_out, ref_final, ref_trace = reference(x, state, *clean, **options)
    weights_out = [torch.randn(t.shape, generator=gen, dtype=dtype) for t in (ref_out, *ref_final, *ref_trace)]
    ref, ref_g = _run(reference, x, state, clean, weights_out, **options)
    got, got_g = _run(getattr(cpu_train, fused_name), x, state, poisoned, weights_out, **options)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
    for a, b in zip(got_g, ref_g):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
    assert torch.count_nonzero(got_g[1][:, 0]) == 0 and torch.count_nonzero(got_g[2][:, 2]) == 0
    # The dense reference does read them: the poison is real.
    assert torch.isnan(reference(x, state, *poisoned, **options)[0]).any()


def test_bad_inputs_are_refused():
    x = torch.randn(3, 2, 4)
    params = _params(4, 5, torch.float32, torch.Generator().manual_seed(0))
    with pytest.raises(TypeError, match="float64"):
        cpu_train.delta_gru_train_scan(x, None, params[0].double(), *params[1:])
    with pytest.raises(ValueError, match="delta_rule"):
        cpu_train.delta_gru_train_scan(x, None, *params, delta_rule="loose")
    with pytest.raises(ValueError, match="theta_h"):
        cpu_train.delta_gru_train_scan(x, None, *params, theta_h=torch.ones(3))
    state = DeltaGRUState(*(t.double() for t in _state(2, 4, 5, torch.float32, torch.Generator().manual_seed(0))))
    with pytest.raises(TypeError, match="state"):
        cpu_train.delta_gru_train_scan(x, state, *params)


@pytest.mark.parametrize("cell", ["gru"])
def test_cpu_event_training_path_uses_the_fused_kernel(single_thread, monkeypatch, cell):
    """backend="cpu_event" in training runs the fused kernel (and gives the reference's
    gradients)."""
    gates, _, reference, fused_name = CELLS[cell]
    event = delta_cpu.delta_gru_scan_cpu if cell == "gru" else delta_cpu.delta_lstm_scan_cpu
    calls = []
    real = getattr(cpu_train, fused_name)
    monkeypatch.setattr(cpu_train, fused_name, lambda *a, **k: calls.append(1) or real(*a, **k))
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(6, 2, 3, generator=gen)
    params = [p.requires_grad_(True) for p in _params(3, 8, torch.float32, gen, gates)]
    out = event(x, None, *params, theta_x=0.1, theta_h=0.1)[0]
    assert calls == [1]
    ref = reference(x, None, *params, theta_x=0.1, theta_h=0.1)[0]
    torch.testing.assert_close(out, ref)
    g = torch.autograd.grad(out.sum(), params)
    r = torch.autograd.grad(ref.sum(), params)
    for a, b in zip(g, r):
        torch.testing.assert_close(a, b)


def test_layer_training_under_auto_runs_the_fused_kernel(single_thread, monkeypatch):
    """evsnn.DeltaGRU in training with backend="auto" at a shape inside the training crossover
    goes through dispatch to the fused kernel, with the reference's outputs and gradients."""
    import evsnn

    monkeypatch.delenv("EVSNN_BACKEND", raising=False)
    calls = []
    real = cpu_train.delta_gru_train_scan
    monkeypatch.setattr(cpu_train, "delta_gru_train_scan", lambda *a, **k: calls.append(1) or real(*a, **k))
    layer = evsnn.DeltaGRU(3, auto.AUTO_MIN_HIDDEN, theta_x=0.05, theta_h=0.05)
    x = torch.randn(5, 2, 3)
    out, _ = layer(x)
    assert calls == [1]
    g = torch.autograd.grad(out.sum(), list(layer.parameters()))
    layer.backend = "torch"
    ref, _ = layer(x)
    r = torch.autograd.grad(ref.sum(), list(layer.parameters()))
    assert calls == [1]
    torch.testing.assert_close(out, ref)
    for a, b in zip(g, r):
        torch.testing.assert_close(a, b)


_THREADS_SCRIPT = """
import torch
from evsnn.ops.delta import cpu_train
torch.set_num_threads(1)
x = torch.randn(6, 3, 4, dtype=torch.float64, requires_grad=True)
w_ih = torch.randn(12, 4, dtype=torch.float64, requires_grad=True)
w_hh = torch.randn(12, 4, dtype=torch.float64, requires_grad=True)
out = cpu_train.delta_gru_train_scan(x, None, w_ih, w_hh, None, None, theta_x=0.1, theta_h=0.1)[0]
out.sum().backward()
print(torch.get_num_threads())
"""


def test_torch_thread_setting_survives_the_kernels():
    """Numba's OpenMP pool, when it starts (the first parallel call of a process, hence a fresh
    process), resets the process-wide OpenMP thread count that torch shares; the delta training
    kernels put torch's setting back: one thread stays one thread."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS")}
    env["NUMBA_NUM_THREADS"] = "2"
    out = subprocess.run([sys.executable, "-c", _THREADS_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1"]
