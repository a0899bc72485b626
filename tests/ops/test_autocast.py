"""Mixed precision (SPEC.md §6): every layer and cell under ``torch.autocast`` (bfloat16 and
float16 on CPU) and as a bfloat16/float16 module, on every backend ``"auto"`` can choose on CPU.

The truth each run is checked against is the float32 reference run on the same rounded inputs:
the layer's product operands (input, weights, biases) rounded to the low dtype and upcast, the
rest float32, ``backend="torch"``, autocast off. Products in low precision differ from that by
the rounding of each product's result (bfloat16: 2⁻⁹ relative, float16: 2⁻¹²), so events may flip
where a membrane sits within that rounding of its threshold: the tests bound the fraction of
event positions that differ and the value error where outputs are continuous.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

import evsnn
from evsnn.functional.precision import Precision, precision_of, project, state_dtype
from evsnn.ops import dispatch
from evsnn.surrogate import Triangle

pytestmark = [
    pytest.mark.usefixtures("reference_backend", "single_thread"),
    # The cpu_event backend announces once per process that it runs float32 kernels on rounded
    # operands; that warning has its own test below.
    pytest.mark.filterwarnings("ignore:evsnn. the cpu_event"),
]

T, B, IN, H = 12, 3, 10, 32
LOW = (torch.bfloat16, torch.float16)
BACKENDS = ("torch", "cpu_event")
THETA = {"theta_x": 0.05, "theta_h": 0.05}

LAYERS = {
    "ALIF": lambda **k: evsnn.ALIF(IN, H, **k),
    "EGRU": lambda **k: evsnn.EGRU(IN, H, **k),
    "DeltaGRU": lambda **k: evsnn.DeltaGRU(IN, H, **THETA, **k),
    "DeltaLSTM": lambda **k: evsnn.DeltaLSTM(IN, H, **THETA, **k),
}
CELLS = {
    "ALIFCell": lambda **k: evsnn.ALIFCell(IN, H, **k),
    "EGRUCell": lambda **k: evsnn.EGRUCell(IN, H, **k),
    "DeltaGRUCell": lambda **k: evsnn.DeltaGRUCell(IN, H, **THETA, **k),
    "DeltaLSTMCell": lambda **k: evsnn.DeltaLSTMCell(IN, H, **THETA, **k),
}
SPIKING = ("ALIF", "EGRU", "ALIFCell", "EGRUCell")

# Measured on these shapes and seed, worst case over layers, cells, backends and modes
# (bfloat16 / float16): event agreement 0.9965 / 1.0; EGRU event values 2.1e-3 / 3.5e-4; delta
# h 1.7e-2 / 2.3e-3. The bounds leave 2-5x room.
MIN_EVENT_AGREEMENT = {torch.bfloat16: 0.98, torch.float16: 0.995}
MAX_EVENT_VALUE_ERROR = {torch.bfloat16: 1e-2, torch.float16: 2e-3}
MAX_H_ERROR = {torch.bfloat16: 0.04, torch.float16: 0.006}


def _fields(state) -> list[torch.Tensor]:
    return [getattr(state, f) for f in state._fields]


def _input(name: str, steps: int = T) -> torch.Tensor:
    # Scaled so that ALIF spikes and EGRU crosses its 0.3 threshold at a few-to-30 % rate.
    return 2.0 * torch.randn(steps, B, IN)


def _rounded_reference(module: torch.nn.Module, low: torch.dtype) -> torch.nn.Module:
    """A float32 copy, product operands (weights, biases) rounded to ``low``."""
    ref = copy.deepcopy(module).float()
    if hasattr(ref, "backend"):
        ref.backend = "torch"
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.split(".")[-1].startswith(("weight", "bias")):
                p.copy_(p.to(low).float())
    return ref


def _compare(name: str, out: torch.Tensor, ref: torch.Tensor, low: torch.dtype) -> None:
    assert out.shape == ref.shape
    out = out.float()
    if name in SPIKING:
        agree = ((out != 0) == (ref != 0)).float().mean().item()
        assert agree >= MIN_EVENT_AGREEMENT[low], f"{name}: event agreement {agree:.4f}"
        assert 0.0 < (ref != 0).float().mean().item() < 0.9, "the test input must produce some events"
        # Once an event flips in a sample, that sample's trajectories legitimately part (the
        # reset and the recurrent input differ): compare values up to and including the step of
        # the sample's first flip (that step's values come from agreeing states).
        flips = ((out != 0) != (ref != 0)).any(dim=2).int()
        before_divergence = (torch.cumsum(flips, 0) - flips) == 0
        both = (out != 0) & (ref != 0) & before_divergence.unsqueeze(-1)
        assert both.any()
        err = (out - ref)[both].abs().max().item()
        assert err <= MAX_EVENT_VALUE_ERROR[low], f"{name}: value error {err:.4g} where both fired"
    else:
        err = (out - ref).abs().max().item()
        assert err <= MAX_H_ERROR[low], f"{name}: max |h - h_ref| = {err:.4g}"


def _check_backward(name: str, module: torch.nn.Module, out: torch.Tensor, state, param_dtype: torch.dtype) -> None:
    loss = out.float().square().sum() + sum(t.float().sum() for t in _fields(state))
    loss.backward()
    grads = {n: p.grad for n, p in module.named_parameters() if n.split(".")[-1].startswith("weight_ih")}
    assert grads, f"{name} has no weight_ih parameter"
    for n, g in grads.items():
        assert g is not None, f"{name}.{n} got no gradient"
        assert g.dtype == param_dtype
        assert torch.isfinite(g).all() and g.abs().sum() > 0, f"{name}.{n}: gradient zero or not finite"


@pytest.mark.parametrize("mode", ["autocast", "module"])
@pytest.mark.parametrize("low", LOW, ids=["bf16", "fp16"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_low_precision(name, backend, low, mode):
    layer = LAYERS[name](backend=backend)
    x = _input(name)
    ref = _rounded_reference(layer, low)
    if mode == "autocast":
        with torch.autocast("cpu", low):
            out, state = layer(x)
        param_dtype = torch.float32
    else:
        layer = layer.to(low)
        out, state = layer(x.to(low))
        param_dtype = low
    assert out.dtype == low, "the output events are stored in the low dtype (SPEC §6)"
    assert all(t.dtype == torch.float32 for t in _fields(state)), "the returned state is float32"
    with torch.no_grad():
        ref_out, ref_state = ref(x.to(low).float())
    _compare(name, out, ref_out, low)
    _check_backward(name, layer, out, state, param_dtype)


@pytest.mark.parametrize("low", LOW, ids=["bf16", "fp16"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(LAYERS))
def test_low_precision_gradient_follows_float32(name, backend, low):
    """Under autocast the gradient reaching the float32 weights points where the float32
    reference's does (cosine > 0.98 bf16, > 0.995 fp16)."""
    layer = LAYERS[name](backend=backend)
    ref = _rounded_reference(layer, low)
    x = _input(name)
    with torch.autocast("cpu", low):
        out, _ = layer(x)
    out.float().square().sum().backward()
    ref_out, _ = ref(x.to(low).float())
    ref_out.square().sum().backward()
    g, g_ref = layer.weight_ih.grad.flatten(), ref.weight_ih.grad.flatten()
    cos = torch.nn.functional.cosine_similarity(g, g_ref, dim=0).item()
    assert cos > (0.98 if low == torch.bfloat16 else 0.995), f"{name}: cosine {cos:.4f}"


