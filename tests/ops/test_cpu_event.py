"""The cpu_event backend equals the reference scans: outputs, final states, traces and
gradients (float64 autograd of the reference is the oracle), on random shapes."""

from __future__ import annotations

import pytest
import torch

import evsnn
from evsnn.functional import alif_scan, delta_gru_scan, delta_lstm_scan, egru_scan
from evsnn.ops import auto, cpu_common, dispatch
from evsnn.ops.alif import cpu as alif_cpu
from evsnn.ops.delta import cpu as delta_cpu
from evsnn.ops.egru import cpu as egru_cpu
from evsnn.surrogate import ATan, MultiGaussian, SnnTorchSurrogate, Triangle

SHAPES = [(7, 1, 3, 12), (9, 3, 5, 17), (5, 4, 1, 33)]  # (T, B, I, H)


def _close(a, b, dtype, what):
    tol = {"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
    if isinstance(a, tuple):
        assert len(a) == len(b), what
        for i, (u, v) in enumerate(zip(a, b)):
            _close(u, v, dtype, f"{what}[{i}]")
        return
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} vs {tuple(b.shape)}"
    torch.testing.assert_close(a, b, **tol, msg=lambda m: f"{what}: {m}")


def _leaves(*tensors):
    return [t.detach().clone().requires_grad_(True) if t is not None else None for t in tensors]


def _grads(out, params):
    y, final, trace = out
    # Touch every output so each path of the graph is checked: outputs, states and traces.
    loss = (y * torch.linspace(0.5, 1.5, y.shape[-1], dtype=y.dtype)).sum()
    loss = loss + sum((t.to(y.dtype) ** 2).sum() * 0.1 for t in final) + sum(t.sum() * 0.01 for t in trace)
    live = [p for p in params if p is not None]
    return torch.autograd.grad(loss, live)


def _egru_inputs(shape, dtype, seed, active_state=False):
    gen = torch.Generator().manual_seed(seed)
    t, b, i, h = shape
    x = torch.randn(t, b, i, generator=gen, dtype=dtype)
    w_ih = torch.randn(3 * h, i, generator=gen, dtype=dtype) * 0.6
    w_hh = torch.randn(3 * h, h, generator=gen, dtype=dtype) * 0.6
    b_ih = torch.randn(3 * h, generator=gen, dtype=dtype) * 0.2
    b_hh = torch.randn(3 * h, generator=gen, dtype=dtype) * 0.2
    theta = torch.rand(h, generator=gen, dtype=dtype) * 0.3 + 0.05
    state = None
    if active_state:
        c0 = torch.randn(b, h, generator=gen, dtype=dtype)
        state = evsnn.EGRUState(c0, c0 * (c0 > theta))
    return x, state, w_ih, w_hh, b_ih, b_hh, theta


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reset", ["output", "threshold"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_egru_inference_equals_reference(shape, reset, dtype):
    x, state, *params = _egru_inputs(shape, dtype, seed=sum(shape) + (reset == "threshold"), active_state=True)
    with torch.no_grad():
        ref = egru_scan(x, state, *params, reset=reset)
        got = egru_cpu.egru_scan_cpu(x, state, *params, reset=reset)
    assert 0.0 < float((ref[0] != 0).double().mean()) < 0.9  # the test exercises sparse steps
    _close(got, ref, dtype, f"egru {reset}")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reset", ["output", "threshold"])
@pytest.mark.parametrize("surrogate", [Triangle(0.3), ATan()], ids=["triangle", "atan"])
def test_egru_gradients_equal_reference(shape, reset, surrogate):
    dtype = torch.float64
    x, state, *params = _egru_inputs(shape, dtype, seed=7, active_state=True)
    leaves = _leaves(x, *params, *state)
    x_r, w_ih, w_hh, b_ih, b_hh, theta, c0, y0 = leaves
    # y_0 with a gradient forces a dense first product; c_0 is elementwise only.
    st = evsnn.EGRUState(c0, y0)
    ref = egru_scan(x_r, st, w_ih, w_hh, b_ih, b_hh, theta, reset=reset, surrogate=surrogate)
    got = egru_cpu.egru_scan_cpu(x_r, st, w_ih, w_hh, b_ih, b_hh, theta, reset=reset, surrogate=surrogate)
    _close(got, ref, dtype, "egru train forward")
    _close(_grads(got, leaves), _grads(ref, leaves), dtype, "egru grads")


