"""Truncated BPTT (evsnn.tbptt): the state is carried exactly, the gradient is cut at window edges.

The oracles: the untruncated forward of the same layer, and a truncated loop written out by hand
(detaching each field of the returned state explicitly). Layers run with backend="torch" in
float64, so that the only difference between the runs is where the graph is cut.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import pytest
import torch
from torch import nn

import evsnn.nn as enn
from evsnn.functional import ALIFState
from evsnn.tbptt import detach_state, tbptt_forward, tbptt_windows

T, B, N_IN, H = 13, 3, 4, 6


def _layers() -> dict[str, nn.Module]:
    return {
        "ALIF": enn.ALIF(N_IN, H, backend="torch"),
        "EGRU": enn.EGRU(N_IN, H, backend="torch"),
        "DeltaGRU": enn.DeltaGRU(N_IN, H, theta_x=0.0, theta_h=0.0, backend="torch"),
        "DeltaLSTM": enn.DeltaLSTM(N_IN, H, theta_x=0.0, theta_h=0.0, backend="torch"),
        "LeakyReadout": enn.LeakyReadout(N_IN, H),
        "ALIFReadout": enn.ALIFReadout(N_IN, H, backend="torch"),
        "GRU": nn.GRU(N_IN, H),
        "LSTM": nn.LSTM(N_IN, H),
    }


LAYERS = list(_layers())


def _layer(name: str) -> nn.Module:
    torch.manual_seed(1)
    return _layers()[name].double()


def _input() -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    # Large enough that the spiking layers fire (their surrogate gradients are then non-trivial).
    return (torch.rand(T, B, N_IN, generator=g, dtype=torch.float64) * 3.0).requires_grad_()


def _loss(out: torch.Tensor) -> torch.Tensor:
    weights = torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype).reshape(out.shape)
    return (out * weights).sum()


def _grads(layer: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    return [p.grad.clone() for p in layer.parameters()] + [x.grad.clone()]


def _detach_by_hand(state):
    if isinstance(state, torch.Tensor):
        return state.detach()
    if hasattr(state, "_fields"):
        return type(state)(*(t.detach() for t in state))
    return tuple(t.detach() for t in state)


def _by_hand(layer: nn.Module, x: torch.Tensor, k: int) -> torch.Tensor:
    outputs, state = [], None
    for start in range(0, x.shape[0], k):
        out, state = layer(x[start : start + k], state)
        outputs.append(out)
        state = _detach_by_hand(state)
    return torch.cat(outputs)


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("k", [T, T + 5])
def test_a_window_as_long_as_the_sequence_is_full_bptt(name, k):
    layer, x = _layer(name), _input()
    full, full_state = layer(x)
    _loss(full).backward()
    expected = _grads(layer, x)
    layer.zero_grad()
    x.grad = None
    out, state = tbptt_forward(layer, x, k)
    _loss(out).backward()
    assert torch.equal(out, full)
    for a, b in zip(detach_state(state), detach_state(full_state)):
        assert torch.equal(a, b)
    for a, b in zip(_grads(layer, x), expected):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("k", [1, 4, 5])
def test_short_windows_keep_the_forward_and_truncate_the_gradient(name, k):
    layer, x = _layer(name), _input()
    full, _ = layer(x)
    _loss(full).backward()
    full_grads = _grads(layer, x)
    layer.zero_grad()
    x.grad = None
    _loss(_by_hand(layer, x, k)).backward()
    expected = _grads(layer, x)
    layer.zero_grad()
    x.grad = None
    out, _ = tbptt_forward(layer, x, k)
    # Each window's input projection is a smaller matrix product than the whole sequence's, so
    # the sums may round differently: float64 agreement to a few ulp of the values is the
    # exactness available.
    torch.testing.assert_close(out, full, rtol=1e-12, atol=1e-12)
    _loss(out).backward()
    for a, b in zip(_grads(layer, x), expected):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # The truncation bites: some gradient differs from the full one.
    assert any(not torch.allclose(a, b, rtol=1e-6, atol=1e-9) for a, b in zip(expected, full_grads))


@pytest.mark.parametrize("name", ["ALIF", "DeltaLSTM", "LSTM"])
def test_windows_one_backward_each_give_the_truncated_gradient(name):
    layer, x = _layer(name), _input()
    _loss(_by_hand(layer, x, 4)).backward()
    expected = _grads(layer, x)
    layer.zero_grad()
    x.grad = None
    full_out, _ = layer(x.detach())
    weights = torch.linspace(0.5, 1.5, full_out.numel(), dtype=x.dtype).reshape(full_out.shape)
    seen = []
    for window in tbptt_windows(layer, x, 4):
        seen.append((window.start, window.stop))
        (window.output * weights[window.start : window.stop]).sum().backward()
    assert seen == [(0, 4), (4, 8), (8, 12), (12, 13)]
    for a, b in zip(_grads(layer, x), expected):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_batch_first_windows_run_along_time_dim_1():
    torch.manual_seed(1)
    layer = enn.ALIF(N_IN, H, batch_first=True, backend="torch").double()
    x = _input().detach().transpose(0, 1)
    full, _ = layer(x)
    out, _ = tbptt_forward(layer, x, 5, time_dim=1)
    torch.testing.assert_close(out, full, rtol=1e-12, atol=1e-12)


def test_an_initial_state_enters_the_first_window_with_its_gradient():
    layer = _layer("GRU")
    h0 = torch.zeros(1, B, H, dtype=torch.float64, requires_grad=True)
    out, _ = tbptt_forward(layer, _input().detach(), 4, h0)
    _loss(out).backward()
    assert h0.grad is not None and h0.grad.abs().sum() > 0


class _Pair(NamedTuple):
    a: torch.Tensor
    b: tuple


@dataclasses.dataclass
class _Holder:
    t: torch.Tensor
    n: int


def test_detach_state_keeps_types_and_detaches_every_tensor():
    w = torch.ones(2, requires_grad=True)
    y = w * 2
    state = {"alif": ALIFState(y, y + 1, y + 2), "pair": _Pair(y, (y, None, 3)), "list": [y], "obj": _Holder(y, 4)}
    out = detach_state(state)
    assert type(out["alif"]) is ALIFState and type(out["pair"]) is _Pair and type(out["obj"]) is _Holder
    assert out["pair"].b[1:] == (None, 3) and out["obj"].n == 4
    leaves = [*out["alif"], out["pair"].a, out["pair"].b[0], out["list"][0], out["obj"].t]
    assert all(not t.requires_grad and t.grad_fn is None for t in leaves)
    assert all(torch.equal(t, y) for t in leaves[:1] + leaves[3:])
    assert state["alif"].v.grad_fn is not None  # the input is left as it was


def test_detach_state_keeps_the_layer_state_types():
    for name in ("ALIF", "EGRU", "DeltaGRU", "DeltaLSTM", "LSTM"):
        _, state = _layer(name)(_input())
        out = detach_state(state)
        assert type(out) is type(state)
        assert all(not t.requires_grad for t in out)


def test_detach_state_refuses_an_object_it_cannot_look_inside():
    class Opaque:
        pass

    with pytest.raises(TypeError, match="cannot look inside a Opaque"):
        detach_state((torch.zeros(1), Opaque()))


@pytest.mark.parametrize("k", [0, -1, 2.5, True])
def test_bad_window_lengths_are_refused(k):
    with pytest.raises(ValueError, match="window k must be an int >= 1"):
        tbptt_forward(_layer("GRU"), _input(), k)


def test_a_packed_sequence_is_refused_with_a_hint():
    packed = nn.utils.rnn.pack_padded_sequence(_input().detach(), [T, T - 2, 3])
    with pytest.raises(TypeError, match="got a PackedSequence"):
        next(tbptt_windows(_layer("GRU"), packed, 4))