def test_auto_picks_the_event_path_under_low_precision():
    """Where "auto" picks cpu_event in float32 it keeps it in bf16/fp16 instead of dropping to
    the reference (no silent switch to a slower path)."""
    config = dict(surrogate=Triangle(0.3), reset="output", zoneout=0.0, shape=(T, 8, 128))
    cpu = torch.device("cpu")
    assert dispatch.resolve("egru", "auto", device=cpu, dtype=torch.float32, **config).name == "cpu_event"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for low in LOW:
            assert dispatch.resolve("egru", "auto", device=cpu, dtype=low, **config).name == "cpu_event"
            with torch.autocast("cpu", low):
                chosen = dispatch.resolve("egru", "auto", device=cpu, dtype=torch.float32, **config)
            assert chosen.name == "cpu_event"


@pytest.mark.parametrize("backend", BACKENDS)
def test_cpu_event_warns_once_per_dtype(backend, monkeypatch):
    monkeypatch.setattr(dispatch, "_WARNED", set())
    layer = evsnn.DeltaGRU(IN, H, backend=backend, **THETA)
    x = _input("DeltaGRU")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            with torch.autocast("cpu", torch.bfloat16):
                layer(x)
        with torch.autocast("cpu", torch.float16):
            layer(x)
    messages = [str(w.message) for w in caught if "kernels have no" in str(w.message)]
    if backend == "torch":
        assert messages == [], "the reference computes in low precision itself: nothing to announce"
    else:
        assert len(messages) == 2, messages
        assert "cpu_event delta_gru kernels have no torch.bfloat16 form" in messages[0]
        assert "running them in float32 on operands rounded to torch.bfloat16" in messages[0]
        assert "torch.float16" in messages[1]