def test_egru_gradient_without_state_grad_and_float32():
    x, _, *params = _egru_inputs((12, 2, 4, 40), torch.float32, seed=3)
    leaves = _leaves(*params)
    ref = egru_scan(x, None, *leaves)
    got = egru_cpu.egru_scan_cpu(x, None, *leaves)
    _close(got, ref, torch.float32, "egru fp32 forward")
    _close(_grads(got, leaves), _grads(ref, leaves), torch.float32, "egru fp32 grads")


def _alif_inputs(shape, dtype, seed, recurrent=True):
    gen = torch.Generator().manual_seed(seed)
    t, b, _, n = shape
    current = torch.randn(t, b, n, generator=gen, dtype=dtype) * 3.0
    kw = {
        "tau_mem": torch.rand(n, generator=gen, dtype=dtype) * 20 + 2,
        "tau_adapt": torch.rand(n, generator=gen, dtype=dtype) * 100 + 50,
        "b0": 0.01,
        "beta": 1.8,
        "weight_hh": torch.randn(n, n, generator=gen, dtype=dtype) * 0.5 if recurrent else None,
        "bias_hh": torch.randn(n, generator=gen, dtype=dtype) * 0.1 if recurrent else None,
    }
    return current, kw


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("recurrent", [True, False])
def test_alif_inference_equals_reference(shape, recurrent):
    current, kw = _alif_inputs(shape, torch.float32, seed=11, recurrent=recurrent)
    with torch.no_grad():
        ref = alif_scan(current, None, **kw)
        got = alif_cpu.alif_scan_cpu(current, None, **kw)
    assert 0.0 < float(ref[0].mean()) < 0.9
    _close(got, ref, torch.float32, "alif")


@pytest.mark.parametrize("shape", SHAPES[:2])
@pytest.mark.parametrize("surrogate", [MultiGaussian(), Triangle(0.5), MultiGaussian().truncate(1.0)], ids=str)
def test_alif_gradients_equal_reference(shape, surrogate):
    dtype = torch.float64
    current, kw = _alif_inputs(shape, dtype, seed=5)
    names = ["tau_mem", "tau_adapt", "weight_hh", "bias_hh"]
    leaves = _leaves(current, *(kw[k] for k in names))
    kw.update(dict(zip(names, leaves[1:])), surrogate=surrogate)
    ref = alif_scan(leaves[0], None, **kw)
    got = alif_cpu.alif_scan_cpu(leaves[0], None, **kw)
    _close(got, ref, dtype, "alif train forward")
    _close(_grads(got, leaves), _grads(ref, leaves), dtype, "alif grads")


