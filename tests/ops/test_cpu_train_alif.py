"""The fused numba ALIF kernels (evsnn.ops.alif.cpu_train) against the reference
:func:`evsnn.functional.alif_scan`: outputs, final state, trace and every gradient (float64
autograd of the reference is the oracle), every surrogate with a kernel spec, the layers'
conventions, NaN behaviour, and rows of units that never spike nor enter the surrogate's
support never being read."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import evsnn
from evsnn.functional import alif_scan
from evsnn.functional.alif import ALIFState, alif_initial_state, alif_step, decay
from evsnn.ops import cpu_common, dispatch
from evsnn.ops.alif import cpu as alif_cpu
from evsnn.ops.alif import cpu_train
from evsnn.surrogate import ATan, FastSigmoid, Gaussian, MultiGaussian, SnnTorchSurrogate, Surrogate, Triangle

SURROGATES = [
    MultiGaussian(),
    MultiGaussian().truncate(1.0),
    Triangle(0.5),
    Triangle(0.3).truncate(0.2),
    Gaussian(),
    ATan(),
    FastSigmoid(),
    FastSigmoid().truncate(0.4).truncate(0.7),
]
F64 = {"rtol": 1e-10, "atol": 1e-10}
F32 = {"rtol": 1e-4, "atol": 1e-5}
PARAMS = ("tau_mem", "tau_adapt", "b0", "beta", "weight_hh", "bias_hh")


def _inputs(shape, dtype, seed, recurrent=True):
    gen = torch.Generator().manual_seed(seed)
    t, b, n = shape
    tau_mem = torch.rand(n, generator=gen, dtype=dtype) * 20 + 2
    tau_mem[0] = 0.5  # below one step: clamped, so no gradient reaches it
    kw = {
        "tau_mem": tau_mem,
        "tau_adapt": torch.rand(n, generator=gen, dtype=dtype) * 100 + 50,
        "b0": torch.rand(n, generator=gen, dtype=dtype) * 0.2 + 0.01,
        "beta": torch.rand(n, generator=gen, dtype=dtype) * 2.0,
        "weight_hh": torch.randn(n, n, generator=gen, dtype=dtype) * 0.5 if recurrent else None,
        "bias_hh": torch.randn(n, generator=gen, dtype=dtype) * 0.1 if recurrent else None,
    }
    return torch.randn(t, b, n, generator=gen, dtype=dtype) * 3.0, kw


def _random_state(batch, n, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    # s_0 is not binary: a given state may hold any value, and the product must weight it.
    return ALIFState(*(torch.randn(batch, n, generator=gen, dtype=dtype) for _ in range(3)))


def _run(fn, current, state, kw, seed=1, **options):
    """Outputs and the gradients of a loss touching every output (spikes, final state, trace)
    with respect to the current, every parameter given as a tensor and the initial state."""
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in kw.items() if isinstance(v, torch.Tensor)}
    cur = current.detach().clone().requires_grad_(True)
    st = None if state is None else ALIFState(*(t.detach().clone().requires_grad_(True) for t in state))
    spikes, final, trace = fn(cur, st, **{**kw, **leaves}, **options)
    outs = [spikes, *final, *trace]
    gen = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum() for o in outs)
    inputs = [cur, *leaves.values(), *(st if st is not None else ())]
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    names = ["current", *leaves, *(("v0", "b0_state", "s0") if st is not None else ())]
    return [o.detach() for o in outs], dict(zip(names, grads))


def _assert_same(got, ref, tol, what):
    outs_g, grads_g = got
    outs_r, grads_r = ref
    for i, (a, b) in enumerate(zip(outs_g, outs_r)):
        torch.testing.assert_close(a, b, **tol, equal_nan=True, msg=lambda m, i=i: f"{what} output {i}: {m}")
    assert grads_g.keys() == grads_r.keys()
    for name in grads_r:
        a, b = grads_g[name], grads_r[name]
        torch.testing.assert_close(a, b, **tol, equal_nan=True, msg=lambda m, name=name: f"{what} grad {name}: {m}")


@pytest.mark.parametrize("surrogate", SURROGATES, ids=repr)
@pytest.mark.parametrize("recurrent", [True, False])
def test_train_scan_equals_reference_float64(single_thread, surrogate, recurrent):
    current, kw = _inputs((9, 3, 17), torch.float64, seed=3, recurrent=recurrent)
    ref = _run(alif_scan, current, None, kw, surrogate=surrogate)
    assert 0.02 < float(ref[0][0].mean()) < 0.6  # spiking and silent steps both occur
    got = _run(cpu_train.alif_train_scan, current, None, kw, surrogate=surrogate)
    _assert_same(got, ref, F64, repr(surrogate))
    assert ref[1]["tau_mem"][0] == 0 and got[1]["tau_mem"][0] == 0  # τ < 1 is clamped in both


@pytest.mark.parametrize("surrogate", [MultiGaussian(), Triangle(0.5)], ids=repr)
def test_given_state_and_its_gradient(single_thread, surrogate):
    current, kw = _inputs((8, 4, 13), torch.float64, seed=7)
    state = _random_state(4, 13, torch.float64, seed=8)
    ref = _run(alif_scan, current, state, kw, surrogate=surrogate)
    got = _run(cpu_train.alif_train_scan, current, state, kw, surrogate=surrogate)
    _assert_same(got, ref, F64, "given state")
    assert got[1]["s0"].abs().sum() > 0


def test_float32_within_tolerance(single_thread):
    current, kw = _inputs((10, 3, 19), torch.float32, seed=11)
    ref = _run(alif_scan, current, None, kw)
    got = _run(cpu_train.alif_train_scan, current, None, kw)
    _assert_same(got, ref, F32, "float32")


@pytest.mark.parametrize("scalar", [float, torch.tensor], ids=["number", "0-dim tensor"])
def test_scalar_b0_beta_and_no_recurrent_bias(single_thread, scalar):
    """b0 and beta as plain numbers (the functional defaults) or 0-dim tensors (whose gradient
    is the sum over units), and W_hh without b_hh: the reference's result."""
    current, kw = _inputs((6, 2, 9), torch.float64, seed=2)
    kw.update(b0=scalar(0.05), beta=scalar(1.8), bias_hh=None)
    if scalar is torch.tensor:
        kw.update(b0=kw["b0"].double(), beta=kw["beta"].double())
    _assert_same(_run(cpu_train.alif_train_scan, current, None, kw), _run(alif_scan, current, None, kw), F64, "numbers")


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"adaptive": False},
        {"learn_threshold": True},
        {"learn_threshold": True, "adaptive": False},
        {"recurrent": False, "learn_threshold": True},
    ],
    ids=str,
)
def test_layer_conventions(single_thread, options):
    """The parameters as an evsnn.ALIF layer holds them (b0/beta buffers or learnable, β = 0
    for a non-adaptive layer, with or without W_hh): the layer's current and parameters through
    the fused scan and through the reference give the same spikes and parameter gradients."""
    torch.manual_seed(4)
    layer = evsnn.ALIF(5, 16, dtype=torch.float64, b0=0.05, **options)
    x = torch.randn(12, 3, 5, dtype=torch.float64)

    def grads(fn):
        layer.zero_grad()
        current = torch.nn.functional.linear(x, layer.weight_ih, layer.bias_ih)
        spikes, final, trace = fn(
            current,
            None,
            tau_mem=layer.tau_mem,
            tau_adapt=layer.tau_adapt,
            b0=layer.b0,
            beta=layer.beta,
            surrogate=layer.surrogate,
            weight_hh=layer.weight_hh,
            bias_hh=layer.bias_hh,
        )
        (spikes * torch.linspace(0.5, 1.5, 16, dtype=x.dtype)).sum().backward()
        return spikes.detach(), {n: p.grad.clone() for n, p in layer.named_parameters()}

    ref_spikes, ref = grads(alif_scan)
    got_spikes, got = grads(cpu_train.alif_train_scan)
    assert ref_spikes.mean() > 0.02
    torch.testing.assert_close(got_spikes, ref_spikes, **F64)
    assert got.keys() == ref.keys() and ("b0" in ref) == bool(options.get("learn_threshold"))
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], **F64, msg=lambda m, name=name: f"{name}: {m}")


