"""The accelerated scans as ``torch.library`` custom ops (``evsnn::…``, defined beside their kernels).

- ``torch.library.opcheck`` on each CPU op (schema, fake kernel against the real one, dispatch
  under AOT) in float32 and float64, and the op's outputs against the reference scan of
  :mod:`evsnn.functional` (the truth).
- ``torch.compile(fullgraph=True)`` of each layer on ``backend="cpu_event"`` in inference: one
  graph with the family's op in it, outputs equal to eager.
"""

from __future__ import annotations

import pytest
import torch

import evsnn

# the modules of the kernels define their evsnn:: ops
import evsnn.ops.alif.cpu
import evsnn.ops.alif.cpu_train
import evsnn.ops.alif.cuda
import evsnn.ops.delta.cpu
import evsnn.ops.delta.cpu_train
import evsnn.ops.delta.cuda
import evsnn.ops.egru.cpu
import evsnn.ops.egru.cpu_train
import evsnn.ops.egru.cuda  # noqa: F401
from evsnn.functional import alif_scan, delta_gru_scan, delta_lstm_scan, egru_scan
from evsnn.functional.alif import ALIFState
from evsnn.functional.delta import DeltaGRUState, DeltaLSTMState
from evsnn.functional.egru import EGRUState

pytestmark = pytest.mark.usefixtures("single_thread", "reference_backend")

T, B, IN, H = 5, 2, 3, 6
DTYPES = [torch.float32, torch.float64]


def _close(actual, expected, dtype):
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol)


def _alif_case(dtype, recurrent):
    current = torch.randn(T, B, H, dtype=dtype) * 3
    state = ALIFState(
        torch.randn(B, H, dtype=dtype) * 0.1, torch.rand(B, H, dtype=dtype) * 0.1, torch.zeros(B, H, dtype=dtype)
    )
    tau_mem = torch.full((H,), 20.0, dtype=dtype)
    tau_adapt = torch.linspace(50.0, 200.0, H, dtype=dtype)
    weight_hh = torch.randn(H, H, dtype=dtype) if recurrent else None
    bias_hh = torch.randn(H, dtype=dtype) * 0.1 if recurrent else None
    b0, beta = torch.tensor(0.01, dtype=dtype), torch.tensor(1.8, dtype=dtype)
    return current, state, tau_mem, tau_adapt, b0, beta, weight_hh, bias_hh


