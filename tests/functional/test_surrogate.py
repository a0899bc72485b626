"""Surrogates (SPEC §1): forward is the strict Heaviside, backward is g(x) of the table."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

from evsnn import surrogate as sg


def _autograd_grad(fn, x: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    fn(x).sum().backward()
    return x.grad


def test_multi_gaussian_matches_spec_reference_values():
    # SPEC §1: g(0) = 0.4391, g(0.5) = 0.2589, g(1.0) = 0.0435, g(2.0) = -0.0157 (defaults, γ included).
    x = torch.tensor([0.0, 0.5, 1.0, 2.0], dtype=torch.float64)
    expected = torch.tensor([0.4391, 0.2589, 0.0435, -0.0157], dtype=torch.float64)
    s = sg.multi_gaussian()
    torch.testing.assert_close(s.grad(x), expected, atol=5e-5, rtol=0)
    torch.testing.assert_close(_autograd_grad(s, x), expected, atol=5e-5, rtol=0)
    # "goes slightly negative past |x| ≈ 1.27", symmetric in x
    assert s.grad(torch.tensor([1.25], dtype=torch.float64)).item() > 0
    assert s.grad(torch.tensor([1.30], dtype=torch.float64)).item() < 0
    torch.testing.assert_close(s.grad(-x), s.grad(x))


def test_multi_gaussian_grad_is_the_same_in_and_out_of_a_graph():
    # The backward pass (no graph) computes g in place; with a graph (double backward) it must not.
    x = torch.linspace(-4.0, 4.0, 801, dtype=torch.float64)
    s = sg.multi_gaussian()
    kept = x.clone()
    no_graph = s.grad(x)
    assert torch.equal(x, kept)  # the input is never written
    xg = x.clone().requires_grad_(True)
    with_graph = s.grad(xg)
    torch.testing.assert_close(no_graph, with_graph.detach(), atol=1e-15, rtol=0)
    # the graph form differentiates: g'(x) against a central difference of g
    (second,) = torch.autograd.grad(with_graph.sum(), xg)
    h = 1e-6
    fd = (s.grad(x + h) - s.grad(x - h)) / (2 * h)
    torch.testing.assert_close(second, fd, atol=1e-7, rtol=0)


# Hand-computed from the formulas of SPEC §1 with their defaults:
#   triangle(0.3): γ = 1/0.3;  g(0) = 3.3333, g(0.15) = 3.3333·0.5, g(-0.1) = 3.3333·(2/3), g(±0.3) = 0
#   gaussian(0.5, 0.5): g(0) = 0.5/(0.5·√(2π)) = 0.398942, g(0.5) = 0.398942·e^-0.5, g(-1) = 0.398942·e^-2
#   atan(2): g(x) = 1/(1 + (πx)²): g(0) = 1, g(0.5) = 1/(1 + π²/4), g(-0.25) = 1/(1 + π²/16)
#   fast_sigmoid(25): g(0) = 1, g(0.1) = 1/3.5², g(-0.04) = 1/2²
HAND_VALUES = [
    (sg.triangle(), [0.0, 0.15, -0.1, 0.3, -0.3, 1.0], [10 / 3, 5 / 3, 20 / 9, 0.0, 0.0, 0.0]),
    (sg.gaussian(), [0.0, 0.5, -1.0], [0.3989422804, 0.2419707245, 0.0539909665]),
    (sg.atan(), [0.0, 0.5, -0.25], [1.0, 0.2884004391, 0.6184864582]),
    (sg.fast_sigmoid(), [0.0, 0.1, -0.04], [1.0, 0.0816326531, 0.25]),
]


@pytest.mark.parametrize("surrogate,xs,gs", HAND_VALUES, ids=["triangle", "gaussian", "atan", "fast_sigmoid"])
def test_pseudo_derivatives_match_hand_values(surrogate, xs, gs):
    x = torch.tensor(xs, dtype=torch.float64)
    expected = torch.tensor(gs, dtype=torch.float64)
    torch.testing.assert_close(surrogate.grad(x), expected, atol=1e-9, rtol=0)
    # the backward pass of the spike function routes exactly g
    torch.testing.assert_close(_autograd_grad(surrogate, x), expected, atol=1e-9, rtol=0)


@pytest.mark.parametrize("name", ["triangle", "multi_gaussian", "gaussian", "atan", "fast_sigmoid"])
def test_forward_is_strict_heaviside(name):
    s = sg.as_surrogate(name)
    x = torch.tensor([-1.0, -1e-12, 0.0, 1e-12, 2.0], dtype=torch.float64, requires_grad=True)
    out = s(x)
    assert out.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]  # H(0) = 0: strict ">"
    assert out.dtype == x.dtype
    with torch.no_grad():
        assert s(x).tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]


@pytest.mark.parametrize(
    "surrogate",
    [
        sg.triangle(0.2, 2.0),
        sg.multi_gaussian(),
        sg.gaussian(0.3),
        sg.atan(3.0),
        sg.fast_sigmoid(10.0),
        sg.multi_gaussian().truncate(1.0),
    ],
)
def test_surrogates_pickle_and_deepcopy(surrogate):
    x = torch.linspace(-2, 2, 41, dtype=torch.float64)
    for clone in (pickle.loads(pickle.dumps(surrogate)), copy.deepcopy(surrogate)):
        assert clone == surrogate and type(clone) is type(surrogate)
        assert hash(clone) == hash(surrogate)
        torch.testing.assert_close(clone.grad(x), surrogate.grad(x), rtol=0, atol=0)


def test_truncated_surrogate_is_exactly_zero_outside_support():
    base = sg.multi_gaussian()
    trunc = base.truncate(1.0)
    assert trunc.support == 1.0 and base.support is None
    x = torch.tensor([-3.0, -1.0, -0.999, -0.2, 0.0, 0.4, 0.999, 1.0, 1.5], dtype=torch.float64)
    outside = x.abs() >= 1.0
    g = trunc.grad(x)
    ga = _autograd_grad(trunc, x)
    for got in (g, ga):
        assert (got[outside] == 0).all()  # exactly zero, not merely small
        torch.testing.assert_close(got[~outside], base.grad(x[~outside]), rtol=0, atol=1e-12)
    # forward unchanged
    assert trunc(x).tolist() == (x > 0).double().tolist()


def test_triangle_has_its_width_as_support_and_truncation_narrows_it():
    tri = sg.triangle(0.3)
    assert tri.support == 0.3
    x = torch.tensor([0.3, -0.3, 0.31, -5.0], dtype=torch.float64)
    assert (_autograd_grad(tri, x) == 0).all()
    assert tri.truncate(0.1).support == 0.1
    assert tri.truncate(1.0).support == 0.3


def test_snntorch_surrogate_closure_is_accepted_and_matches_ours():
    snn_surrogate = pytest.importorskip("snntorch.surrogate")
    x = torch.linspace(-1.5, 1.5, 31, dtype=torch.float64)
    for closure, ours in (
        (snn_surrogate.atan(alpha=2.0), sg.atan(2.0)),
        (snn_surrogate.fast_sigmoid(slope=25), sg.fast_sigmoid(25.0)),
    ):
        adapted = sg.as_surrogate(closure)
        assert isinstance(adapted, sg.SnnTorchSurrogate)
        xr = x.clone().requires_grad_(True)
        assert adapted(xr).tolist() == (x > 0).double().tolist()
        torch.testing.assert_close(adapted.grad(x), ours.grad(x), rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(_autograd_grad(adapted, x), ours.grad(x), rtol=1e-6, atol=1e-9)


def test_as_surrogate_by_name_and_bad_input():
    assert sg.as_surrogate("triangle") == sg.Triangle(0.3)
    s = sg.gaussian()
    assert sg.as_surrogate(s) is s
    with pytest.raises(ValueError, match="unknown surrogate 'nope'"):
        sg.as_surrogate("nope")
    with pytest.raises(TypeError, match="got int"):
        sg.as_surrogate(3)
    with pytest.raises(ValueError, match="width must be a finite positive number"):
        sg.triangle(0.0)
    with pytest.raises(ValueError, match="support must be a finite positive number"):
        sg.gaussian().truncate(-1.0)
    with pytest.raises(TypeError, match="expects a Surrogate"):
        sg.Truncated(lambda x: x, 1.0)


def _snntorch_closures():
    import snntorch.surrogate as snntorch_surrogate

    return [
        sg.SnnTorchSurrogate(snntorch_surrogate.atan()),
        sg.SnnTorchSurrogate(snntorch_surrogate.fast_sigmoid()),
        sg.SnnTorchSurrogate(snntorch_surrogate.triangular()),
    ]


OURS = [
    sg.triangle(),
    sg.multi_gaussian(),
    sg.gaussian(),
    sg.atan(),
    sg.fast_sigmoid(),
    sg.multi_gaussian().truncate(1.0),
    sg.fast_sigmoid().truncate(0.5),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("which", range(len(OURS) + 3))
def test_forward_is_heaviside_for_non_finite_inputs_in_grad_mode(which, dtype):
    s = OURS[which] if which < len(OURS) else _snntorch_closures()[which - len(OURS)]
    values = [-float("inf"), -1e30, -1.0, 0.0, 1.0, 1e30, float("inf"), float("nan")]
    expected = [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0]  # H(NaN) = 1[NaN > 0] = 0
    x = torch.tensor(values, dtype=dtype, requires_grad=True)
    out = s(x)
    assert out.tolist() == expected, f"{s!r} in grad mode"
    with torch.no_grad():
        assert s(x).tolist() == expected, f"{s!r} without grad"
    (grad,) = torch.autograd.grad(out.sum(), x)
    # g(±∞) = 0 for every surrogate of SPEC §1: no NaN comes back from an infinite input.
    if isinstance(s, sg.SnnTorchSurrogate):
        return
    assert grad[0].item() == 0.0 and grad[6].item() == 0.0, f"{s!r}: gradient at ±inf {grad[[0, 6]].tolist()}"
    finite = torch.tensor(values[2:5], dtype=torch.float64)
    torch.testing.assert_close(grad[2:5].to(torch.float64), s.grad(finite), rtol=1e-6, atol=1e-6)