def _detached_reset_reference(current, state, *, tau_mem, tau_adapt, b0, beta, surrogate, weight_hh, bias_hh):
    """The snntorch convention of evsnn.interop.snntorch.ALIF, step by step with alif_step:
    ``W_hh s_{t−1}`` keeps its gradient, the adaptation and the reset see ``s_{t−1}`` detached."""
    if state is None:
        state = alif_initial_state(current[0], b0)
    spikes, vs, thrs = [], [], []
    for t in range(current.shape[0]):
        i_t = current[t] + torch.nn.functional.linear(state.s, weight_hh, bias_hh)
        s, state = alif_step(
            i_t,
            state._replace(s=state.s.detach()),
            tau_mem=tau_mem,
            tau_adapt=tau_adapt,
            b0=b0,
            beta=beta,
            surrogate=surrogate,
        )
        spikes.append(s)
        vs.append(state.v)
        thrs.append(b0 + beta * state.b)
    return torch.stack(spikes), state, (torch.stack(vs), torch.stack(thrs))


def test_detach_reset_convention(single_thread):
    current, kw = _inputs((9, 3, 11), torch.float64, seed=5)
    state = _random_state(3, 11, torch.float64, seed=6)
    ref = _run(_detached_reset_reference, current, state, kw, surrogate=ATan())
    got = _run(cpu_train.alif_train_scan, current, state, kw, surrogate=ATan(), detach_reset=True)
    _assert_same(got, ref, F64, "detach_reset")
    attached = _run(cpu_train.alif_train_scan, current, state, kw, surrogate=ATan())
    assert not torch.allclose(attached[1]["tau_adapt"], got[1]["tau_adapt"])  # the option acts