@pytest.mark.parametrize("mode", ["autocast", "module"])
@pytest.mark.parametrize("low", LOW, ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", list(CELLS))
def test_cell_low_precision(name, low, mode):
    cell = CELLS[name]()
    ref = _rounded_reference(cell, low)
    xs = _input(name, steps=6)
    if mode == "module":
        cell = cell.to(low)
    state = ref_state = None
    outs, ref_outs = [], []
    for x in xs:
        if mode == "autocast":
            with torch.autocast("cpu", low):
                out, state = cell.step(x, state)
        else:
            out, state = cell.step(x.to(low), state)
        assert out.dtype == low
        assert all(t.dtype == torch.float32 for t in _fields(state))
        outs.append(out)
        with torch.no_grad():
            ref_out, ref_state = ref.step(x.to(low).float(), ref_state)
        ref_outs.append(ref_out)
    _compare(name.removesuffix("Cell"), torch.stack(outs), torch.stack(ref_outs), low)
    _check_backward(name, cell, torch.stack(outs), state, torch.float32 if mode == "autocast" else low)


@pytest.mark.parametrize("low", LOW, ids=["bf16", "fp16"])
def test_leaky_readout_low_precision(low):
    """The readout's m is a membrane: float32 (SPEC §6), equal to the float32 readout on the
    rounded product within the product's rounding."""
    readout = evsnn.LeakyReadout(IN, 4)
    ref = _rounded_reference(readout, low)
    x = torch.randn(T, B, IN)
    for mode in ("autocast", "module"):
        module = readout if mode == "autocast" else copy.deepcopy(readout).to(low)
        if mode == "autocast":
            with torch.autocast("cpu", low):
                m, m_last = module(x)
        else:
            m, m_last = module(x.to(low))
        assert m.dtype == torch.float32 and m_last.dtype == torch.float32
        ref_m, _ = ref(x.to(low).float())
        assert (m - ref_m).abs().max().item() <= MAX_H_ERROR[low]
        m.sum().backward()
        assert torch.isfinite(module.linear.weight.grad).all() and module.tau.grad is not None


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(LAYERS))
def test_float64_layer_stays_float64_under_autocast(name, backend):
    layer = LAYERS[name](backend=backend, dtype=torch.float64)
    x = _input(name).double()
    expected, expected_state = layer(x)
    with torch.autocast("cpu", torch.bfloat16):
        out, state = layer(x)
    assert out.dtype == torch.float64
    assert all(t.dtype == torch.float64 for t in _fields(state))
    assert torch.equal(out, expected)
    for a, b in zip(_fields(state), _fields(expected_state)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", list(LAYERS))
def test_float32_state_feeds_a_low_precision_layer_and_bf16_state_is_refused(name):
    layer = LAYERS[name]().to(torch.bfloat16)
    x = _input(name).to(torch.bfloat16)
    _, state = layer(x)
    layer(x, state)  # the returned float32 state is accepted back
    initial = layer.initial_state(B) if hasattr(layer, "initial_state") else None
    if initial is not None:
        assert all(t.dtype == torch.float32 for t in _fields(initial))
    low_state = state._replace(**{f: getattr(state, f).to(torch.bfloat16) for f in state._fields})
    with pytest.raises(TypeError, match=r"has dtype torch.bfloat16, expected torch.float32 \(the state stays float32"):
        layer(x, low_state)


@pytest.mark.parametrize("name", list(LAYERS))
def test_stream_of_a_low_precision_layer_runs_the_event_path(name):
    """A bf16 layer at H = 128 streams on cpu_event (the runners upcast its rounded weights)
    and agrees with the layer's own forward pass."""
    from evsnn.streaming import Stream

    big = {"ALIF": evsnn.ALIF, "EGRU": evsnn.EGRU, "DeltaGRU": evsnn.DeltaGRU, "DeltaLSTM": evsnn.DeltaLSTM}[name]
    layer = big(IN, 128, **(THETA if name.startswith("Delta") else {})).to(torch.bfloat16)
    x = _input(name, steps=6).to(torch.bfloat16)
    stream = Stream(layer, batch_size=B)
    assert stream.backend == "cpu_event"
    stepped = torch.stack([stream.step(xt) for xt in x])
    chunked = Stream(layer, batch_size=B).chunk(x)
    with torch.no_grad():
        expected, _ = layer(x)
    reference = torch.stack([Stream(layer, batch_size=B, backend="torch").step(xt) for xt in x[:2]])
    for out in (stepped, chunked):
        assert out.dtype == expected.dtype == reference.dtype == torch.bfloat16
        _compare(name, out, expected.float(), torch.bfloat16)


ALL_MODULES = {**LAYERS, **CELLS, "LeakyReadout": lambda **k: evsnn.LeakyReadout(IN, H, **k)}


@pytest.mark.parametrize("name", list(ALL_MODULES))
def test_complex_input_and_complex_module_are_refused(name):
    shape = (B, IN) if "Cell" in name else (T, B, IN)
    module = ALL_MODULES[name]()
    with pytest.raises(TypeError, match=rf"{name} expects a real floating-point input .* got torch.complex64"):
        module(torch.randn(*shape, dtype=torch.complex64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's "complex modules are a new feature"
        complex_module = ALL_MODULES[name]().to(torch.complex64)
    with pytest.raises(TypeError, match=rf"{name} parameters have dtype torch.complex64; evsnn layers are real-valued"):
        complex_module(torch.randn(*shape, dtype=torch.complex64))
    with pytest.raises(TypeError, match=rf"{name} expects a real floating-point input .* got torch.int64"):
        module(torch.ones(*shape, dtype=torch.long))


@pytest.mark.parametrize("name", list(ALL_MODULES))
def test_autocast_accepts_only_float32_or_the_autocast_dtype(name):
    shape = (B, IN) if "Cell" in name else (T, B, IN)
    module = ALL_MODULES[name]()
    with torch.autocast("cpu", torch.bfloat16):
        module(torch.randn(*shape, dtype=torch.bfloat16))
        with pytest.raises(
            TypeError, match=r"under torch.autocast\('cpu'\) .* takes one of torch.float32, torch.bfloat16"
        ):
            module(torch.randn(*shape, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"parameters are torch.float32 \(run it under torch.autocast"):
        module(torch.randn(*shape, dtype=torch.bfloat16))


# ---------------------------------------------------------------------------------------------
# The dtype plan itself, and the CUDA decision logic tested on CPU with a stand-in CuPy backend
# ---------------------------------------------------------------------------------------------


def test_precision_plan():
    assert precision_of(torch.float32, "cpu") == Precision(torch.float32, torch.float32)
    assert precision_of(torch.float64, "cpu") == Precision(torch.float64, torch.float64)
    assert precision_of(torch.bfloat16, "cpu") == Precision(torch.bfloat16, torch.float32)
    with torch.autocast("cpu", torch.float16):
        assert precision_of(torch.float32, "cpu") == Precision(torch.float16, torch.float32)
        assert precision_of(torch.float64, "cpu") == Precision(torch.float64, torch.float64)
        assert dispatch.lowered_dtype("cpu", torch.float32) == torch.float16
        assert dispatch.lowered_dtype("cpu", torch.float64) is None
    assert state_dtype(torch.float16) == torch.float32 and state_dtype(torch.float64) == torch.float64
    assert dispatch.lowered_dtype("cuda", torch.bfloat16) == torch.bfloat16
    assert dispatch.lowered_dtype("cpu", torch.float32) is None


def test_project_rounds_operands_and_accumulates_in_float32():
    a, w, b = torch.randn(4, 16), torch.randn(8, 16), torch.randn(8)
    p = Precision(torch.bfloat16, torch.float32)
    out = project(a, w, b, p)
    assert out.dtype == torch.float32
    exact = a.bfloat16().double() @ w.bfloat16().double().t() + b.double()
    # one bfloat16 rounding of the product (8 bits): relative 2^-8 of the row's magnitude
    scale = (a.bfloat16().double().abs() @ w.bfloat16().double().abs().t()).max()
    assert (out.double() - exact).abs().max() <= scale * 2.0**-8
    assert not torch.equal(out, a @ w.t() + b), "operands were not rounded"


@pytest.mark.parametrize("family", ["alif", "egru", "delta_gru", "delta_lstm"])
@pytest.mark.parametrize("low", LOW, ids=["bf16", "fp16"])
def test_cupy_under_low_precision_runs_float32_kernel_on_rounded_operands(family, low, monkeypatch):
    """On a GPU the CuPy kernels (float32/float64 only) must neither raise nor silently yield to
    the reference under bf16/fp16: dispatch asks them for float32, wraps the chosen one so its
    operands are the rounded values upcast, and warns once. A stand-in backend records what a
    kernel would receive."""
    dispatch._ensure_loaded("cupy")  # the real registration must not replace the stand-in below
    asked, received = [], {}

    def check(*, device, dtype=None, **_):
        asked.append(dtype)
        return None if device.type == "cuda" and dtype in (torch.float32, torch.float64) else "float32/64 only"

    reference = dispatch._REGISTRY[(family, "torch")].fn

    def kernel(*args, **kwargs):
        bound = dispatch._signature(family).bind(*args, **kwargs)
        received.update(bound.arguments)
        assert not torch.is_autocast_enabled("cpu")
        return reference(*args, **kwargs)

    monkeypatch.setitem(dispatch._REGISTRY, (family, "cupy"), dispatch.Backend("cupy", family, kernel, check, 10))
    monkeypatch.setattr(dispatch, "_WARNED", set())
    cuda = torch.device("cuda")
    with pytest.warns(RuntimeWarning, match=rf"the cupy {family} kernels have no {low} form; running them in float32"):
        chosen = dispatch.resolve(family, "auto", device=cuda, dtype=low, shape=(T, B, H))
    assert chosen.name == "cupy" and asked == [torch.float32]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per backend, family and dtype
        assert dispatch.resolve(family, "cupy", device=cuda, dtype=low, shape=(T, B, H)).name == "cupy"

    # Run the wrapped kernel on CPU tensors of a low-precision module.
    gates = {"alif": 1, "egru": 3, "delta_gru": 3, "delta_lstm": 4}[family]
    weight_ih = torch.randn(gates * H, IN, dtype=low)
    weight_hh = (torch.randn(gates * H, H) * 0.3).to(low)
    bias = torch.randn(gates * H, dtype=low)
    x = torch.randn(T, B, IN, dtype=low)
    if family == "alif":
        tau = torch.full((H,), 20.0, dtype=low)
        current = x @ weight_ih.t()
        out, state, _ = chosen.fn(current, None, tau_mem=tau, tau_adapt=tau * 5, b0=0.01, beta=1.8, weight_hh=weight_hh)
    elif family == "egru":
        theta = torch.full((H,), 0.3, dtype=low)
        out, state, _ = chosen.fn(x, None, weight_ih, weight_hh, bias, bias, theta)
    else:
        out, state, _ = chosen.fn(x, None, weight_ih, weight_hh, bias, bias, theta_x=0.05, theta_h=0.05)
    assert out.dtype == low
    assert all(t.dtype == torch.float32 for t in state)
    tensors = {k: v for k, v in received.items() if isinstance(v, torch.Tensor)}
    assert tensors and all(v.dtype == torch.float32 for v in tensors.values()), {k: v.dtype for k, v in tensors.items()}
    assert torch.equal(tensors["weight_hh"], weight_hh.float())  # the rounded values, exactly
    if family == "egru":
        assert torch.equal(tensors["x"], x.float())


@pytest.mark.parametrize("module", ["alif.cuda", "egru.cuda", "delta.cuda"])
def test_cupy_checks_name_the_low_precision_route(module, monkeypatch):
    """Called directly with bf16 (not through a layer), a CuPy check refuses and says how the
    layers run bf16 on it. CUDA's presence is stood in for: only the dtype branch is under test."""
    import importlib

    from evsnn.ops import cupy_runtime

    mod = importlib.import_module(f"evsnn.ops.{module}")
    monkeypatch.setattr(cupy_runtime, "unavailable_reason", lambda: None)
    reason = mod.check_cuda(device=torch.device("cuda"), dtype=torch.bfloat16)
    assert "float32 and float64, got torch.bfloat16" in reason
    assert "through evsnn.ops.dispatch, which runs them in float32 on operands rounded" in reason


@pytest.mark.gpu
@pytest.mark.parametrize("low", LOW, ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", list(LAYERS))
def test_cuda_autocast_runs_the_cupy_kernels(name, low, monkeypatch):
    monkeypatch.setattr(dispatch, "_WARNED", set())
    layer = LAYERS[name](backend="auto").cuda()
    x = _input(name).cuda()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.autocast("cuda", low):
            out, state = layer(x)
    messages = [str(w.message) for w in caught]
    assert any("cupy" in m and "kernels have no" in m for m in messages), messages
    assert not any("PyTorch reference" in m for m in messages), messages
    assert out.dtype == low and all(t.dtype == torch.float32 for t in _fields(state))
    ref = _rounded_reference(layer, low)
    with torch.no_grad():
        ref_out, _ = ref(x.to(low).float())
    _compare(name, out, ref_out, low)
    _check_backward(name, layer, out, state, torch.float32)
