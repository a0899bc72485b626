"""nn.GRU / nn.LSTM calling conventions of the sequence layers: ``h_0`` / ``(h_0, c_0)`` in,
``h_n`` / ``(h_n, c_n)`` out, the truncated-BPTT idioms (``detach``, ``repackage_hidden``), a
state carried across an optimiser step, whole-model ``torch.save``/``torch.load``.

Truths: nn.GRU / nn.LSTM themselves (the delta layers at Θ = 0, float64: equal up to float64
rounding of differently ordered sums, hence ``atol`` 1e-10), the same layer run over the
concatenated sequence (a continuation must equal it), and eager mode for ``torch.compile``.
"""

from __future__ import annotations

import copy
import io
import pickle
import subprocess
import sys

import pytest
import torch
from torch import nn

import evsnn

F64 = torch.float64
IN, H = 3, 4

pytestmark = pytest.mark.usefixtures("single_thread", "reference_backend")


def _close(a, b, atol: float = 1e-10) -> None:
    torch.testing.assert_close(a, b, rtol=0, atol=atol)


def _delta(kind: str, **k):
    cls = evsnn.DeltaGRU if kind == "GRU" else evsnn.DeltaLSTM
    return cls(IN, H, dtype=F64, **k)


def _torch_twin(layer) -> nn.Module:
    return layer.to_torch()


def _detach(state):
    """PyTorch's word_language_model ``repackage_hidden``."""
    if isinstance(state, torch.Tensor):
        return state.detach()
    return tuple(_detach(v) for v in state)


# --------------------------------------------------------------------------------------------
# h_0 in, h_n out
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
def test_plain_h0_and_returned_h_n_as_torch_rnn(kind):
    layer = _delta(kind, num_layers=2, bidirectional=True)
    rnn = _torch_twin(layer)
    x = torch.randn(6, 3, IN, dtype=F64)
    h0 = torch.randn(4, 3, H, dtype=F64)
    if kind == "GRU":
        out, h = layer(x, h0)
        ref, h_ref = rnn(x, h0)
    else:
        c0 = torch.randn(4, 3, H, dtype=F64)
        out, (h, c) = layer(x, (h0, c0))
        ref, (h_ref, c_ref) = rnn(x, (h0, c0))
        _close(c, c_ref)
    _close(out, ref)
    _close(h, h_ref)
    assert isinstance(h, torch.Tensor) and h.shape == (4, 3, H)
    last = h[-1]
    assert type(last) is torch.Tensor  # an operation on h_n gives a plain tensor
    _close(torch.cat((h[-2], h[-1]), 1), torch.cat((h_ref[-2], h_ref[-1]), 1))
    fc = nn.Linear(H, 2, dtype=F64)
    fc(h[-1]).sum().backward()
    assert layer.weight_hh_l1_reverse.grad is not None


def test_egru_h_n_is_the_final_events_and_carries_c():
    layer = evsnn.EGRU(IN, H, num_layers=2, threshold=0.1, dtype=F64)
    out, h = layer(torch.randn(5, 2, IN, dtype=F64))
    assert isinstance(h, torch.Tensor) and h.shape == (2, 2, H)
    _close(h[-1], out[-1])  # nn.GRU: h_n[-1] is the last layer's last output
    assert h.c.shape == (2, 2, H) and not torch.equal(h.c, h.as_tensor())


def test_egru_plain_h0_sets_c_and_y():
    layer = evsnn.EGRU(IN, H, threshold=0.1, dtype=F64)
    x, h0 = torch.randn(5, 2, IN, dtype=F64), torch.randn(1, 2, H, dtype=F64)
    out, _ = layer(x, h0)
    ref, _ = layer(x, evsnn.EGRUState(h0, h0))
    _close(out, ref, 0)


@pytest.mark.parametrize(
    "make,state,match",
    [
        (lambda: _delta("GRU"), lambda: (torch.zeros(1, 2, H, dtype=F64),), "h_0 as a tensor"),
        (lambda: _delta("LSTM"), lambda: torch.zeros(1, 2, H, dtype=F64), r"\(h_0, c_0\)"),
        (lambda: _delta("LSTM"), lambda: (torch.zeros(1, 2, H, dtype=F64),) * 3, "of length 3"),
        (lambda: evsnn.EGRU(IN, H, dtype=F64), lambda: [torch.zeros(1, 2, H, dtype=F64)], "h_0 as a tensor"),
    ],
)
def test_a_state_of_the_wrong_kind_is_refused_naming_the_expected_one(make, state, match):
    with pytest.raises(TypeError, match=match):
        make()(torch.randn(3, 2, IN, dtype=F64), state())