@pytest.mark.parametrize("surrogate", [MultiGaussian(), Triangle(0.5)], ids=repr)
def test_nan_and_inf_behave_as_the_reference(single_thread, surrogate):
    """Non-finite currents: the same NaN/inf positions in every output and gradient."""
    current, kw = _inputs((8, 3, 10), torch.float64, seed=9)
    current[2, 0, 3] = float("nan")
    current[4, 1, 5] = float("inf")
    current[5, 2, 1] = -float("inf")
    ref = _run(alif_scan, current, None, kw, surrogate=surrogate)
    got = _run(cpu_train.alif_train_scan, current, None, kw, surrogate=surrogate)
    assert any(torch.isnan(g).any() for g in ref[1].values())  # the non-finite values do reach the gradients
    _assert_same(got, ref, F64, "non-finite current")


@pytest.mark.parametrize("surrogate", [Triangle(0.5), MultiGaussian().truncate(1.0)], ids=repr)
def test_rows_of_units_never_spiking_nor_in_support_are_never_read(single_thread, surrogate):
    """Units 0, 3, 6, ... have a threshold of 1e9: they never spike and their x = v − B stays
    far outside the surrogate's support. Their weight columns (rows of W_hhᵀ) are NaN for the
    kernel and 0 for the reference: forward or backward, any read would spread the NaN."""
    steps, batch, n = 10, 3, 12
    current, kw = _inputs((steps, batch, n), torch.float64, seed=12)
    quiet = torch.arange(n) % 3 == 0
    kw["b0"] = torch.where(quiet, torch.full_like(kw["b0"], 1e9), kw["b0"])
    kw["weight_hh"][:, quiet] = 0.0
    ref = _run(alif_scan, current, None, kw, surrogate=surrogate)
    poisoned = dict(kw, weight_hh=kw["weight_hh"].clone())
    poisoned["weight_hh"][:, quiet] = float("nan")
    got = _run(cpu_train.alif_train_scan, current, None, poisoned, surrogate=surrogate)
    assert all(torch.isfinite(o).all() for o in got[0]), "a NaN row of a quiet unit was read"
    _assert_same(got, ref, F64, "poisoned")
    assert torch.count_nonzero(got[1]["weight_hh"][:, quiet]) == 0
    assert 0.05 < float(ref[0][0][..., ~quiet].mean()) < 0.8  # the other units do spike
    # The dense reference does read them: the poison is real.
    with torch.no_grad():
        assert torch.isnan(alif_scan(current, None, surrogate=surrogate, **poisoned)[2].v).any()


@pytest.mark.parametrize("surrogate", [Triangle(0.5), MultiGaussian()], ids=repr)
def test_two_threads_uneven_batch(single_thread, surrogate):
    """With two threads the samples run in parallel and the parameter gradients are summed from
    per-chunk parts (an uneven split of B = 5): still the reference's values, with the recurrent
    products formed unit by unit in the kernel (a finite support) or as a dense product (none)."""
    torch.set_num_threads(2)  # the fixture restores the previous setting
    with cpu_train._threads(5) as threads:
        assert threads == min(2, cpu_train._kernels().numba.config.NUMBA_NUM_THREADS)
    current, kw = _inputs((7, 5, 9), torch.float64, seed=13)
    state = _random_state(5, 9, torch.float64, seed=14)
    ref = _run(alif_scan, current, state, kw, surrogate=surrogate)
    got = _run(cpu_train.alif_train_scan, current, state, kw, surrogate=surrogate)
    _assert_same(got, ref, F64, "two threads")


