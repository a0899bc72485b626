"""Reliability across backends: non-finite values propagate exactly as in the
reference, T = 0 behaves the same everywhere, a Stream notices weights changed under it, and
the GPU co-residency decision refuses launches that could deadlock."""

from __future__ import annotations

import pytest
import torch

import evsnn
from evsnn.functional import alif_scan, delta_gru_scan, delta_lstm_scan, egru_scan
from evsnn.ops.alif import cpu as alif_cpu
from evsnn.ops.delta import cpu as delta_cpu
from evsnn.ops.egru import cpu as egru_cpu
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
    "delta_gru": (delta_gru_scan, delta_cpu.delta_gru_scan_cpu),
    "delta_lstm": (delta_lstm_scan, delta_cpu.delta_lstm_scan_cpu),
    "egru": (egru_scan, egru_cpu.egru_scan_cpu),
}


def _run(fn, family, x, params, gen_theta):
    if family == "egru":
        return fn(x, None, *params, gen_theta, reset="threshold")
    return fn(x, None, *params, theta_x=0.1, theta_h=0.05)


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_cpu_event_propagates_nan_and_inf_like_the_reference(family, grad):
    gen = torch.Generator().manual_seed(3)
    t, b, i, h = 6, 3, 4, 7
    x = _poisoned_input(t, b, i, gen)
    params = tuple(p.requires_grad_(grad) for p in _params(family, i, h, gen))
    theta = torch.rand(h, generator=gen, dtype=torch.float64) * 0.2 + 0.05
    ref_fn, event_fn = FAMILIES[family]
    ref = _run(ref_fn, family, x, params, theta)
    got = _run(event_fn, family, x, params, theta)
    assert torch.isnan(ref[0]).any(), "the poisoned input must reach the reference's output"
    _same_result(ref, got, f"{family} (grad={grad})")


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
def test_cpu_event_alif_propagates_nan_like_the_reference(grad):
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
    kwargs["weight_hh"].requires_grad_(grad)
    _same_result(alif_scan(current, None, **kwargs), alif_cpu.alif_scan_cpu(current, None, **kwargs), "alif")


@pytest.mark.parametrize("make", [evsnn.DeltaGRU, evsnn.DeltaLSTM, evsnn.EGRU], ids=lambda c: c.__name__)
def test_stream_propagates_nan_like_the_reference(make):
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


# --------------------------------------------------------------------------------------------
# T = 0: one ValueError everywhere, naming the layer and T >= 1
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
def test_cpu_event_scans_refuse_zero_steps(family, grad):
    gen = torch.Generator().manual_seed(6)
    params = tuple(p.requires_grad_(grad) for p in _params(family, 4, 5, gen))
    x = torch.zeros(0, 2, 4, dtype=torch.float64)
    theta = torch.full((5,), 0.2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"at least one time step \(T >= 1\).*T = 0"):
        _run(FAMILIES[family][1], family, x, params, theta)


def test_cpu_event_alif_scan_refuses_zero_steps():
    tau = torch.full((5,), 10.0)
    with pytest.raises(ValueError, match=r"alif.*T >= 1"):
        alif_cpu.alif_scan_cpu(torch.zeros(0, 2, 5), None, tau_mem=tau, tau_adapt=tau)


def test_reference_scans_refuse_zero_steps():
    """The functional scans, the oracle every backend is compared with, give the same error."""
    from evsnn import functional as F

    x, tau = torch.zeros(0, 2, 4), torch.full((4,), 10.0)
    w3, w4, b3, b4 = torch.zeros(12, 4), torch.zeros(12, 4), torch.zeros(12), torch.zeros(16)
    calls = {
        "alif_scan": lambda: F.alif_scan(x, None, tau_mem=tau, tau_adapt=tau),
        "leaky_readout_scan": lambda: F.leaky_readout_scan(x, None, tau=tau),
        "egru_scan": lambda: F.egru_scan(x, None, w3, w3, b3, b3, torch.full((4,), 0.3)),
        "delta_gru_scan": lambda: F.delta_gru_scan(x, None, w3, w3, b3, b3),
        "delta_lstm_scan": lambda: F.delta_lstm_scan(x, None, torch.zeros(16, 4), w4.new_zeros(16, 4), b4, b4),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match=rf"{name} expects at least one time step \(T >= 1\).*T = 0"):
            call()


