"""The fused ``"cpu_event"`` training kernels as ``torch.library`` custom ops (``evsnn::<family>_train_cpu_fwd``
/ ``_bwd``, defined beside their kernels in evsnn/ops/<family>/cpu_train.py).

- ``torch.library.opcheck`` on each forward op (schema, fake kernel against the real one, the
  registered autograd under AOT) and each backward op, float32 and float64; the ops' outputs and
  gradients against the reference scans of :mod:`evsnn.functional` in float64 (the truth).
- ``torch.compile(layer, backend="aot_eager", fullgraph=True)`` of each layer on ``"cpu_event"`` in
  training: the forward graph holds the family's training op, the output and every parameter's
  gradient equal eager's.
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
from evsnn.functional.alif import ALIFState, decay
from evsnn.functional.delta import DeltaGRUState, DeltaLSTMState
from evsnn.functional.egru import EGRUState
from evsnn.ops.cpu_surrogate import surrogate_args
from evsnn.surrogate import MultiGaussian, Triangle

# numba is a [dev] dependency: without it these tests fail rather than skip.
pytestmark = pytest.mark.usefixtures("single_thread", "reference_backend")

T, B, IN, H = 5, 3, 3, 6
DTYPES = [torch.float32, torch.float64]
TRIANGLE = Triangle(0.3)


def _tol(dtype):
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    return {"rtol": tol, "atol": tol}


def _weights(out):
    """Unequal weights per output element: a gradient that mixes up elements is caught."""
    return torch.linspace(-1.0, 1.0, out.numel(), dtype=out.dtype).view_as(out)


def _grads_like(tensors):
    torch.manual_seed(7)
    return [torch.randn_like(t) if t.is_floating_point() and t.numel() else None for t in tensors]


# ------------------------------------------------------------------------------------------ EGRU


def _egru_args(dtype, reset, zoneout):
    torch.manual_seed(0)
    gi = torch.randn(T, B, 3 * H, dtype=dtype, requires_grad=True)
    c0 = (torch.randn(B, H, dtype=dtype) * 0.3).requires_grad_(True)
    y0 = torch.zeros(B, H, dtype=dtype, requires_grad=True)
    weight_hh = torch.randn(3 * H, H, dtype=dtype, requires_grad=True)
    bias_hh = (torch.randn(3 * H, dtype=dtype) * 0.1).requires_grad_(True)
    theta = torch.full((H,), 0.1, dtype=dtype, requires_grad=True)
    mask = torch.rand(T, B, H) < zoneout if zoneout else torch.zeros(0, 0, 0, dtype=torch.bool)
    return (gi, c0, y0, weight_hh, bias_hh, theta, reset == "output", float(zoneout), mask, *surrogate_args(TRIANGLE))


@pytest.mark.parametrize("reset,zoneout", [("output", 0.0), ("threshold", 0.0), ("output", 0.25)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_egru_train_ops_opcheck(dtype, reset, zoneout):
    args = _egru_args(dtype, reset, zoneout)
    torch.library.opcheck(torch.ops.evsnn.egru_train_cpu_fwd, args)
    out, c, y, c_pre, gates = torch.ops.evsnn.egru_train_cpu_fwd(*args)
    assert (out != 0).any() and (out == 0).any()  # events and silences: not a vacuous check
    gi, c0, y0, weight_hh, bias_hh, theta = args[:6]
    g_out, g_c, g_y, g_v = _grads_like((out, c, y, c_pre))
    bwd = (g_out, g_c, g_y, g_v, c0, y0, weight_hh, theta, out, c_pre, gates, args[8], *args[6:8], True, *args[9:])
    torch.library.opcheck(torch.ops.evsnn.egru_train_cpu_bwd, [a.detach() if torch.is_tensor(a) else a for a in bwd])


@pytest.mark.parametrize("reset", ["output", "threshold"])
def test_egru_train_op_matches_the_reference_and_its_gradients(reset):
    """The op (through its registered autograd) against float64 autograd of egru_scan: gi enters
    the reference as W_ih x with W_ih = I, so its gradient is ∂L/∂gi."""
    dtype = torch.float64
    gi, c0, y0, weight_hh, bias_hh, theta, *flags = _egru_args(dtype, reset, 0.0)
    inputs = (gi, c0, y0, weight_hh, bias_hh, theta)
    out, c, y, c_pre, _ = torch.ops.evsnn.egru_train_cpu_fwd(*inputs, *flags)
    eye = torch.eye(3 * H, dtype=dtype)
    ref, (ref_c, ref_y), ref_trace = egru_scan(
        gi, EGRUState(c0, y0), eye, weight_hh, None, bias_hh, theta, reset=reset, surrogate=TRIANGLE
    )
    for got, want in ((out, ref), (c, ref_c), (y, ref_y), (c_pre, ref_trace.c_pre)):
        torch.testing.assert_close(got, want, **_tol(dtype))
    loss = (out * _weights(out)).sum() + (c_pre * _weights(c_pre)).sum() + c.sum() + 2 * y.sum()
    ref_loss = (ref * _weights(ref)).sum() + (ref_trace.c_pre * _weights(ref)).sum() + ref_c.sum() + 2 * ref_y.sum()
    grads = torch.autograd.grad(loss, inputs)
    ref_grads = torch.autograd.grad(ref_loss, inputs)
    assert grads[3].abs().sum() > 0  # the recurrent weights get a gradient: not a vacuous check
    for name, got, want in zip(("gi", "c0", "y0", "weight_hh", "bias_hh", "theta"), grads, ref_grads):
        torch.testing.assert_close(got, want, **_tol(dtype), msg=name)


# ------------------------------------------------------------------------------------------ ALIF


def _alif_args(dtype, recurrent):
    torch.manual_seed(1)
    current = (torch.randn(T, B, H, dtype=dtype) * 3).requires_grad_(True)
    state = [torch.randn(B, H, dtype=dtype) * 0.1, torch.rand(B, H, dtype=dtype) * 0.1, torch.zeros(B, H, dtype=dtype)]
    state = [t.requires_grad_(True) for t in state]
    tau_mem = torch.full((H,), 20.0, dtype=dtype, requires_grad=True)
    tau_adapt = torch.linspace(50.0, 200.0, H, dtype=dtype).requires_grad_(True)
    b0 = torch.full((H,), 0.01, dtype=dtype, requires_grad=True)
    beta = torch.full((H,), 1.8, dtype=dtype, requires_grad=True)
    weight_hh = torch.randn(H, H, dtype=dtype, requires_grad=True) if recurrent else None
    bias_hh = (torch.randn(H, dtype=dtype) * 0.1).requires_grad_(True) if recurrent else None
    return current, state, tau_mem, tau_adapt, b0, beta, weight_hh, bias_hh


def _alif_op_args(current, state, tau_mem, tau_adapt, b0, beta, weight_hh, bias_hh):
    surrogate = surrogate_args(MultiGaussian())
    return (current, *state, decay(tau_mem), decay(tau_adapt), b0, beta, weight_hh, bias_hh, False, *surrogate)


@pytest.mark.parametrize("recurrent", [True, False], ids=["recurrent", "feedforward"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_alif_train_ops_opcheck(dtype, recurrent):
    args = _alif_op_args(*_alif_args(dtype, recurrent))
    torch.library.opcheck(torch.ops.evsnn.alif_train_cpu_fwd, args)
    outs = torch.ops.evsnn.alif_train_cpu_fwd(*args)
    assert outs[0].any() and not outs[0].all()
    grads = _grads_like(outs[:6])
    saved = (*args[1:4], *args[4:6], args[7], args[8], outs[0], *outs[4:10])
    bwd = (*grads, *saved, False, True, *args[11:])
    torch.library.opcheck(torch.ops.evsnn.alif_train_cpu_bwd, [a.detach() if torch.is_tensor(a) else a for a in bwd])


def test_alif_train_op_matches_the_reference_and_its_gradients():
    dtype = torch.float64
    current, state, tau_mem, tau_adapt, b0, beta, weight_hh, bias_hh = _alif_args(dtype, True)
    spikes, v, b, s, vs, thrs, *_ = torch.ops.evsnn.alif_train_cpu_fwd(
        *_alif_op_args(current, state, tau_mem, tau_adapt, b0, beta, weight_hh, bias_hh)
    )
    ref, ref_state, ref_trace = alif_scan(
        current, ALIFState(*state), tau_mem=tau_mem, tau_adapt=tau_adapt, b0=b0, beta=beta,
        surrogate=MultiGaussian(), weight_hh=weight_hh, bias_hh=bias_hh,
    )  # fmt: skip
    for got, want in zip((spikes, v, b, s, vs, thrs), (ref, *ref_state, *ref_trace)):
        torch.testing.assert_close(got, want, **_tol(dtype))
    inputs = (current, *state, tau_mem, tau_adapt, b0, beta, weight_hh, bias_hh)
    loss = (spikes * _weights(spikes)).sum() + (vs * _weights(vs)).sum() + v.sum()
    ref_loss = (ref * _weights(ref)).sum() + (ref_trace.v * _weights(ref)).sum() + ref_state.v.sum()
    grads = torch.autograd.grad(loss, inputs)
    ref_grads = torch.autograd.grad(ref_loss, inputs)
    assert grads[-2].abs().sum() > 0
    for i, (got, want) in enumerate(zip(grads, ref_grads)):
        torch.testing.assert_close(got, want, **_tol(dtype), msg=f"input {i}")


# ----------------------------------------------------------------------------------------- delta


def _delta_args(dtype, lstm):
    torch.manual_seed(2)
    gates = 4 if lstm else 3
    x = torch.randn(T, B, IN, dtype=dtype, requires_grad=True)
    h = (torch.randn(B, H, dtype=dtype) * 0.1).requires_grad_(True)
    c = (torch.randn(B, H, dtype=dtype) * 0.1).requires_grad_(True) if lstm else None
    x_hat = (torch.randn(B, IN, dtype=dtype) * 0.1).requires_grad_(True)
    h_hat = torch.zeros(B, H, dtype=dtype, requires_grad=True)
    m = (torch.randn(B, 4 * H, dtype=dtype) * 0.1).requires_grad_(True)
    weight_ih = (torch.randn(gates * H, IN, dtype=dtype) * 0.5).requires_grad_(True)
    weight_hh = (torch.randn(gates * H, H, dtype=dtype) * 0.5).requires_grad_(True)
    theta_x = torch.full((IN,), 0.3, dtype=dtype)
    theta_h = torch.full((H,), 0.05, dtype=dtype)
    return x, h, c, x_hat, h_hat, m, weight_ih, weight_hh, theta_x, theta_h, False, not lstm


@pytest.mark.parametrize("lstm", [False, True], ids=["gru", "lstm"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_delta_train_ops_opcheck(dtype, lstm):
    args = _delta_args(dtype, lstm)
    torch.library.opcheck(torch.ops.evsnn.delta_train_cpu_fwd, args)
    outs = torch.ops.evsnn.delta_train_cpu_fwd(*args)
    assert (outs[7] != 0).any() and (outs[7] == 0).any()  # hidden deltas: some pass, some not
    grads = _grads_like(outs[:8])
    if not lstm:
        grads[2] = None
    saved = (args[1], args[2], outs[0], outs[8], args[6], args[7], *outs[9:])
    bwd = (*grads, *saved, not lstm)
    torch.library.opcheck(torch.ops.evsnn.delta_train_cpu_bwd, [a.detach() if torch.is_tensor(a) else a for a in bwd])


@pytest.mark.parametrize("lstm", [False, True], ids=["gru", "lstm"])
def test_delta_train_op_matches_the_reference_and_its_gradients(lstm):
    dtype = torch.float64
    x, h, c, x_hat, h_hat, m, weight_ih, weight_hh, theta_x, theta_h, *flags = _delta_args(dtype, lstm)
    out, h_t, c_t, xh_t, hh_t, m_t, dx, dh, *_ = torch.ops.evsnn.delta_train_cpu_fwd(
        x, h, c, x_hat, h_hat, m, weight_ih, weight_hh, theta_x, theta_h, *flags
    )
    if lstm:
        scan, state = delta_lstm_scan, DeltaLSTMState(h, c, x_hat, h_hat, m)
    else:
        scan, state = delta_gru_scan, DeltaGRUState(h, x_hat, h_hat, m)
    ref, ref_state, ref_trace = scan(x, state, weight_ih, weight_hh, None, None, theta_x=theta_x, theta_h=theta_h)
    torch.testing.assert_close(out, ref, **_tol(dtype))
    torch.testing.assert_close((dx, dh), tuple(ref_trace), **_tol(dtype))
    torch.testing.assert_close(m_t, ref_state.m, **_tol(dtype))
    inputs = [x, h, x_hat, h_hat, m, weight_ih, weight_hh] + ([c] if lstm else [])
    loss = (out * _weights(out)).sum() + (dh * _weights(dh)).sum() + m_t.sum()
    ref_loss = (ref * _weights(ref)).sum() + (ref_trace.delta_h * _weights(dh)).sum() + ref_state.m.sum()
    grads = torch.autograd.grad(loss, inputs)
    ref_grads = torch.autograd.grad(ref_loss, inputs)
    assert grads[6].abs().sum() > 0
    for i, (got, want) in enumerate(zip(grads, ref_grads)):
        torch.testing.assert_close(got, want, **_tol(dtype), msg=f"input {i}")


# ----------------------------------------------------------------------------- compiled training

LAYERS = {
    "EGRU": ("egru_train_cpu_fwd", lambda: evsnn.EGRU(IN, H, threshold=0.1, reset="threshold", backend="cpu_event")),
    "EGRU-zoneout": ("egru_train_cpu_fwd", lambda: evsnn.EGRU(IN, H, threshold=0.1, zoneout=0.2, backend="cpu_event")),
    "ALIF": ("alif_train_cpu_fwd", lambda: evsnn.ALIF(IN, H, backend="cpu_event")),
    "ALIF-ff": ("alif_train_cpu_fwd", lambda: evsnn.ALIF(IN, H, recurrent=False, backend="cpu_event")),
    "DeltaGRU": ("delta_train_cpu_fwd", lambda: evsnn.DeltaGRU(IN, H, theta_x=0.2, theta_h=0.05, backend="cpu_event")),
    "DeltaLSTM": (
        "delta_train_cpu_fwd",
        lambda: evsnn.DeltaLSTM(IN, H, theta_x=0.2, theta_h=0.05, backend="cpu_event"),
    ),
}


def _train_step(module, layer, x, seed):
    torch.manual_seed(seed)  # zoneout's masks: the same draws compiled and eager
    layer.zero_grad()
    out, state = module(x)
    loss = (out * _weights(out)).sum() + sum(t.sum() for t in state)
    loss.backward()
    return out, {k: p.grad.clone() for k, p in layer.named_parameters()}


@pytest.mark.parametrize("name", list(LAYERS))
def test_cpu_event_training_compiles_to_one_graph_with_the_op(name, recording_backend):
    op_name, make = LAYERS[name]
    torch._dynamo.reset()
    torch.manual_seed(3)
    layer = make().train()
    x = torch.randn(T, B, IN) * 2
    compiled = torch.compile(layer, backend=recording_backend, fullgraph=True)
    out, grads = _train_step(layer, layer, x, seed=11)
    out_c, grads_c = _train_step(compiled, layer, x, seed=11)
    # the training op in the graph, not a traced loop
    assert f"evsnn.{op_name}" in recording_backend.targets, recording_backend.targets
    assert (out != 0).any()  # not a vacuous comparison
    torch.testing.assert_close(out_c, out, rtol=0, atol=0)
    for k, g in grads.items():
        assert g.abs().sum() > 0 or k.startswith(("tau", "b0", "beta")), k
        torch.testing.assert_close(grads_c[k], g, rtol=1e-6, atol=1e-7, msg=k)


@pytest.mark.parametrize("cls", [evsnn.DeltaGRU, evsnn.DeltaLSTM], ids=["DeltaGRU", "DeltaLSTM"])
def test_stacked_bidirectional_training_compiles_to_one_graph(cls, recording_backend):
    """Two layers, both directions: one graph holding one training op per layer and direction."""
    torch._dynamo.reset()
    torch.manual_seed(5)
    layer = cls(IN, H, num_layers=2, bidirectional=True, theta_x=0.2, theta_h=0.05, backend="cpu_event").train()
    x = torch.randn(T, B, IN) * 2
    out, _ = layer(x)
    grads = torch.autograd.grad((out * _weights(out)).sum(), list(layer.parameters()))
    out_c, _ = torch.compile(layer, backend=recording_backend, fullgraph=True)(x)
    grads_c = torch.autograd.grad((out_c * _weights(out_c)).sum(), list(layer.parameters()))
    assert recording_backend.targets.count("evsnn.delta_train_cpu_fwd") == 4, recording_backend.targets
    assert (out != 0).any()
    torch.testing.assert_close(out_c, out, rtol=0, atol=0)
    for (name, _), g, g_c in zip(layer.named_parameters(), grads, grads_c):
        torch.testing.assert_close(g_c, g, rtol=1e-6, atol=1e-7, msg=name)