@pytest.mark.parametrize("recurrent", [True, False], ids=["recurrent", "feedforward"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_alif_scan_cpu_op(dtype, recurrent):
    current, state, tau_mem, tau_adapt, b0, beta, weight_hh, bias_hh = _alif_case(dtype, recurrent)
    args = (current, *state, tau_mem, tau_adapt, b0, beta, weight_hh, bias_hh)
    torch.library.opcheck(torch.ops.evsnn.alif_scan_cpu, args)
    spikes, v, b, s, vs, thrs = torch.ops.evsnn.alif_scan_cpu(*args)
    ref, ref_state, ref_trace = alif_scan(
        current, state, tau_mem=tau_mem, tau_adapt=tau_adapt, b0=b0, beta=beta, weight_hh=weight_hh, bias_hh=bias_hh
    )
    assert ref.any() and not ref.all()  # events and silences: not a vacuous comparison
    _close(spikes, ref, dtype)
    for got, want in zip((v, b, s, vs, thrs), (*ref_state, *ref_trace)):
        _close(got, want, dtype)


def _egru_case(dtype, bias):
    x = torch.randn(T, B, IN, dtype=dtype)
    state = EGRUState(torch.randn(B, H, dtype=dtype) * 0.3, torch.zeros(B, H, dtype=dtype))
    weight_ih = torch.randn(3 * H, IN, dtype=dtype)
    weight_hh = torch.randn(3 * H, H, dtype=dtype)
    bias_ih = torch.randn(3 * H, dtype=dtype) * 0.1 if bias else None
    bias_hh = torch.randn(3 * H, dtype=dtype) * 0.1 if bias else None
    threshold = torch.full((H,), 0.1, dtype=dtype)
    return x, state, weight_ih, weight_hh, bias_ih, bias_hh, threshold


@pytest.mark.parametrize("reset,bias", [("output", True), ("threshold", False)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_egru_scan_cpu_op(dtype, reset, bias):
    x, state, weight_ih, weight_hh, bias_ih, bias_hh, threshold = _egru_case(dtype, bias)
    args = (x, *state, weight_ih, weight_hh, bias_ih, bias_hh, threshold, reset)
    torch.library.opcheck(torch.ops.evsnn.egru_scan_cpu, args)
    y, c, y_final, c_pre = torch.ops.evsnn.egru_scan_cpu(*args)
    ref, ref_state, ref_trace = egru_scan(x, state, weight_ih, weight_hh, bias_ih, bias_hh, threshold, reset=reset)
    assert (ref != 0).any() and (ref == 0).any()
    for got, want in zip((y, c, y_final, c_pre), (ref, *ref_state, *ref_trace)):
        _close(got, want, dtype)


def _delta_case(dtype, gates, lstm):
    x = torch.randn(T, B, IN, dtype=dtype)
    weight_ih = torch.randn(gates * H, IN, dtype=dtype) * 0.5
    weight_hh = torch.randn(gates * H, H, dtype=dtype) * 0.5
    bias_ih = torch.randn(gates * H, dtype=dtype) * 0.1
    bias_hh = torch.randn(gates * H, dtype=dtype) * 0.1
    theta_x = torch.full((IN,), 0.3, dtype=dtype)
    theta_h = torch.full((H,), 0.05, dtype=dtype)
    h = torch.randn(B, H, dtype=dtype) * 0.1
    x_hat, h_hat = torch.randn(B, IN, dtype=dtype) * 0.1, torch.zeros(B, H, dtype=dtype)
    m = torch.randn(B, 4 * H, dtype=dtype) * 0.1
    if lstm:
        state = DeltaLSTMState(h, torch.randn(B, H, dtype=dtype) * 0.1, x_hat, h_hat, m)
    else:
        state = DeltaGRUState(h, x_hat, h_hat, m)
    return x, state, weight_ih, weight_hh, bias_ih, bias_hh, theta_x, theta_h


@pytest.mark.parametrize("rule", ["strict", "inclusive"])
@pytest.mark.parametrize("lstm", [False, True], ids=["gru", "lstm"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_delta_scan_cpu_ops(dtype, lstm, rule):
    x, state, weight_ih, weight_hh, bias_ih, bias_hh, theta_x, theta_h = _delta_case(dtype, 4 if lstm else 3, lstm)
    op = torch.ops.evsnn.delta_lstm_scan_cpu if lstm else torch.ops.evsnn.delta_gru_scan_cpu
    args = (x, *state, weight_ih, weight_hh, bias_ih, bias_hh, theta_x, theta_h, rule)
    torch.library.opcheck(op, args)
    out, *final, dx, dh = op(*args)
    scan = delta_lstm_scan if lstm else delta_gru_scan
    ref, ref_state, ref_trace = scan(
        x, state, weight_ih, weight_hh, bias_ih, bias_hh, theta_x=theta_x, theta_h=theta_h, delta_rule=rule
    )
    assert (ref_trace.delta_h != 0).any() and (ref_trace.delta_x == 0).any()
    for got, want in zip((out, *final, dx, dh), (ref, *ref_state, *ref_trace)):
        _close(got, want, dtype)


LAYERS = {
    "ALIF": ("alif_scan_cpu", lambda: evsnn.ALIF(IN, H, backend="cpu_event")),
    "ALIF-ff": ("alif_scan_cpu", lambda: evsnn.ALIF(IN, H, recurrent=False, backend="cpu_event")),
    "EGRU": ("egru_scan_cpu", lambda: evsnn.EGRU(IN, H, threshold=0.1, backend="cpu_event")),
    "DeltaGRU": ("delta_gru_scan_cpu", lambda: evsnn.DeltaGRU(IN, H, theta_x=0.2, theta_h=0.05, backend="cpu_event")),
    "DeltaLSTM": (
        "delta_lstm_scan_cpu",
        lambda: evsnn.DeltaLSTM(IN, H, theta_x=0.2, theta_h=0.05, backend="cpu_event"),
    ),
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_cpu_event_inference_compiles_to_one_graph_with_the_op(name, recording_backend):
    op_name, make = LAYERS[name]
    torch._dynamo.reset()
    layer = make()
    x = torch.randn(T, B, IN) * 2
    compiled = torch.compile(layer, backend=recording_backend, fullgraph=True)
    with torch.no_grad():
        out, state = layer(x)
        out_c, state_c = compiled(x)
        # the opaque op, not a traced loop
        assert f"evsnn.{op_name}" in recording_backend.targets, recording_backend.targets
        assert (out != 0).any()
        torch.testing.assert_close(out_c, out, rtol=1e-6, atol=1e-6)
        for got, want in zip(state_c, state):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        # A returned h_n given back enters as a tensor subclass, which Dynamo unwraps behind one
        # graph break (README, "What h_n carries"): the compiled layer still equals eager.
        resumed = torch.compile(layer, backend=recording_backend)
        torch.testing.assert_close(resumed(x, state)[0], layer(x, state)[0], rtol=1e-6, atol=1e-6)


def _counting(pack, calls):
    def counted(*args):
        calls.append(args)
        return pack(*args)

    return counted


def test_packed_weights_are_cached_per_parameter_version():
    from evsnn.ops.alif import cuda as alif_cuda
    from evsnn.ops.delta import cuda as delta_cuda
    from evsnn.ops.egru import cuda as egru_cuda
    from evsnn.ops.packed_weights import packed

    weight = torch.nn.Parameter(torch.randn(3 * H, H))
    calls = []
    pack = _counting(egru_cuda._pack_forward, calls)
    first = packed("egru_forward", pack, (weight,), 2, 3)
    assert packed("egru_forward", pack, (weight,), 2, 3) is first and len(calls) == 1  # not re-packed
    assert not first.requires_grad
    torch.testing.assert_close(first, egru_cuda._pack_forward(weight.detach(), 2, 3), rtol=0, atol=0)
    # another layout, another packing name or another parameter with equal values: packed anew
    packed("egru_forward", pack, (weight,), 1, 6)
    other = torch.nn.Parameter(weight.detach().clone())
    packed("egru_forward", pack, (other,), 1, 6)
    assert len(calls) == 3
    # an optimiser step changes the parameter in place: the next call re-packs the new values
    weight.grad = torch.ones_like(weight)
    torch.optim.SGD([weight], lr=0.5).step()
    again = packed("egru_forward", pack, (weight,), 1, 6)
    assert len(calls) == 4
    torch.testing.assert_close(again, egru_cuda._pack_forward(weight.detach(), 1, 6), rtol=0, atol=0)
    assert packed("egru_forward", pack, (weight,), 1, 6) is again

    # two weights (the delta cells'): a change of the second one re-packs too
    w_ih, w_hh = torch.randn(3 * H, IN), torch.randn(3 * H, H)
    calls_delta = []
    pack_delta = _counting(delta_cuda._pack_weights, calls_delta)
    wp = packed("delta", pack_delta, (w_ih, w_hh), False)
    assert packed("delta", pack_delta, (w_ih, w_hh), False) is wp and len(calls_delta) == 1
    w_hh.add_(1.0)
    wp2 = packed("delta", pack_delta, (w_ih, w_hh), False)
    assert len(calls_delta) == 2
    torch.testing.assert_close(wp2, delta_cuda._pack_weights(w_ih, w_hh, False), rtol=0, atol=0)
    # ALIF's transpose
    w = torch.randn(H, H)
    wt = packed("alif_transposed", alif_cuda._transposed, (w,))
    assert packed("alif_transposed", alif_cuda._transposed, (w,)) is wt
    assert torch.equal(wt, w.t()) and wt.is_contiguous()


def test_packed_weights_without_a_version_counter_are_packed_every_call():
    from evsnn.ops.alif import cuda as alif_cuda
    from evsnn.ops.packed_weights import clear, packed

    with torch.inference_mode():
        w = torch.randn(H, H)  # an inference tensor has no _version: never cached
    first = packed("alif_transposed", alif_cuda._transposed, (w,))
    assert packed("alif_transposed", alif_cuda._transposed, (w,)) is not first
    assert torch.equal(first, w.t())
    # a write through .data keeps _version: clear() forgets the stale packing
    p = torch.nn.Parameter(torch.randn(H, H))
    stale = packed("alif_transposed", alif_cuda._transposed, (p,))
    p.data.mul_(2)
    assert packed("alif_transposed", alif_cuda._transposed, (p,)) is stale
    clear()
    assert torch.equal(packed("alif_transposed", alif_cuda._transposed, (p,)), p.detach().t())


def _egru_cuda_forward(device, steps, batch, hidden):
    def make(*shape):
        return torch.empty(*shape, device=device, dtype=torch.float64, requires_grad=True)

    inputs = (make(steps, batch, 3 * hidden), make(batch, hidden), make(batch, hidden))
    inputs += (make(3 * hidden, hidden), make(3 * hidden), make(hidden))
    outputs = torch.ops.evsnn.egru_scan_cuda_fwd(*inputs, False, 1, [0.3, 0.0, 0.0, 0.0], 0.0, 0.3)
    return inputs, outputs


def test_egru_cuda_ops_fake_kernels_and_autograd_without_a_gpu():
    """No GPU here: the CuPy kernels do not run. Under FakeTensorMode (CUDA fake tensors) the fake
    kernel gives the hand-computed shapes on the CUDA device; on meta tensors (the autograd engine
    needs no device there) the gradient of the forward op goes through the registered autograd to
    the backward op's fake kernel, one gradient per differentiable input."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    steps, batch, hidden = 4, 3, 7
    with FakeTensorMode():
        _, (out, c_final, save) = _egru_cuda_forward("cuda", steps, batch, hidden)
        assert out.shape == (steps, batch, hidden) and c_final.shape == (batch, hidden)
        assert save.shape == (5, steps, batch, hidden)
        assert {t.dtype for t in (out, c_final, save)} == {torch.float64}
        assert {t.device.type for t in (out, c_final, save)} == {"cuda"}
    inputs, (out, c_final, save) = _egru_cuda_forward("meta", steps, batch, hidden)
    assert not save.requires_grad  # c_pre = save[4] passes no gradient
    grads = torch.autograd.grad(out.sum() + c_final.sum(), inputs)
    for grad, inp in zip(grads, inputs):
        assert grad.shape == inp.shape and grad.dtype == inp.dtype and grad.device == inp.device


@pytest.mark.parametrize("lstm", [False, True], ids=["gru", "lstm"])
def test_delta_bptt_ops_opcheck_with_the_torch_engine(lstm):
    """The forward/backward op pair of the delta cells, run by its torch engine on the CPU: opcheck
    (schema, fake kernels against real outputs, the registered autograd under AOT), and its
    gradients against float64 autograd of the reference scan."""
    dtype = torch.float64
    x, state, weight_ih, weight_hh, bias_ih, bias_hh, _, _ = _delta_case(dtype, 4 if lstm else 3, lstm)
    x.requires_grad_(True)
    weight_ih.requires_grad_(True)
    weight_hh.requires_grad_(True)
    if lstm:
        h0, c0, x_hat0, h_hat0, m0 = state
    else:
        (h0, x_hat0, h_hat0, m0), c0 = state, torch.zeros(0, dtype=dtype)
    m0u = m0.view(B, 4, H).transpose(1, 2).contiguous()  # the kernels' unit-major accumulators
    args = (x, x_hat0, h0, h_hat0, m0u, c0, weight_ih, weight_hh, 0.3, 0.05, False, lstm, "torch", True)
    torch.library.opcheck(torch.ops.evsnn.delta_scan_bptt_fwd, args)

    scan = evsnn.ops.delta.cuda.delta_lstm_scan_bptt if lstm else evsnn.ops.delta.cuda.delta_gru_scan_bptt
    ref_scan = delta_lstm_scan if lstm else delta_gru_scan
    kwargs = dict(theta_x=0.3, theta_h=0.05)
    out, _, trace = scan(x, state, weight_ih, weight_hh, bias_ih, bias_hh, engine="torch", **kwargs)
    ref, _, ref_trace = ref_scan(x, state, weight_ih, weight_hh, bias_ih, bias_hh, **kwargs)
    assert (ref_trace.delta_h != 0).any() and (ref_trace.delta_h == 0).any()
    _close(out, ref, dtype)
    weights = torch.linspace(-1, 1, out.numel(), dtype=dtype).view_as(out)
    grads = torch.autograd.grad((out * weights).sum(), (x, weight_ih, weight_hh))
    ref_grads = torch.autograd.grad((ref * weights).sum(), (x, weight_ih, weight_hh))
    for got, want in zip(grads, ref_grads):
        _close(got, want, dtype)


def _alif_cuda_forward(device, steps, batch, n, recurrent):
    def make(*shape):
        return torch.empty(*shape, device=device, dtype=torch.float32, requires_grad=True)

    inputs = (make(steps, batch, n), make(batch, n), make(batch, n), make(batch, n))
    inputs += tuple(make(n) for _ in range(4))  # alpha, rho, b0, beta per neuron
    inputs += (make(n, n), make(n)) if recurrent else (None, None)
    outputs = torch.ops.evsnn.alif_scan_cuda_fwd(*inputs, True, 0, [1.0, 0.5, 0.0, 0.0], 0.0)
    return inputs, outputs


@pytest.mark.parametrize("recurrent", [True, False], ids=["recurrent", "feedforward"])
def test_alif_cuda_ops_fake_kernels_and_autograd_without_a_gpu(recurrent):
    """As for the EGRU: no GPU here, the CuPy kernels do not run; fake-kernel shapes on CUDA fake
    tensors, and the registered autograd reaching the backward op's fake kernel on meta tensors."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    steps, batch, n = 5, 2, 9
    with FakeTensorMode():
        _, outputs = _alif_cuda_forward("cuda", steps, batch, n, recurrent)
        shapes = [tuple(t.shape) for t in outputs]
        assert shapes[:3] == [(steps, batch, n)] * 3 and shapes[3:6] == [(batch, n)] * 3
        assert shapes[6] == (steps, batch, n)  # b_trace: a backward may follow
        assert shapes[7] == ((steps, batch, n) if recurrent else (0,))  # total currents, recurrent only
        assert {t.device.type for t in outputs} == {"cuda"} and {t.dtype for t in outputs} == {torch.float32}
    inputs, outputs = _alif_cuda_forward("meta", steps, batch, n, recurrent)
    spikes, v, thr, v_T, b_T, s_T = outputs[:6]
    differentiable = [t for t in inputs if t is not None]
    grads = torch.autograd.grad((spikes.sum() + v.sum() + thr.sum() + v_T.sum()), differentiable)
    for grad, inp in zip(grads, differentiable):
        assert grad.shape == inp.shape and grad.dtype == inp.dtype and grad.device == inp.device