_THREADS_SCRIPT = """
import torch
from evsnn.ops.alif import cpu as alif_cpu
from evsnn.ops import cpu_common, dispatch
from evsnn.ops.alif import cpu_train
torch.set_num_threads(1)
current = torch.randn(4, 3, 6, dtype=torch.float64, requires_grad=True)
tau = torch.full((6,), 5.0, dtype=torch.float64)
spikes = cpu_train.alif_train_scan(current, None, tau_mem=tau, tau_adapt=tau * 20, weight_hh=torch.eye(6).double())[0]
spikes.sum().backward()
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("recurrent", [True, False])
def test_inference_loop_equals_reference(single_thread, dtype, recurrent):
    """alif_loop from a given (non-binary) state: spikes, membrane, threshold and the state it
    leaves equal the reference scan's."""
    current, kw = _inputs((11, 3, 14), dtype, seed=15, recurrent=recurrent)
    state = _random_state(3, 14, dtype, seed=16)
    with torch.no_grad():
        spikes, final, trace = alif_scan(current, state, **kw)
    v, b, s = (t.clone().numpy() for t in state)
    outs = [np.empty(current.shape, dtype=v.dtype) for _ in range(3)]
    w = kw["weight_hh"]
    table = w.t().contiguous().numpy() if recurrent else np.zeros((0, 0), dtype=v.dtype)
    bias = kw["bias_hh"].numpy() if recurrent else np.zeros(0, dtype=v.dtype)
    vec = [decay(kw["tau_mem"]), decay(kw["tau_adapt"]), kw["b0"], kw["beta"]]
    cpu_train.alif_loop(current.numpy(), table, bias, *(t.numpy() for t in vec), v, b, s, *outs)
    tol = F64 if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
    assert 0.02 < float(spikes.mean()) < 0.6
    got = [torch.from_numpy(a) for a in (*outs, v, b, s)]
    for a, r in zip(got, (spikes, trace.v, trace.threshold, *final)):
        torch.testing.assert_close(a, r, **tol)


class _NoKernel(Surrogate):
    def grad(self, x):
        return torch.ones_like(x)

    def primitive(self, x):
        return x


def test_bad_calls_raise_clear_errors():
    current, kw = _inputs((3, 2, 4), torch.float32, seed=0)
    with pytest.raises(TypeError, match="snntorch surrogate"):
        cpu_train.alif_train_scan(current, None, surrogate=SnnTorchSurrogate(torch.sigmoid), **kw)
    with pytest.raises(TypeError, match="_NoKernel has no kernel_spec.*backend='torch'"):
        cpu_train.alif_train_scan(current, None, surrogate=_NoKernel(), **kw)
    assert cpu_common.kernel_surrogate_reason(MultiGaussian().truncate(0.5)) is None
    with pytest.raises(TypeError, match="current is torch.float32, weight_hh is torch.float64"):
        cpu_train.alif_train_scan(current, None, **dict(kw, weight_hh=kw["weight_hh"].double()))
    with pytest.raises(ValueError, match=r"weight_hh of shape \(4, 4\), got \(4, 3\)"):
        cpu_train.alif_train_scan(current, None, **dict(kw, weight_hh=kw["weight_hh"][:, :3]))
    with pytest.raises(ValueError, match="beta must be a number or a tensor broadcastable to"):
        cpu_train.alif_train_scan(current, None, **dict(kw, beta=torch.ones(3)))
    with pytest.raises(TypeError, match=r"state field 'b' as a CPU torch.float32 tensor of shape \(2, 4\)"):
        state = ALIFState(torch.zeros(2, 4), torch.zeros(2, 5), torch.zeros(2, 4))
        cpu_train.alif_train_scan(current, state, **kw)
    with pytest.raises(ValueError, match="bias_hh without weight_hh"):
        cpu_train.alif_train_scan(current, None, **dict(kw, weight_hh=None))
    leaf = current.clone().requires_grad_(True)
    spikes = cpu_train.alif_train_scan(leaf, None, **kw)[0]
    # the backward op has no derivative of its own: a backward that would build one is refused
    # (never a wrong second derivative), naming the way out
    with pytest.raises(RuntimeError, match="first-order backward only.*backend='torch'"):
        torch.autograd.grad(spikes.sum(), leaf, create_graph=True)