def test_a_plain_h0_of_the_wrong_shape_is_refused_naming_the_layout():
    with pytest.raises(ValueError, match=r"\(2, 2, 4\)"):
        _delta("GRU", num_layers=2)(torch.randn(3, 2, IN, dtype=F64), torch.zeros(1, 2, H, dtype=F64))


# --------------------------------------------------------------------------------------------
# continuation: exact from the returned (or detached) state
# --------------------------------------------------------------------------------------------

THRESHOLDED = {
    "DeltaGRU": lambda: evsnn.DeltaGRU(IN, H, num_layers=2, bidirectional=False, theta_x=0.2, theta_h=0.05, dtype=F64),
    "DeltaLSTM": lambda: evsnn.DeltaLSTM(IN, H, num_layers=2, theta_x=0.2, theta_h=0.05, dtype=F64),
    "EGRU": lambda: evsnn.EGRU(IN, H, num_layers=2, threshold=0.1, reset="threshold", dtype=F64),
}


@pytest.mark.parametrize("family", sorted(THRESHOLDED))
@pytest.mark.parametrize("repackage", [False, True])
def test_chunks_from_the_returned_state_equal_the_whole_sequence(family, repackage):
    layer = THRESHOLDED[family]()
    x = torch.randn(12, 2, IN, dtype=F64)
    whole, final = layer(x)
    outs, state = [], None
    for chunk in x.split(4):
        out, state = layer(chunk, state)
        state = _detach(state) if repackage else state
        outs.append(out)
    _close(torch.cat(outs), whole)
    h = state if isinstance(state, torch.Tensor) else state[0]
    h_ref = final if isinstance(final, torch.Tensor) else final[0]
    _close(h, h_ref)


@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
def test_an_optimiser_step_between_chunks_continues_with_the_new_weights(kind):
    """Θ = 0: the second chunk from the carried state is nn.GRU/nn.LSTM with the updated weights
    from the carried h (and c); every parameter, the biases too, gets nn's gradient."""
    layer = _delta(kind, num_layers=2)
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    x1, x2 = torch.randn(5, 2, IN, dtype=F64), torch.randn(5, 2, IN, dtype=F64)
    out, state = layer(x1)
    out.square().sum().backward()
    opt.step()
    opt.zero_grad()
    state = _detach(state)
    rnn = _torch_twin(layer)  # the updated weights
    out2, state2 = layer(x2, state)
    plain = state.as_tensor() if kind == "GRU" else (state[0].as_tensor(), state[1])
    ref2, ref_state2 = rnn(x2, plain)
    _close(out2, ref2)
    out2.square().sum().backward()
    ref2.square().sum().backward()
    for name, theirs in (
        ("weight_ih", "weight_ih_l0"),
        ("bias_ih", "bias_ih_l0"),
        ("bias_hh_l1", "bias_hh_l1"),
        ("weight_hh_l1", "weight_hh_l1"),
    ):
        ours = getattr(layer, name).grad
        assert ours is not None, f"{name} has no gradient"
        _close(ours, getattr(rnn, theirs).grad)


def test_thresholded_chunks_after_a_weight_change_use_the_new_weights():
    """Θ > 0 where no delta fires: the memories stay at zero, so by the SPEC §4 invariant the
    accumulators are the biases, M = b, and each step is h_t = (1 − z) ⊙ n + z ⊙ h_{t−1} with
    r, z, n from b alone. After a change of the biases the carried state computes with the new ones."""
    layer = evsnn.DeltaGRU(IN, H, theta_x=10.0, theta_h=10.0, dtype=F64)
    x = torch.randn(8, 2, IN, dtype=F64) * 0.01  # |Δx| < Θ_x, and |h| < 1 < Θ_h
    _, state = layer(x[:4])
    with torch.no_grad():
        layer.bias_hh.add_(1.0)
    after, _ = layer(x[4:], state)
    b_ih, b_hh = layer.bias_ih.detach(), layer.bias_hh.detach()
    r = torch.sigmoid(b_ih[:H] + b_hh[:H])
    z = torch.sigmoid(b_ih[H : 2 * H] + b_hh[H : 2 * H])
    n = torch.tanh(b_ih[2 * H :] + r * b_hh[2 * H :])
    h = state.as_tensor()[0]
    for t in range(4):
        h = (1 - z) * n + z * h
        _close(after[t], h)