def _delta_inputs(shape, gates, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    t, b, i, h = shape
    # A slow signal plus noise: some input deltas pass the threshold, some do not.
    x = torch.cumsum(torch.randn(t, b, i, generator=gen, dtype=dtype) * 0.3, dim=0)
    params = [
        torch.randn(gates * h, i, generator=gen, dtype=dtype) * 0.5,
        torch.randn(gates * h, h, generator=gen, dtype=dtype) * 0.5,
        torch.randn(gates * h, generator=gen, dtype=dtype) * 0.2,
        torch.randn(gates * h, generator=gen, dtype=dtype) * 0.2,
    ]
    return x, params


DELTA = [(3, delta_gru_scan, delta_cpu.delta_gru_scan_cpu), (4, delta_lstm_scan, delta_cpu.delta_lstm_scan_cpu)]


@pytest.mark.parametrize("gates,ref_fn,ev_fn", DELTA, ids=["gru", "lstm"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("theta", [0.0, 0.15])
def test_delta_inference_equals_reference(gates, ref_fn, ev_fn, shape, theta):
    x, params = _delta_inputs(shape, gates, torch.float32, seed=21)
    with torch.no_grad():
        ref = ref_fn(x, None, *params, theta_x=theta, theta_h=theta)
        got = ev_fn(x, None, *params, theta_x=theta, theta_h=theta)
    if theta > 0:
        assert 0.0 < float((ref[2].delta_h != 0).double().mean()) < 1.0
    _close(got, ref, torch.float32, "delta")


@pytest.mark.parametrize("gates,ref_fn,ev_fn", DELTA, ids=["gru", "lstm"])
@pytest.mark.parametrize("shape", SHAPES[:2])
def test_delta_gradients_equal_reference(gates, ref_fn, ev_fn, shape):
    dtype = torch.float64
    x, params = _delta_inputs(shape, gates, dtype, seed=2)
    leaves = _leaves(x, *params)
    ref = ref_fn(leaves[0], None, *leaves[1:], theta_x=0.1, theta_h=0.1)
    got = ev_fn(leaves[0], None, *leaves[1:], theta_x=0.1, theta_h=0.1)
    _close(got, ref, dtype, "delta train forward")
    _close(_grads(got, leaves), _grads(ref, leaves), dtype, "delta grads")


def test_delta_with_given_state_continues_the_reference():
    x, params = _delta_inputs((10, 2, 3, 9), 3, torch.float32, seed=4)
    with torch.no_grad():
        _, mid, _ = delta_gru_scan(x[:5], None, *params, theta_x=0.1, theta_h=0.1)
        ref = delta_gru_scan(x[5:], mid, *params, theta_x=0.1, theta_h=0.1)
        got = delta_cpu.delta_gru_scan_cpu(x[5:], mid, *params, theta_x=0.1, theta_h=0.1)
    _close(got, ref, torch.float32, "delta continued")


def test_check_reasons_and_crossover():
    cpu = torch.device("cpu")
    ok = {"device": cpu, "dtype": torch.float32, "shape": (10, 1, 1024)}
    assert cpu_common.check_cpu(**ok, auto=False) is None
    assert cpu_common.check_cpu(**ok, family="egru", training=False) is None
    assert "family" in cpu_common.check_cpu(**ok, training=False)
    assert "CPU" in cpu_common.check_cpu(**{**ok, "device": torch.device("meta")})
    assert "float16" in cpu_common.check_cpu(**{**ok, "dtype": torch.float16})
    assert "zoneout" in cpu_common.check_cpu(**ok, zoneout=0.1, auto=False)
    assert "snntorch" in cpu_common.check_cpu(**ok, surrogate=SnnTorchSurrogate(lambda x: x), auto=False)
    big_batch = {**ok, "shape": (10, auto.AUTO_MAX_BATCH + 1, 1024)}
    small = {**ok, "shape": (10, 1, auto.AUTO_MIN_HIDDEN - 1)}
    assert cpu_common.check_cpu(**big_batch, auto=False) is None
    assert "batch" in cpu_common.check_cpu(**big_batch, auto=True, family="egru", training=False)
    assert "hidden" in cpu_common.check_cpu(**small, auto=True, family="egru", training=False)
    assert "cpu_event" in dispatch.registered("egru")
    chosen = dispatch.resolve("egru", "auto", **ok, surrogate=Triangle(0.3), zoneout=0.0, training=False)
    assert chosen.name == "cpu_event"
    assert dispatch.resolve("egru", "auto", **big_batch).name == "torch"


# Decisions measured with benchmarks/cpu_crossover.py (docs/benchmarks.md, "CPU backend choice");
# EGRU training on the fused kernel (evsnn.ops.egru.cpu_train) beat the reference 5.9-65x at every
# measured B in {1, 8, 32}, H in {64, ..., 1024}; smaller H and larger B were not measured.
AUTO_DECISIONS = [
    # family, training, batch, hidden, cpu_event chosen
    ("egru", False, 1, 1024, True),
    ("egru", False, 8, 1024, True),
    ("egru", True, 32, 1024, True),
    ("egru", True, 1, 1024, True),
    ("egru", True, 8, 64, True),
    ("egru", True, 8, 32, False),
    ("egru", True, 64, 1024, False),
    ("egru", False, 1, 64, False),
    ("egru", False, 64, 1024, False),
    ("egru", False, 32, 128, False),
    ("egru", False, 32, 256, True),
    ("delta_gru", False, 1, 1024, True),
    ("delta_gru", True, 8, 1024, True),
    ("delta_gru", True, 1, 1024, True),
    ("delta_gru", True, 32, 128, True),
    ("delta_gru", True, 64, 1024, False),
    ("delta_lstm", True, 8, 1024, True),
    ("delta_lstm", True, 1, 1024, True),
    ("delta_lstm", True, 16, 256, True),
    ("delta_lstm", True, 32, 64, False),
    ("delta_lstm", True, 64, 1024, False),
    ("alif", True, 32, 1024, True),
    ("alif", True, 64, 32, True),
    ("alif", True, 65, 128, False),
    ("alif", True, 8, 16, False),
    ("alif", False, 32, 1024, True),
    ("alif", False, 64, 32, True),
    ("alif", False, 128, 1024, False),
]


@pytest.mark.parametrize("family,training,batch,hidden,chosen", AUTO_DECISIONS)
def test_auto_decides_training_and_inference_apart(family, training, batch, hidden, chosen):
    reason = auto.auto_reason(family, training, batch, hidden)
    assert (reason is None) == chosen, reason
    if not chosen:
        assert ("training" if training else "inference") in reason
    via_dispatch = dispatch.resolve(
        family, "auto", device=torch.device("cpu"), dtype=torch.float32, shape=(10, batch, hidden), training=training
    )
    assert via_dispatch.name == ("cpu_event" if chosen else "torch")


def test_layer_auto_follows_grad_recording(monkeypatch):
    """A layer tells dispatch whether its call records gradients: at H = 64 the same EGRU runs
    the reference under no_grad (the inference crossover starts at H = 128) and cpu_event when
    training (the fused training kernel wins from H = 64); an explicit backend="cpu_event" runs
    the event path in inference too."""
    monkeypatch.delenv("EVSNN_BACKEND", raising=False)
    layer = evsnn.EGRU(3, 64)
    x = torch.randn(4, 2, 3)
    with torch.no_grad():
        assert layer._resolve_backend(x).name == "torch"
    assert layer._resolve_backend(x).name == "cpu_event"
    layer.requires_grad_(False)
    assert layer._resolve_backend(x).name == "torch"  # grad mode on, but nothing records a graph
    layer.requires_grad_(True)
    layer.backend = "cpu_event"
    with torch.no_grad():
        assert layer._resolve_backend(x).name == "cpu_event"
    out, _ = layer(x)
    layer.backend = "torch"
    ref, _ = layer(x)
    torch.testing.assert_close(out, ref)
    g = torch.autograd.grad(out.sum(), layer.weight_hh)[0]
    r = torch.autograd.grad(ref.sum(), layer.weight_hh)[0]
    torch.testing.assert_close(g, r)


def test_bad_calls_raise_clear_errors():
    x, state, *params = _egru_inputs((3, 1, 2, 4), torch.float32, seed=0)
    with pytest.raises(ValueError, match="zoneout"):
        egru_cpu.egru_scan_cpu(x, None, *params, zoneout=0.1)
    with pytest.raises(ValueError, match="reset"):
        egru_cpu.egru_scan_cpu(x, None, *params, reset="nope")
    with pytest.raises(TypeError, match="snntorch"):
        egru_cpu.egru_scan_cpu(x, None, *params, surrogate=SnnTorchSurrogate(lambda v: v))
    xd, pd = _delta_inputs((3, 1, 2, 4), 3, torch.float32, seed=0)
    with pytest.raises(ValueError, match="theta_h"):
        delta_cpu.delta_gru_scan_cpu(xd, None, *pd, theta_h=torch.ones(3))


@pytest.mark.parametrize("batch_first", [False, True])
def test_layers_through_dispatch(batch_first):
    torch.manual_seed(0)
    h = auto.AUTO_MIN_HIDDEN  # inside the auto crossover, so "auto" and "cpu_event" both run it
    for make in (
        lambda: evsnn.EGRU(4, h, batch_first=batch_first),
        lambda: evsnn.DeltaGRU(4, h, batch_first=batch_first, theta_x=0.05, theta_h=0.05),
        lambda: evsnn.DeltaLSTM(4, h, batch_first=batch_first, theta_x=0.05, theta_h=0.05),
        lambda: evsnn.ALIF(4, h, batch_first=batch_first),
    ):
        layer = make()
        x = torch.randn(2, 6, 4) if batch_first else torch.randn(6, 2, 4)
        layer.backend = "torch"
        ref_out, ref_state = layer(x)
        layer.backend = "cpu_event"
        out, final = layer(x)
        _close((out, *final), (ref_out, *ref_state), torch.float32, type(layer).__name__)
        g = torch.autograd.grad(out.sum(), layer.weight_hh)[0]
        r = torch.autograd.grad(ref_out.sum(), layer.weight_hh)[0]
        _close(g, r, torch.float32, f"{type(layer).__name__} weight_hh grad")


# --------------------------------------------------------------------------------------------
# The runners' fused numba loops, chunk (run) and step by step (numba is a [dev] dependency:
# without it these fail instead of skipping)
# --------------------------------------------------------------------------------------------


def _runner_and_reference(family, shape, dtype, seed, poison=False):
    """A runner with a non-trivial initial state, and the reference scan's result from that state.

    ``poison``: some units can never become active (θ huge); their outgoing weights (columns of
    ``weight_hh``) are NaN for the runner and 0 for the reference, so any read of an inactive
    row shows up as NaN in the runner's output.
    """
    t, b, i, h = shape
    quiet = torch.arange(h) % 3 == 0
    if family.startswith("egru"):
        reset = family.split("_")[1]
        x, state, w_ih, w_hh, b_ih, b_hh, theta = _egru_inputs(shape, dtype, seed, active_state=True)
        if poison:
            theta = torch.where(quiet, torch.full_like(theta, 1e9), theta)
            state = evsnn.EGRUState(state.c, state.y * ~quiet)
            w_hh[:, quiet] = 0.0
        ref = egru_scan(x, state, w_ih, w_hh, b_ih, b_hh, theta, reset=reset)
        if poison:
            w_hh = w_hh.clone()
            w_hh[:, quiet] = float("nan")
        runner = egru_cpu.EGRURunner(w_ih, w_hh, b_ih, b_hh, theta, reset=reset)
        runner.load(state)
        return runner, x, ref
    gates, ref_fn, _ = DELTA[0] if family == "delta_gru" else DELTA[1]
    x, params = _delta_inputs(shape, gates, dtype, seed)
    theta_h = torch.full((h,), 0.15, dtype=dtype)
    if poison:
        theta_h[quiet] = 1e9
        params[1][:, quiet] = 0.0
    # Continue from a mid-sequence state so that x̂, ĥ, M (and c) all start away from zero.
    _, mid, _ = ref_fn(x[:3], None, *params, theta_x=0.15, theta_h=theta_h)
    ref = ref_fn(x[3:], mid, *params, theta_x=0.15, theta_h=theta_h)
    if poison:
        params[1] = params[1].clone()
        params[1][:, quiet] = float("nan")
    runner_type = delta_cpu.DeltaGRURunner if family == "delta_gru" else delta_cpu.DeltaLSTMRunner
    runner = runner_type(*params, theta_x=0.15, theta_h=theta_h)
    runner.load(mid)
    runner.block = 2  # several GEMM blocks per chunk
    return runner, x[3:], ref


FAMILIES = ["egru_output", "egru_threshold", "delta_gru", "delta_lstm"]


def _activity(family, ref):
    return float(((ref[0] if family.startswith("egru") else ref[2].delta_h) != 0).double().mean())


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(8, 1, 3, 17), (9, 3, 5, 33)])
def test_runner_chunk_equals_reference(family, dtype, shape):
    with torch.inference_mode():
        runner, x, ref = _runner_and_reference(family, shape, dtype, seed=sum(shape))
        assert 0.0 < _activity(family, ref) < 0.9  # sparse steps are exercised
        if family.startswith("egru"):
            y, c_pre = runner.run(x)
            _close((y, tuple(runner.state()), c_pre), (ref[0], tuple(ref[1]), ref[2].c_pre), dtype, family)
        else:
            h, deltas = runner.run(x)
            n_in = x.shape[-1]
            got = (h, tuple(runner.state()), deltas[..., :n_in], deltas[..., n_in:])
            _close(got, (ref[0], tuple(ref[1]), *ref[2]), dtype, family)


@pytest.mark.parametrize("family", FAMILIES)
def test_runner_steps_equal_reference(family):
    with torch.inference_mode():
        runner, x, ref = _runner_and_reference(family, (8, 2, 4, 21), torch.float32, seed=3)
        outs = []
        for t in range(x.shape[0]):
            if family.startswith("egru"):
                outs.append(runner.step(runner.project(x[t]))[0].clone())
            else:
                outs.append(runner.step(x[t]).clone())  # the step path gathers Δx rows, no GEMM
        _close((torch.stack(outs), tuple(runner.state())), (ref[0], tuple(ref[1])), torch.float32, family)


@pytest.mark.parametrize("family", FAMILIES)
def test_runner_never_reads_rows_of_inactive_units(family):
    with torch.inference_mode():
        runner, x, ref = _runner_and_reference(family, (6, 2, 3, 18), torch.float32, seed=9, poison=True)
        out = runner.run(x)[0]
        assert torch.isfinite(out).all(), "a NaN row of an inactive unit was read"
        _close(out, ref[0], torch.float32, f"{family} poisoned")


def test_without_numba_cpu_event_raises_and_auto_runs_the_reference(monkeypatch):
    """cpu_event is the numba kernels only: without numba an explicit request (layer, scan,
    runner) raises naming the ``cpu`` extra, and "auto" picks the reference where it would
    otherwise pick cpu_event."""
    monkeypatch.delenv("EVSNN_BACKEND", raising=False)
    x, state, w_ih, w_hh, b_ih, b_hh, theta = _egru_inputs((3, 1, 2, 4), torch.float32, seed=0)
    inside = {"dtype": torch.float32, "shape": (10, 1, 1024), "training": False}
    assert dispatch.resolve("egru", "auto", torch.device("cpu"), **inside).name == "cpu_event"
    monkeypatch.setattr(cpu_common, "numba_available", lambda: False)
    dispatch._CACHE.clear()
    try:
        assert dispatch.resolve("egru", "auto", torch.device("cpu"), **inside).name == "torch"
        with pytest.raises(dispatch.BackendUnavailable, match=r"numba.*evsnn\[cpu\]"):
            evsnn.EGRU(2, 4, backend="cpu_event")(torch.randn(3, 1, 2))
        with pytest.raises(RuntimeError, match=r"evsnn\[cpu\]"):
            egru_cpu.egru_scan_cpu(x, state, w_ih, w_hh, b_ih, b_hh, theta)
        with pytest.raises(RuntimeError, match=r"EGRURunner.*evsnn\[cpu\]"):
            egru_cpu.EGRURunner(w_ih, w_hh, b_ih, b_hh, theta)
        with pytest.raises(RuntimeError, match=r"DeltaGRURunner.*evsnn\[cpu\]"):
            delta_cpu.DeltaGRURunner(torch.zeros(12, 2), torch.zeros(12, 4), None, None)
    finally:
        dispatch._CACHE.clear()


def test_fused_runner_refuses_mixed_dtypes():
    x, state, *params = _egru_inputs((2, 1, 2, 4), torch.float32, seed=0)
    runner = egru_cpu.EGRURunner(*params)
    with pytest.raises(TypeError, match="expected dtype torch.float32"):
        runner.load(evsnn.EGRUState(torch.zeros(1, 4, dtype=torch.float64), torch.zeros(1, 4, dtype=torch.float64)))
    runner.load(evsnn.EGRUState(torch.zeros(1, 4), torch.zeros(1, 4)))
    with pytest.raises(TypeError, match="got torch.float64"):
        runner.step(torch.zeros(1, 12, dtype=torch.float64))
    xd, pd = _delta_inputs((3, 1, 2, 4), 3, torch.float32, seed=0)
    delta = delta_cpu.DeltaGRURunner(*pd)
    delta.load(delta.initial_state(1, xd))
    with pytest.raises(TypeError, match="got torch.float64"):
        delta.run(xd.double())