# --------------------------------------------------------------------------------------------
# Wiring: the cpu_event backend's ALIF runner and training path use these kernels
# --------------------------------------------------------------------------------------------


def _runner_case(dtype, seed, recurrent=True, poison=False):
    current, kw = _inputs((9, 3, 15), dtype, seed=seed, recurrent=recurrent)
    state = _random_state(3, 15, dtype, seed=seed + 1)
    if poison:
        # Units 0, 3, 6, ... never spike (threshold 1e9, s_0 = 0): their rows of W_hhᵀ are NaN
        # for the runner and 0 for the reference.
        quiet = torch.arange(15) % 3 == 0
        kw["b0"] = torch.where(quiet, torch.full_like(kw["b0"], 1e9), kw["b0"])
        state = state._replace(s=state.s * ~quiet)
        kw["weight_hh"][:, quiet] = 0.0
    with torch.no_grad():
        ref = alif_scan(current, state, **kw)
    if poison:
        kw["weight_hh"] = kw["weight_hh"].clone()
        kw["weight_hh"][:, quiet] = float("nan")
    return current, state, kw, ref


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("recurrent", [True, False])
def test_runner_kernels_equal_reference(single_thread, dtype, recurrent):
    """ALIFRunner (what the cpu_event inference scan and evsnn.streaming run), whole chunk and
    step by step, from a given state: the reference's spikes, membrane, threshold and state."""
    current, state, kw, (spikes, final, trace) = _runner_case(dtype, seed=21, recurrent=recurrent)
    tol = F64 if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
    runner = alif_cpu.ALIFRunner(**kw)
    runner.load(state)
    got = runner.run(current)
    for a, r in zip((*got, *runner.state()), (spikes, trace.v, trace.threshold, *final)):
        torch.testing.assert_close(a, r, **tol)
    runner.load(state)
    steps = [tuple(o.clone() for o in runner.step(current[t])) for t in range(current.shape[0])]
    for i, r in enumerate((spikes, trace.v, trace.threshold)):
        torch.testing.assert_close(torch.stack([s[i] for s in steps]), r, **tol)


def test_runner_never_reads_rows_of_quiet_units(single_thread):
    current, state, kw, (spikes, final, trace) = _runner_case(torch.float64, seed=23, poison=True)
    runner = alif_cpu.ALIFRunner(**kw)
    runner.load(state)
    out, v, thr = runner.run(current)
    assert torch.isfinite(v).all(), "a NaN row of a quiet unit was read"
    torch.testing.assert_close((out, v, thr), (spikes, trace.v, trace.threshold), **F64)
    with pytest.raises(TypeError, match="expected dtype torch.float64"):
        runner.step(current[0].float())


@pytest.mark.parametrize("backend", ["cpu_event", "auto"])
def test_layer_training_runs_the_fused_kernel(single_thread, monkeypatch, backend):
    """evsnn.ALIF in training on the CPU (explicitly, and by "auto" at an ECG-like size, H = 36,
    B = 64) runs the fused kernel (the autograd node of its op evsnn::alif_train_cpu_fwd), with the reference's spikes and gradients."""
    monkeypatch.delenv("EVSNN_BACKEND", raising=False)
    torch.manual_seed(5)
    layer = evsnn.ALIF(4, 36, backend=backend, dtype=torch.float64)
    x = torch.randn(20, 64, 4, dtype=torch.float64) * 2.0
    assert layer._resolve_backend(x).name == "cpu_event"
    spikes, _ = layer(x)
    assert type(spikes.grad_fn).__name__ == "GeneratedBackwardFor_evsnn_alif_train_cpu_fwd_defaultBackward"
    got = torch.autograd.grad((spikes * torch.linspace(0, 1, 36, dtype=x.dtype)).sum(), list(layer.parameters()))
    layer.backend = "torch"
    ref_spikes, _ = layer(x)
    ref = torch.autograd.grad((ref_spikes * torch.linspace(0, 1, 36, dtype=x.dtype)).sum(), list(layer.parameters()))
    assert ref_spikes.mean() > 0.02
    torch.testing.assert_close(spikes, ref_spikes, **F64)
    for a, r in zip(got, ref):
        torch.testing.assert_close(a, r, **F64)


