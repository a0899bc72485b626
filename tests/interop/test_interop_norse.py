"""norse-style cells and layers: norse 1.1 conventions, NamedTuple states, native numbers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

norse_torch = pytest.importorskip("norse.torch")
from norse.torch.utils.state import _is_module_stateful  # noqa: E402

import evsnn  # noqa: E402
from evsnn.interop import norse as enorse  # noqa: E402

T, B, NI, H, C = 5, 6, 4, 10, 3


def test_cells_and_layers_are_stateful_for_norse():
    for module in (
        enorse.ALIFCell(NI, H),
        enorse.EGRUCell(NI, H),
        enorse.DeltaGRUCell(NI, H),
        enorse.DeltaLSTMCell(NI, H),
        enorse.EGRU(NI, H),
        enorse.ALIF(NI, H),
    ):
        assert _is_module_stateful(module), type(module).__name__


@pytest.mark.parametrize(
    "cell_cls,layer_cls,state_type,kw",
    [
        (enorse.ALIFCell, evsnn.ALIF, evsnn.ALIFState, {}),
        (enorse.EGRUCell, evsnn.EGRU, evsnn.EGRUState, {}),
        (enorse.DeltaGRUCell, evsnn.DeltaGRU, evsnn.DeltaGRUState, {"theta_x": 0.05, "theta_h": 0.05}),
        (enorse.DeltaLSTMCell, evsnn.DeltaLSTM, evsnn.DeltaLSTMState, {"theta_x": 0.05, "theta_h": 0.05}),
    ],
)
def test_lifted_cell_matches_native_layer(cell_cls, layer_cls, state_type, kw):
    torch.manual_seed(0)
    native = layer_cls(NI, H, backend="torch", **kw)
    cell = cell_cls(NI, H, **kw)
    cell.load_state_dict(native.state_dict())
    x = torch.randn(T, B, NI) * 2
    ref, ref_state = native(x)
    out, state = norse_torch.Lift(cell)(x)
    assert isinstance(state, state_type)
    torch.testing.assert_close(out, ref)
    # the layer's state is nn.GRU's [1, B, ...] layout; the delta layers' leaves the accumulators
    # m out (they are recomputed from the memories), so the fields it has are compared
    compared = [name for name in state._fields if getattr(ref_state, name, None) is not None]
    assert set(state._fields) - set(compared) <= {"m"}
    for name in compared:
        torch.testing.assert_close(getattr(state, name), getattr(ref_state, name)[0])


def test_sequential_state_with_norse_lif_runs_and_trains():
    torch.manual_seed(0)
    model = norse_torch.SequentialState(
        nn.Linear(NI, H),
        enorse.EGRUCell(H, H),
        nn.Linear(H, C),
        norse_torch.LIFCell(),
    )
    y = torch.arange(B) % C
    x = torch.zeros(B, NI)
    x[torch.arange(B), y] = 1.0
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    losses = []
    for _ in range(15):
        state = None
        vs = []
        for _t in range(T):
            _, state = model(x, state)
            vs.append(state[3].v)  # the norse LIF's membrane, a readout for the loss
        loss = nn.functional.cross_entropy(torch.stack(vs).mean(0) * 10, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert isinstance(state[1], evsnn.EGRUState)
    assert state[0] is None and state[2] is None
    assert type(state[3]).__name__ == "LIFFeedForwardState"
    assert losses[-1] < losses[0] - 0.05, losses
    assert model[1].weight_hh.grad is not None and model[1].weight_hh.grad.abs().sum() > 0


def test_layer_in_sequential_state_over_time_and_to_moves_parameters():
    torch.manual_seed(0)
    model = norse_torch.SequentialState(norse_torch.Lift(nn.Linear(NI, H)), enorse.DeltaGRU(H, H), norse_torch.LIF())
    x = torch.randn(T, B, NI)
    out, states = model(x)
    assert out.shape == (T, B, H)
    assert isinstance(states[1], evsnn.nn.DeltaHidden)  # the layer's h_n, carrying its delta memories
    # Continue the sequence from the returned states.
    out2, _ = model(x, states)
    assert out2.shape == (T, B, H)
    model64 = model.to(torch.float64)
    assert model64[1].weight_hh.dtype == torch.float64 and "weight_hh" in dict(model64[1].named_parameters())
    out64, _ = model64(x.double())
    assert out64.dtype == torch.float64


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="input_size=4"):
        enorse.EGRUCell(NI, H)(torch.randn(B, NI + 1))
    with pytest.raises(TypeError, match="EGRUState"):
        enorse.EGRUCell(NI, H)(torch.randn(B, NI), state=torch.zeros(B, H))


def test_plot_spikes_2d_accepts_evsnn_output(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from norse.torch.utils.plot.plot import plot_spikes_2d  # not re-exported by the package in 1.1.0

    torch.manual_seed(0)
    spikes, _ = enorse.ALIF(NI, H)(torch.rand(50, 1, NI) * 3)
    assert spikes.sum() > 0
    plot_spikes_2d(spikes[:, 0].detach())
    plt.savefig(tmp_path / "spikes.png")
    plt.close("all")
    assert (tmp_path / "spikes.png").stat().st_size > 0
