"""Autograd transforms on the default backend (``"auto"``, which trains on ``"cpu_event"`` at these
shapes), each family, layers in training mode: docs/transforms.md's table, cell by cell.

Where a transform works, its result equals ``backend="torch"`` (the reference) in float64: both
compute the same math, the event path only skips zero terms and sums in another order, so they
agree to a few float64 ulps of the O(1..100) values (``_close``). Where it is refused, the error
names the backend, the transform and the way out (``backend='torch'``).
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint

from evsnn.nn import ALIF, EGRU, DeltaGRU, DeltaLSTM
from evsnn.ops import dispatch
from evsnn.ops.dispatch import BackendUnavailable

pytestmark = pytest.mark.usefixtures("single_thread", "reference_backend")

# Inside the measured region where "auto" trains on cpu_event for every family (evsnn.ops.auto:
# B <= 32 and H >= 128); test_default_backend_trains_on_cpu_event holds the tests to that.
T, B, IN, H = 4, 2, 3, 128
LAYERS = [ALIF, EGRU, DeltaGRU, DeltaLSTM]
F64 = torch.float64


def _close(a, b):
    # Same float64 math in another summation order: rounding differences of ~1e-14 on values up to ~100.
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def _layer(cls, backend="auto"):
    torch.manual_seed(0)
    return cls(IN, H, backend=backend, dtype=F64).train()


def _input(requires_grad=False):
    torch.manual_seed(1)
    return (2 * torch.randn(T, B, IN, dtype=F64)).requires_grad_(requires_grad)


def _out(layer, x):
    return layer(x)[0]


@pytest.fixture
def chosen(monkeypatch):
    """The names of the backends that dispatch picks during the test, in call order."""
    names: list[str] = []
    real = dispatch.resolve

    def spy(*args, **kwargs):
        backend = real(*args, **kwargs)
        names.append(backend.name)
        return backend

    monkeypatch.setattr(dispatch, "resolve", spy)
    return names


def _both(cls, fn):
    """``fn(layer, x)`` on the default backend and on the reference (warnings of the former kept)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        default = fn(_layer(cls), _input())
    return default, fn(_layer(cls, "torch"), _input()), [str(w.message) for w in caught]


@pytest.mark.parametrize("cls", LAYERS)
def test_default_backend_trains_on_cpu_event(cls, chosen):
    _out(_layer(cls), _input(requires_grad=True)).sum().backward()
    assert chosen == ["cpu_event"]


# ------------------------------------------------------------------ transforms that run the reference


def _func_grad(layer, x):
    params = dict(layer.named_parameters())
    return torch.func.grad(lambda p: (functional_call(layer, p, (x,))[0] * torch.arange(H, dtype=F64)).sum())(params)


def _func_vjp(layer, x):
    out, pullback = torch.func.vjp(lambda x: _out(layer, x), x)
    return out, pullback(torch.linspace(-1, 1, out.numel(), dtype=F64).view_as(out))


def _func_jvp(layer, x):
    return torch.func.jvp(lambda x: _out(layer, x), (x,), (torch.linspace(-1, 1, x.numel(), dtype=F64).view_as(x),))


def _jacrev(layer, x):
    return torch.func.jacrev(lambda x: _out(layer, x).sum((1, 2)))(x)


def _jacfwd(layer, x):
    return torch.func.jacfwd(lambda x: _out(layer, x).sum((1, 2)))(x)


def _hessian(layer, x):
    return torch.func.hessian(lambda x: _out(layer, x).sum())(x)


def _forward_ad(layer, x):
    with fwAD.dual_level():
        dual = fwAD.make_dual(x, torch.linspace(-1, 1, x.numel(), dtype=F64).view_as(x))
        unpacked = fwAD.unpack_dual(_out(layer, dual))
        return unpacked.primal, unpacked.tangent


ROUTED = {
    "torch.func.grad": (_func_grad, "torch.func.grad/vjp/jacrev"),
    "torch.func.vjp": (_func_vjp, "torch.func.grad/vjp/jacrev"),
    "torch.func.jacrev": (_jacrev, "torch.func.grad/vjp/jacrev"),
    "torch.func.jvp": (_func_jvp, "torch.func.jvp/jacfwd"),
    "torch.func.jacfwd": (_jacfwd, "torch.func.jvp/jacfwd"),
    # jacfwd(jacrev(f)): the warning names the innermost transform, the one the layer's call meets first.
    "torch.func.hessian": (_hessian, "torch.func.grad/vjp/jacrev"),
    "forward_ad": (_forward_ad, "forward-mode AD (torch.autograd.forward_ad)"),
}