def test_surrogate_without_kernel_form(monkeypatch):
    """ALIF's kernels evaluate the surrogate inside the backward: in training, one without a
    kernel form makes an explicit backend="cpu_event" raise (naming the surrogates it knows and
    backend="torch"), and "auto" runs the reference, exactly; inference does not look at it."""
    monkeypatch.delenv("EVSNN_BACKEND", raising=False)
    ok = {"device": torch.device("cpu"), "dtype": torch.float64, "shape": (10, 8, 64), "family": "alif"}
    assert cpu_common.check_cpu(**ok, training=True, auto=True, surrogate=MultiGaussian()) is None
    for auto in (True, False):
        reason = cpu_common.check_cpu(**ok, training=True, auto=auto, surrogate=_NoKernel())
        assert "kernel_spec" in reason and "multi_gaussian" in reason and "backend='torch'" in reason
    assert cpu_common.check_cpu(**ok, training=False, auto=True, surrogate=_NoKernel()) is None
    torch.manual_seed(3)
    layer = evsnn.ALIF(4, 64, surrogate=_NoKernel(), backend="cpu_event", dtype=torch.float64)
    x = torch.randn(10, 8, 4, dtype=torch.float64) * 2.0
    with pytest.raises(dispatch.BackendUnavailable, match="_NoKernel has no kernel_spec.*backend='torch'"):
        layer(x)
    with torch.no_grad():
        assert layer._resolve_backend(x).name == "cpu_event"
    layer.backend = "auto"
    assert layer._resolve_backend(x).name == "torch"
    out, _ = layer(x)
    layer.backend = "torch"
    ref, _ = layer(x)
    torch.testing.assert_close(out, ref, **F64)
    current, kw = _inputs((6, 2, 8), torch.float64, seed=25)
    with pytest.raises(TypeError, match="_NoKernel has no kernel_spec"):
        alif_cpu.alif_scan_cpu(current.requires_grad_(True), None, surrogate=_NoKernel(), **kw)


# Losses that read only some outputs: the others' gradients reach the backward as None and are
# skipped; a sum's gradient comes broadcast (all strides 0), a product's in the weights' layout.
_PARTIAL_LOSSES = {
    "spikes_sum": lambda s, final, trace, w: s.sum(),
    "spikes_batch_major": lambda s, final, trace, w: (s * w.transpose(0, 1).contiguous().transpose(0, 1)).sum(),
    "spikes_unit_major": lambda s, final, trace, w: (s * w.permute(2, 1, 0).contiguous().permute(2, 1, 0)).sum(),
    "final_v": lambda s, final, trace, w: (final.v * w[0]).sum(),
    "final_b": lambda s, final, trace, w: (final.b * w[1]).sum(),
    "final_s": lambda s, final, trace, w: (final.s * w[2]).sum(),
    "trace_v": lambda s, final, trace, w: (trace.v * w).sum(),
    "trace_threshold_sum": lambda s, final, trace, w: trace.threshold.sum(),
}


@pytest.mark.parametrize("loss", list(_PARTIAL_LOSSES))
@pytest.mark.parametrize("surrogate", [Triangle(0.5), MultiGaussian()], ids=repr)
def test_loss_reading_some_outputs_matches_reference(single_thread, loss, surrogate):
    """Every gradient of a loss that reads only the spikes, only a final state field or only a
    trace (the other outputs' gradients are zero, passed as None) equals float64 autograd of the
    reference, also for a broadcast spike gradient and for batch-major and unit-major ones."""
    current, kw = _inputs((9, 3, 17), torch.float64, seed=5)
    state = _random_state(3, 17, torch.float64, seed=6)
    w = torch.randn(current.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)

    def grads(fn):
        leaves = {k: v.detach().clone().requires_grad_(True) for k, v in kw.items()}
        cur = current.detach().clone().requires_grad_(True)
        st = ALIFState(*(t.detach().clone().requires_grad_(True) for t in state))
        spikes, final, trace = fn(cur, st, **leaves, surrogate=surrogate)
        inputs = [cur, *leaves.values(), *st]
        return torch.autograd.grad(_PARTIAL_LOSSES[loss](spikes, final, trace, w), inputs, allow_unused=True)

    for i, (got, want) in enumerate(zip(grads(cpu_train.alif_train_scan), grads(alif_scan))):
        if want is None:
            assert got is None or not got.any(), f"gradient {i}"
        else:
            torch.testing.assert_close(got, want, **F64, msg=lambda m, i=i: f"gradient {i}: {m}")