# --------------------------------------------------------------------------------------------
# the state object: pickle, deepcopy, torch.save, torch.compile
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", sorted(THRESHOLDED))
def test_returned_state_survives_pickle_deepcopy_and_torch_save(family):
    layer = THRESHOLDED[family]()
    x = torch.randn(6, 2, IN, dtype=F64)
    _, state = layer(x[:3])
    state = _detach(state) if family != "DeltaLSTM" else type(state)(*_detach(state))
    expected, _ = layer(x[3:], state)
    buf = io.BytesIO()
    torch.save(state, buf)
    for restored in (
        pickle.loads(pickle.dumps(state)),
        copy.deepcopy(state),
        torch.load(io.BytesIO(buf.getvalue())),
    ):  # weights_only=True, PyTorch's default
        assert type(restored) is type(state)
        _close(layer(x[3:], restored)[0], expected, 0)


@pytest.mark.parametrize("family", sorted(THRESHOLDED))
def test_compiled_forward_takes_and_returns_the_state(family):
    layer = THRESHOLDED[family]()
    x = torch.randn(6, 2, IN, dtype=F64)
    _, state = layer(x[:3])
    state = _detach(state)
    compiled = torch.compile(layer, backend="aot_eager")
    out, final = compiled(x[3:], state)
    ref, ref_final = layer(x[3:], state)
    _close(out, ref, 0)
    assert type(final) is type(ref_final)
    out_again, _ = compiled(x[3:], final)
    _close(out_again, layer(x[3:], ref_final)[0], 0)


# --------------------------------------------------------------------------------------------
# whole-model save / load, flatten_parameters, isinstance
# --------------------------------------------------------------------------------------------


class _Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.egru = evsnn.EGRU(IN, H)
        self.dgru = evsnn.DeltaGRU(H, H, theta_x=0.1, theta_h=0.1)
        self.dlstm = evsnn.DeltaLSTM(H, H, num_layers=2, bidirectional=True)
        self.alif = evsnn.ALIF(2 * H, H)
        self.cells = nn.ModuleList(
            [evsnn.EGRUCell(IN, H), evsnn.DeltaGRUCell(IN, H), evsnn.DeltaLSTMCell(IN, H), evsnn.ALIFCell(IN, H)]
        )

    def forward(self, x):
        y, _ = self.egru(x)
        y, _ = self.dgru(y)
        y, _ = self.dlstm(y)
        return self.alif(y)[0]


def test_whole_model_save_and_default_load(tmp_path):
    model = _Model()
    x = torch.randn(4, 2, IN)
    expected = model(x)
    torch.save(model, tmp_path / "model.pt")
    # the user's own classes (torch asks this for any whole-model load: nn.ModuleList too), nothing of evsnn's
    with torch.serialization.safe_globals([_Model, nn.ModuleList]):
        loaded = torch.load(tmp_path / "model.pt")
    torch.testing.assert_close(loaded(x), expected, rtol=0, atol=0)


def test_init_code_recognises_the_layers_through_rnn_layers():
    """The common init idiom: orthogonal recurrent weights, zero biases, for every recurrent layer."""
    model = nn.Sequential(nn.LSTM(IN, H), evsnn.DeltaLSTM(IN, H, num_layers=2), evsnn.EGRU(IN, H))
    seen = []
    for m in model.modules():
        if isinstance(m, (nn.GRU, nn.LSTM, *evsnn.nn.RNN_LAYERS)):
            seen.append(type(m))
            for name, p in m.named_parameters():
                if "weight_hh" in name:
                    nn.init.orthogonal_(p)
                elif "bias" in name:
                    nn.init.zeros_(p)
    assert seen == [nn.LSTM, evsnn.DeltaLSTM, evsnn.EGRU]
    assert not isinstance(model[1], nn.RNNBase)
    w = model[1].weight_hh_l1
    _close(w.T @ w, torch.eye(H), 1e-5)  # float32 orthogonality
    assert (model[1].bias_ih == 0).all() and (model[2].bias_hh == 0).all()


@pytest.mark.parametrize("cls", [evsnn.EGRU, evsnn.DeltaGRU, evsnn.DeltaLSTM])
def test_flatten_parameters_is_a_no_op(cls):
    layer = cls(IN, H)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    assert layer.flatten_parameters() is None
    assert all(torch.equal(before[k], v) for k, v in layer.state_dict().items())