@pytest.mark.parametrize("cls", LAYERS)
@pytest.mark.parametrize("transform", list(ROUTED))
def test_auto_runs_the_reference_under_a_transform_with_one_warning(cls, transform, chosen, monkeypatch):
    monkeypatch.setattr(dispatch, "_WARNED", set())
    fn, name = ROUTED[transform]
    default, reference, messages = _both(cls, fn)
    _close(default, reference)
    assert chosen[0] == "torch"
    family = _layer(cls).neuron_family.name
    assert [m for m in messages if m.startswith("evsnn:")] == [
        f"evsnn: running {family} on the PyTorch reference under {name}: the cpu_event kernels that "
        "backend='auto' picks for this call have a first-order backward only (docs/transforms.md); "
        "backend='torch' chooses the reference explicitly"
    ]


@pytest.mark.parametrize("cls", LAYERS)
@pytest.mark.parametrize("transform", ["torch.func.grad", "torch.func.jvp", "forward_ad"])
def test_explicit_cpu_event_refuses_a_transform_naming_the_way_out(cls, transform):
    fn, name = ROUTED[transform]
    with pytest.raises(BackendUnavailable) as info:
        fn(_layer(cls, "cpu_event"), _input())
    message = str(info.value)
    assert "backend 'cpu_event'" in message and f"under {name}" in message and "backend='torch'" in message