@pytest.mark.parametrize("backend", ["torch", "cpu_event"])
@pytest.mark.parametrize(
    "make", [evsnn.ALIF, evsnn.EGRU, evsnn.DeltaGRU, evsnn.DeltaLSTM, evsnn.LeakyReadout], ids=lambda c: c.__name__
)
def test_stream_chunk_refuses_zero_steps(make, backend):
    layer = make(4, 6) if make is evsnn.LeakyReadout else make(4, 6, backend=backend)
    stream = Stream(layer, batch_size=2, backend=None if make is evsnn.LeakyReadout else backend)
    with pytest.raises(ValueError, match=rf"Stream\({make.__name__}\).chunk expects at least one time step"):
        stream.chunk(torch.zeros(0, 2, 4))


@pytest.mark.parametrize("batch_first", [False, True])
def test_leaky_readout_refuses_zero_steps(batch_first):
    readout = evsnn.LeakyReadout(4, 3, batch_first=batch_first)
    x = torch.zeros(2, 0, 4) if batch_first else torch.zeros(0, 2, 4)
    with pytest.raises(ValueError, match=r"LeakyReadout expects at least one time step \(T >= 1\)"):
        readout(x)


# --------------------------------------------------------------------------------------------
# LeakyReadout state: dtype and device checked like the other layers' states
# --------------------------------------------------------------------------------------------


def test_leaky_readout_state_dtype_and_device_are_checked():
    readout = evsnn.LeakyReadout(4, 3)
    x = torch.randn(5, 2, 4)
    good = torch.zeros(2, 3)
    torch.testing.assert_close(readout(x, good)[0], readout(x)[0])  # zeros = the initial state
    with pytest.raises(TypeError, match=r"LeakyReadout state must have dtype torch.float32.*got torch.float64"):
        readout(x, good.double())
    with pytest.raises(TypeError, match=r"LeakyReadout state must have dtype torch.float32.*got torch.int64"):
        readout(x, good.long())
    with pytest.raises(ValueError, match=r"LeakyReadout state must be on cpu.*got meta"):
        readout(x, torch.zeros(2, 3, device="meta"))
    with pytest.raises(TypeError, match=r"LeakyReadout state must be a torch.Tensor"):
        readout(x, [[0.0] * 3] * 2)
    stream = Stream(readout, batch_size=2)
    with pytest.raises(TypeError, match=r"Stream\(LeakyReadout\) state must have dtype torch.float32"):
        stream.reset(good.double())
    with pytest.raises(ValueError, match=r"Stream\(LeakyReadout\) state must be on cpu"):
        stream.reset(torch.zeros(2, 3, device="meta"))


# --------------------------------------------------------------------------------------------
# Parameters set to invalid values after construction
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [evsnn.DeltaGRU, evsnn.DeltaLSTM, evsnn.DeltaGRUCell, evsnn.DeltaLSTMCell])
def test_delta_thresholds_are_checked_when_assigned(make):
    layer = make(3, 4, theta_x=0.1)
    for bad, error in ((-0.1, ValueError), (float("nan"), ValueError), (float("inf"), ValueError), ("0.1", TypeError)):
        with pytest.raises(error, match=rf"{make.__name__}.theta_x must be"):
            layer.theta_x = bad
        with pytest.raises(error, match=rf"{make.__name__}.theta_h must be"):
            layer.theta_h = bad
    assert layer.theta_x == 0.1  # the refused value was not stored
    layer.theta_h = 0.25
    assert layer.theta_h == 0.25 and isinstance(layer.theta_h, float)