# --------------------------------------------------------------------------------------------
# cells in nn.GRUCell / nn.LSTMCell form
# --------------------------------------------------------------------------------------------


def _cell_and_torch(kind: str, **k):
    cell = (evsnn.DeltaGRUCell if kind == "GRU" else evsnn.DeltaLSTMCell)(IN, H, dtype=F64, **k)
    ref = (nn.GRUCell if kind == "GRU" else nn.LSTMCell)(IN, H, dtype=F64)
    ref.load_state_dict(cell.state_dict())
    return cell, ref


@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
def test_delta_cells_are_torch_cells_at_theta_zero(kind):
    cell, ref = _cell_and_torch(kind)
    x = torch.randn(6, 2, IN, dtype=F64)
    h0 = torch.randn(2, H, dtype=F64)
    hx = h0 if kind == "GRU" else (h0, torch.randn(2, H, dtype=F64))
    ours, theirs = hx, hx
    for t in range(6):
        ours, theirs = cell(x[t], ours), ref(x[t], theirs)
        if kind == "GRU":
            _close(ours, theirs)
        else:
            h, c = ours  # nn.LSTMCell's h, c = cell(x, (h, c))
            _close(h, theirs[0])
            _close(c, theirs[1])
    assert type((ours if kind == "GRU" else ours[0]) * 1) is torch.Tensor


@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
@pytest.mark.parametrize("detach", [False, True])
def test_delta_cells_continue_with_the_weights_after_an_optimiser_step(kind, detach):
    """Θ = 0, after an optimiser step: from the detached h (truncated BPTT, gradients compared) or
    from the h still attached to the old graph (a forward under no_grad, where only the weights'
    version counters tell that the carried accumulators are stale) the cell is nn's cell with the
    new weights."""
    cell, ref = _cell_and_torch(kind)
    opt = torch.optim.SGD(cell.parameters(), lr=0.5)
    x = torch.randn(6, 2, IN, dtype=F64)
    hx = None
    for t in range(3):
        hx = cell(x[t], hx)
    (hx if kind == "GRU" else hx[0]).square().sum().backward(retain_graph=not detach)
    opt.step()
    opt.zero_grad()
    if detach:
        hx = _detach(hx)
    ref.load_state_dict(cell.state_dict())
    theirs = (hx.as_tensor() if kind == "GRU" else (hx[0].as_tensor(), hx[1])) if detach else _detach(hx)
    with torch.set_grad_enabled(detach):
        for t in range(3, 6):
            hx, theirs = cell(x[t], hx), ref(x[t], theirs)
            _close(hx if kind == "GRU" else hx[0], theirs if kind == "GRU" else theirs[0])
    if not detach:
        return
    (hx if kind == "GRU" else hx[0]).square().sum().backward()
    (theirs if kind == "GRU" else theirs[0]).square().sum().backward()
    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        assert getattr(cell, name).grad is not None, name
        _close(getattr(cell, name).grad, getattr(ref, name).grad)


CELL_AND_LAYER = {
    "DeltaGRU": (
        lambda: evsnn.DeltaGRUCell(IN, H, theta_x=0.2, theta_h=0.05, dtype=F64),
        lambda: evsnn.DeltaGRU(IN, H, theta_x=0.2, theta_h=0.05, dtype=F64),
    ),
    "DeltaLSTM": (
        lambda: evsnn.DeltaLSTMCell(IN, H, theta_x=0.2, theta_h=0.05, dtype=F64),
        lambda: evsnn.DeltaLSTM(IN, H, theta_x=0.2, theta_h=0.05, dtype=F64),
    ),
    "EGRU": (
        lambda: evsnn.EGRUCell(IN, H, threshold=0.1, reset="threshold", dtype=F64),
        lambda: evsnn.EGRU(IN, H, threshold=0.1, reset="threshold", dtype=F64),
    ),
}


@pytest.mark.parametrize("family", sorted(CELL_AND_LAYER))
def test_cell_loop_from_the_returned_h_equals_the_layer(family):
    make_cell, make_layer = CELL_AND_LAYER[family]
    cell, layer = make_cell(), make_layer()
    layer.load_state_dict(cell.state_dict())
    x = torch.randn(10, 2, IN, dtype=F64)
    ref, _ = layer(x)
    hx, outs = None, []
    for t in range(10):
        hx = cell(x[t], hx)
        hx = _detach(hx) if t == 4 else hx  # a truncation point changes nothing forward
        outs.append(hx if isinstance(hx, torch.Tensor) else hx[0])
    _close(torch.stack(outs), ref, 1e-12)
    assert (ref != 0).any()