@pytest.mark.parametrize("cls", LAYERS)
def test_the_decision_under_a_transform_is_not_cached_for_plain_calls(cls, chosen):
    """The cached decision is keyed by the transform: a plain call after a transformed one trains on cpu_event."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the once-per-process note, checked above
        _func_grad(_layer(cls), _input())
    _out(_layer(cls), _input(requires_grad=True)).sum().backward()
    assert chosen == ["torch", "cpu_event"]


# ------------------------------------------------------------------ transforms cpu_event runs itself


def _vmap(layer, x):
    return torch.func.vmap(lambda xi: _out(layer, xi.unsqueeze(1)).squeeze(1), in_dims=1, out_dims=1)(x)


def _functional_call_grads(layer, x):
    params = {k: v.detach().clone().requires_grad_() for k, v in layer.named_parameters()}
    (functional_call(layer, params, (x,))[0] * torch.arange(H, dtype=F64)).sum().backward()
    return {k: p.grad for k, p in params.items()}


def _jacobian(layer, x, vectorize=False):
    return torch.autograd.functional.jacobian(lambda x: _out(layer, x).sum((1, 2)), x, vectorize=vectorize)


def _jacobian_vectorized(layer, x):
    return _jacobian(layer, x, vectorize=True)


def _checkpointed(layer, x, reentrant):
    x = x.clone().requires_grad_()
    out = checkpoint(lambda x: _out(layer, x), x, use_reentrant=reentrant)
    (out * torch.arange(H, dtype=F64)).sum().backward()
    return out, x.grad, [p.grad for p in layer.parameters()]


def _checkpoint_reentrant(layer, x):
    return _checkpointed(layer, x, True)


def _checkpoint_non_reentrant(layer, x):
    return _checkpointed(layer, x, False)


NATIVE = {
    "torch.func.vmap": _vmap,
    "torch.func.functional_call": _functional_call_grads,
    "autograd.functional.jacobian": _jacobian,
    "autograd.functional.jacobian(vectorize=True)": _jacobian_vectorized,
    "checkpoint(use_reentrant=True)": _checkpoint_reentrant,
    "checkpoint(use_reentrant=False)": _checkpoint_non_reentrant,
}


@pytest.mark.parametrize("cls", LAYERS)
@pytest.mark.parametrize("transform", list(NATIVE))
def test_cpu_event_runs_transforms_without_a_derivative_rule(cls, transform, chosen):
    default, reference, _ = _both(cls, NATIVE[transform])
    _close(default, reference)
    assert "cpu_event" in chosen


@pytest.mark.parametrize("cls", [DeltaGRU, DeltaLSTM])
def test_gradcheck_on_the_default_backend(cls, chosen):
    """The delta cells are piecewise linear in their input, so finite differences are their true
    gradient away from a threshold crossing (a step of 1e-6 crosses none here). ALIF and EGRU
    emit steps whose surrogate gradient no finite difference reproduces, on any backend."""
    layer = _layer(cls)
    assert torch.autograd.gradcheck(lambda x: _out(layer, x), (_input(requires_grad=True),), eps=1e-6, atol=1e-7)
    assert "cpu_event" in chosen


# ------------------------------------------------------------------ double backward


def _double_backward(layer, x):
    x = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(_out(layer, x).pow(2).sum(), x, create_graph=True)
    grad.pow(2).sum().backward()
    return grad.detach(), [p.grad for p in layer.parameters()]


@pytest.mark.parametrize("cls", LAYERS)
@pytest.mark.parametrize("backend", ["auto", "cpu_event"])
def test_double_backward_through_cpu_event_names_the_way_out(cls, backend):
    with pytest.raises(RuntimeError) as info:
        _double_backward(_layer(cls, backend), _input())
    message = str(info.value)
    assert "the cpu_event" in message and "create_graph=True" in message and "backend='torch'" in message


@pytest.mark.parametrize("cls", LAYERS)
def test_double_backward_runs_on_the_reference(cls):
    """The way out the error names works."""
    grad, param_grads = _double_backward(_layer(cls, "torch"), _input())
    assert grad.abs().sum() > 0 and all(g is not None for g in param_grads)


# ------------------------------------------------------------------ frozen weights, strided inputs


@pytest.mark.parametrize("cls", LAYERS)
@pytest.mark.parametrize("input_grad", [False, True])
def test_frozen_weights(cls, input_grad, chosen):
    def run(layer, x):
        for name, p in layer.named_parameters():
            if name.startswith("weight"):
                p.requires_grad_(False)
        x = x.clone().requires_grad_(input_grad)
        out = _out(layer, x)
        out.sum().backward()
        trained = [p.grad for p in layer.parameters() if p.requires_grad]
        return out, trained, x.grad

    default, reference, _ = _both(cls, run)
    _close(default, reference)
    assert chosen[0] == "cpu_event"


@pytest.mark.parametrize("cls", LAYERS)
@pytest.mark.parametrize(
    "view",
    [
        lambda x: x.transpose(0, 1).contiguous().transpose(0, 1),
        lambda x: x[:, :1].expand(T, B, IN),
        lambda x: torch.cat([x, x], 2)[:, :, ::2],
    ],
    ids=["transposed", "expanded", "strided"],
)
def test_non_contiguous_inputs(cls, view, chosen):
    def run(layer, x):
        x = x.clone().requires_grad_()
        out = _out(layer, view(x))
        (out * torch.arange(H, dtype=F64)).sum().backward()
        return out, x.grad, [p.grad for p in layer.parameters()]

    default, reference, _ = _both(cls, run)
    _close(default, reference)
    assert chosen[0] == "cpu_event"


@pytest.mark.parametrize("cls", LAYERS)
@pytest.mark.parametrize("mode", ["inference_mode", "no_grad", "frozen layer"])
def test_inference_tensor_inputs(cls, mode, chosen):
    def run(layer, x):
        layer.eval()
        with torch.inference_mode():
            x = x.clone()
        if mode == "inference_mode":
            with torch.inference_mode():
                return _out(layer, x)
        if mode == "no_grad":
            with torch.no_grad():
                return _out(layer, x)
        layer.requires_grad_(False)
        return _out(layer, x)

    default, reference, _ = _both(cls, run)
    _close(default, reference)
    assert chosen[0] == "cpu_event"


@pytest.mark.parametrize("cls", LAYERS)
def test_vmap_over_the_batch_then_backward_equals_the_batched_call(cls, chosen):
    """Samples are independent, so mapping the layer over the batch dimension is the batched call,
    output and parameter gradients alike (the truth here is the default backend's own batched call)."""

    def run(mapped):
        layer, x = _layer(cls), _input()
        if mapped:
            out = torch.func.vmap(lambda xi: _out(layer, xi.unsqueeze(1)).squeeze(1), in_dims=1, out_dims=1)(x)
        else:
            out = _out(layer, x)
        (out * torch.arange(H, dtype=F64)).sum().backward()
        return out, {name: p.grad for name, p in layer.named_parameters()}

    _close(run(True), run(False))
    assert chosen == ["cpu_event", "cpu_event"]