def _constrained(make):
    """(layer, name of a constrained tensor, a refused value) for each layer kind."""
    layer = make(3, 4)
    if isinstance(layer, (evsnn.EGRU, evsnn.EGRUCell)):
        return layer, "log_threshold", float("nan")
    if isinstance(layer, evsnn.LeakyReadout):
        return layer, "tau", float("nan")
    return layer, "tau_mem", float("nan")


KINDS = [evsnn.ALIF, evsnn.ALIFCell, evsnn.EGRU, evsnn.EGRUCell, evsnn.LeakyReadout]


@pytest.mark.parametrize("make", KINDS, ids=lambda c: c.__name__)
def test_invalid_parameter_is_refused_by_assignment_load_state_dict_and_check(make):
    layer, name, bad = _constrained(make)
    good = {k: v.clone() for k, v in layer.state_dict().items()}
    poisoned = {k: v.clone() for k, v in good.items()}
    poisoned[name][1] = bad
    with pytest.raises(ValueError, match=rf"{make.__name__}.{name} must be finite, got nan at index 1"):
        layer.load_state_dict(poisoned)
    torch.testing.assert_close(getattr(layer, name).detach(), good[name])  # a refused load changes nothing
    # Inside a larger model the layer's own check still runs.
    model = torch.nn.Sequential(make(3, 4))
    with pytest.raises(ValueError, match=rf"{make.__name__}.{name} must be finite"):
        model.load_state_dict({f"0.{k}": v for k, v in poisoned.items()})
    with pytest.raises(ValueError, match=rf"{make.__name__}.{name} must be finite"):
        setattr(layer, name, torch.nn.Parameter(poisoned[name]))
    layer.load_state_dict(good)
    assert layer.check() is layer
    with torch.no_grad():
        getattr(layer, name)[2] = bad  # in-place writes are not watched: check() finds them
    with pytest.raises(ValueError, match=rf"{make.__name__}.{name} must be finite, got nan at index 2"):
        layer.check()


def test_alif_b0_and_beta_rules_and_nan_weights():
    layer = evsnn.ALIF(3, 4, learn_threshold=True)
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    for name, value, what in (("b0", 0.0, "finite and > 0"), ("beta", -0.5, "finite and >= 0")):
        poisoned = {k: v.clone() for k, v in state.items()}
        poisoned[name][0] = value
        with pytest.raises(ValueError, match=rf"ALIF.{name} must be {what}, got {value!r} at index 0"):
            layer.load_state_dict(poisoned)
    with torch.no_grad():
        layer.weight_hh[0, 1] = float("inf")
    with pytest.raises(ValueError, match=r"ALIF.weight_hh must be finite, got inf at index 1"):
        layer.check()


def test_delta_check_finds_nan_weights_and_bad_thresholds():
    layer = evsnn.DeltaGRU(3, 4)
    assert layer.check() is layer
    with torch.no_grad():
        layer.bias_hh[5] = float("nan")
    with pytest.raises(ValueError, match=r"DeltaGRU.bias_hh must be finite, got nan at index 5"):
        layer.check()


def test_egru_threshold_property_of_a_nan_log_threshold_is_caught():
    layer = evsnn.EGRU(3, 4)
    with torch.no_grad():
        layer.log_threshold[0] = float("nan")
    # The forward pass does not look (no host sync); check() does, and names the parameter.
    with pytest.raises(ValueError, match=r"EGRU.log_threshold must be finite"):
        layer.check()


@pytest.mark.parametrize("backend", ["torch", "cpu_event"])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("make", [evsnn.ALIF, evsnn.EGRU, evsnn.DeltaGRU, evsnn.DeltaLSTM], ids=lambda c: c.__name__)
def test_layers_refuse_zero_steps_on_every_backend(make, batch_first, backend):
    layer = make(4, 6, batch_first=batch_first, backend=backend)
    x = torch.zeros(2, 0, 4) if batch_first else torch.zeros(0, 2, 4)
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            with pytest.raises(ValueError, match=rf"^{make.__name__} expects at least one time step \(T >= 1\)"):
                layer(x)