@pytest.mark.parametrize("family", sorted(CELL_AND_LAYER))
def test_compiled_cell_loop_from_the_returned_h_equals_eager(family):
    cell = CELL_AND_LAYER[family][0]()
    compiled = torch.compile(cell, backend="aot_eager")
    x = torch.randn(5, 2, IN, dtype=F64)
    ours = theirs = None
    for t in range(5):
        ours, theirs = compiled(x[t], ours), cell(x[t], theirs)
        assert type(ours) is type(theirs)
        _close(
            ours if isinstance(ours, torch.Tensor) else ours[0],
            theirs if isinstance(theirs, torch.Tensor) else theirs[0],
            0,
        )


@pytest.mark.parametrize("family", sorted(CELL_AND_LAYER))
def test_cells_record_last_stats_like_the_layers(family):
    make_cell, make_layer = CELL_AND_LAYER[family]
    cell, layer = make_cell(), make_layer()
    layer.load_state_dict(cell.state_dict())
    x = torch.randn(1, 2, IN, dtype=F64)
    cell(x[0])
    layer(x)
    ours, theirs = cell.last_stats, layer.last_stats
    assert ours.layer == family + "Cell"
    assert ours.dense_macs == theirs.dense_macs and int(ours.event_ops) == int(theirs.event_ops)
    _close(ours.event_fraction.double(), theirs.event_fraction.double(), 0)
    quiet = make_cell()
    quiet.record_stats = False
    quiet(x[0])
    assert quiet.last_stats is None


@pytest.mark.parametrize(
    "make,hx,match",
    [
        (lambda: evsnn.DeltaGRUCell(IN, H), (torch.zeros(2, H),), "h as a tensor"),
        (lambda: evsnn.DeltaLSTMCell(IN, H), torch.zeros(2, H), r"\(h, c\)"),
        (lambda: evsnn.EGRUCell(IN, H), evsnn.EGRUState(torch.zeros(2, H), torch.zeros(2, H)), r"cell\.step"),
    ],
)
def test_cells_refuse_a_state_of_the_wrong_kind(make, hx, match):
    with pytest.raises(TypeError, match=match):
        make()(torch.randn(2, IN), hx)


@pytest.mark.parametrize("find_unused_parameters", [False, True])
def test_ddp_returns_and_takes_the_state(tmp_path, find_unused_parameters):
    """One gloo process: DDP's output handling (with find_unused_parameters, its autograd sink on
    every output tensor) keeps h_n's carried fields, so chunks continue as without DDP."""
    if not torch.distributed.is_gloo_available():
        pytest.skip("this torch build has no gloo backend")
    from torch.nn.parallel import DistributedDataParallel

    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        for layer in (THRESHOLDED["DeltaGRU"](), THRESHOLDED["DeltaLSTM"](), THRESHOLDED["EGRU"]()):
            ddp = DistributedDataParallel(layer, find_unused_parameters=find_unused_parameters)
            x = torch.randn(8, 2, IN, dtype=F64)
            whole, _ = layer(x)
            first, state = ddp(x[:4])
            assert type(state) is type(layer(x[:4])[1])
            second, _ = ddp(x[4:], _detach(state))
            (first.sum() + second.sum()).backward()
            _close(torch.cat([first, second]), whole)
    finally:
        torch.distributed.destroy_process_group()


def test_whole_model_loads_after_a_plain_import_evsnn(tmp_path):
    """A fresh program that imports torch and evsnn (no layer name touched) loads each saved
    layer with PyTorch's default weights_only=True."""
    layers = [evsnn.EGRU(IN, H), evsnn.DeltaGRU(IN, H), evsnn.DeltaLSTM(IN, H), evsnn.ALIF(IN, H)]
    for i, layer in enumerate(layers):
        torch.save(layer, tmp_path / f"{i}.pt")
    program = (
        "import torch, evsnn\n"
        f"for i in range({len(layers)}):\n"
        f"    print(type(torch.load({str(tmp_path)!r} + f'/{{i}}.pt')).__name__)\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["EGRU", "DeltaGRU", "DeltaLSTM", "ALIF"]