# --------------------------------------------------------------------------------------------
# NIR export of a bare unsupported module names it
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [lambda: torch.nn.GRU(3, 4), torch.nn.ReLU, lambda: torch.nn.LSTM(3, 4)])
def test_nir_export_of_a_bare_unsupported_module_names_it(make):
    from evsnn.interop import nir as nir_interop

    module = make()
    with pytest.raises(ValueError, match=rf"cannot export the model \({type(module).__name__}\) to NIR"):
        nir_interop.export_to_nir(module)


# --------------------------------------------------------------------------------------------
# Persistent GPU kernels: every block must be resident at once (the decision, on CPU)
# --------------------------------------------------------------------------------------------


def test_coresidency_decision():
    from evsnn.ops.cupy_runtime import coresidency_reason

    # One block per SM on 132 SMs: a grid of 132 fits, 133 would leave a block waiting forever.
    assert coresidency_reason(blocks=132, threads=512, shared_mem=0, sm_count=132, blocks_per_sm=1) is None
    assert coresidency_reason(blocks=1, threads=512, shared_mem=0, sm_count=132, blocks_per_sm=1) is None
    reason = coresidency_reason(blocks=133, threads=512, shared_mem=0, sm_count=132, blocks_per_sm=1)
    assert reason is not None and "133 blocks" in reason and "132 SMs x 1" in reason and "resident" in reason
    # Two resident blocks per SM double the capacity.
    assert coresidency_reason(blocks=264, threads=128, shared_mem=0, sm_count=132, blocks_per_sm=2) is None
    assert coresidency_reason(blocks=265, threads=128, shared_mem=0, sm_count=132, blocks_per_sm=2) is not None
    # Too much shared memory or too many registers: not even one block fits on an SM.
    reason = coresidency_reason(blocks=4, threads=512, shared_mem=300_000, sm_count=132, blocks_per_sm=0)
    assert reason is not None and "300000 bytes" in reason and "512 threads" in reason
    with pytest.raises(ValueError, match="blocks must be >= 1"):
        coresidency_reason(blocks=0, threads=512, shared_mem=0, sm_count=132, blocks_per_sm=1)


def test_persistent_launch_refuses_before_launching(monkeypatch):
    from evsnn.ops import cupy_runtime as rt

    launched = []
    monkeypatch.setattr(rt, "launch", lambda *a, **k: launched.append(a))
    monkeypatch.setattr(rt, "sm_count", lambda index: 4)
    monkeypatch.setattr(rt, "max_active_blocks_per_sm", lambda kernel, threads, shared_mem, index: 1)

    class FakeKernel:
        name = "egru_forward"
        max_dynamic_shared_size_bytes = 0

    device = torch.device("cuda", 0)
    rt.launch_persistent(FakeKernel(), (4,), (256,), (), device=device)
    assert len(launched) == 1
    with pytest.raises(rt.CoResidencyError, match=r"egru_forward.*5 blocks.*4 SMs x 1"):
        rt.launch_persistent(FakeKernel(), (5,), (256,), (), device=device)
    assert len(launched) == 1, "a refused persistent kernel must not be launched"


@pytest.mark.parametrize("bad", [INF, -INF, NAN])
@pytest.mark.parametrize("make", [evsnn.ALIF, evsnn.EGRU], ids=lambda c: c.__name__)
def test_a_non_finite_input_gives_the_same_output_in_training_and_inference(make, bad):
    # fast_sigmoid's primitive is inf/inf = NaN at ±inf: the case that broke training.
    layer = make(4, 6, backend="torch", dtype=torch.float64, surrogate="fast_sigmoid")
    x = torch.randn(5, 2, 4, dtype=torch.float64)
    x[1, 0, 2] = bad
    with torch.no_grad():
        layer.weight_ih[:, 2] = 1.0  # the bad value reaches every unit's input current
    with torch.no_grad():
        inference = layer(x)[0]
    training = layer(x)[0]
    assert training.requires_grad
    _same(training, inference, f"{make.__name__} output")
