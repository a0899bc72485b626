"""last_stats is computed when read, from the tensors of the forward: a forward nobody reads the
statistics of runs no reduction for them, and a read gives the values counted by hand from the
output (SPEC §5)."""

from __future__ import annotations

import pytest
import torch

import evsnn
from evsnn.metrics import reference_traces

IN, H, T, B = 3, 6, 5, 2

LAYERS = {
    "ALIF": lambda: evsnn.ALIF(IN, H, b0=0.01),
    "EGRU": lambda: evsnn.EGRU(IN, H, threshold=0.05),
    "DeltaGRU": lambda: evsnn.DeltaGRU(IN, H, theta_x=0.3, theta_h=0.05),
    "DeltaLSTM": lambda: evsnn.DeltaLSTM(IN, H, theta_x=0.3, theta_h=0.05),
}
ROWS = {"ALIF": 1, "EGRU": 3, "DeltaGRU": 3, "DeltaLSTM": 4}

pytestmark = pytest.mark.usefixtures("single_thread", "reference_backend")


def _count_stats(monkeypatch, layer) -> list[int]:
    calls: list[int] = []
    real = type(layer)._stats

    def counting(self, *args):
        calls.append(1)
        return real(self, *args)

    monkeypatch.setattr(type(layer), "_stats", counting)
    return calls


@pytest.mark.parametrize("name", list(LAYERS))
def test_forward_defers_and_read_computes_once(name, monkeypatch):
    layer = LAYERS[name]()
    calls = _count_stats(monkeypatch, layer)
    x = torch.randn(T, B, IN) * 2
    with torch.no_grad():
        out, _ = layer(x)
    assert calls == [], "a forward computes no statistics until they are read"
    stats = layer.last_stats
    assert calls == [1] and layer.last_stats is stats  # computed once
    assert stats.layer == name

    # hand counts from the output and the input (SPEC §5)
    if name.startswith("Delta"):
        events = reference_traces(layer, x).events  # the hidden deltas Δh
        dx = reference_traces(layer, x).trace.delta_x
        expected_ops = ((dx != 0).sum() + (events != 0).sum()) * ROWS[name] * H
    else:
        events = out
        prev = torch.cat([torch.zeros(1, B, H), out[:-1]])
        expected_ops = ((x != 0).sum() + (prev != 0).sum()) * ROWS[name] * H
    assert (events != 0).any() and (events == 0).any(), "not a vacuous count"
    torch.testing.assert_close(stats.event_fraction, (events != 0).float().mean(dim=(1, 2)))
    assert int(stats.event_ops) == int(expected_ops)
    assert stats.backward_sparsity is None  # no graph was recorded


@pytest.mark.parametrize("name", ["EGRU", "DeltaGRU"])
def test_latest_forward_wins_and_training_reports_backward_sparsity(name):
    layer = LAYERS[name]()
    x1, x2 = torch.randn(T, B, IN) * 2, torch.zeros(T + 2, B, IN)
    layer(x1)
    layer(x2)
    stats = layer.last_stats
    assert stats.event_fraction.shape == (T + 2,)  # the second pass, not the first
    assert stats.backward_sparsity is not None  # it recorded a graph
    layer.last_stats = None
    assert layer.last_stats is None


def test_in_place_change_before_read_raises():
    layer = LAYERS["EGRU"]()
    x = torch.randn(T, B, IN) * 2
    out, _ = layer(x)
    out.detach().zero_()  # shares the version counter with out
    with pytest.raises(RuntimeError, match=r"EGRU\.last_stats: a tensor of the last forward .* modified in place"):
        _ = layer.last_stats
    layer(x)
    assert layer.last_stats.event_fraction.shape == (T,)


def test_inference_mode_tensors_are_read():
    layer = LAYERS["ALIF"]()
    x = torch.randn(T, B, IN) * 2
    with torch.inference_mode():
        out, _ = layer(x)
    torch.testing.assert_close(layer.last_stats.event_fraction, (out != 0).float().mean(dim=(1, 2)))


def test_record_stats_false_keeps_nothing(monkeypatch):
    layer = evsnn.EGRU(IN, H, record_stats=False)
    calls = _count_stats(monkeypatch, layer)
    layer(torch.randn(T, B, IN))
    assert layer.last_stats is None and calls == []


def test_stacked_bidirectional_merges_on_read():
    layer = evsnn.EGRU(IN, H, num_layers=2, bidirectional=True, threshold=0.05)
    with torch.no_grad():
        layer(torch.randn(T, B, IN) * 2)
    stats = layer.last_stats
    runs = stats.extra["runs"]
    assert len(runs) == 4
    torch.testing.assert_close(stats.event_fraction, torch.stack([r.event_fraction for r in runs]).mean(0))
    assert int(stats.event_ops) == sum(int(r.event_ops) for r in runs)


def test_pending_stats_hold_no_graph_and_copy_as_computed_stats():
    """The kept tensors are detached (the layer does not keep the forward's graph alive), and a
    deepcopy or pickle carries the computed LayerStats."""
    import copy
    import io

    layer = LAYERS["EGRU"]()
    x = torch.randn(T, B, IN) * 2
    out, _ = layer(x)
    pending = layer.__dict__["_pending_stats"]
    kept = [a for p, _ in pending[1] for a in p.args if isinstance(a, torch.Tensor)]
    assert kept and all(t.grad_fn is None for t in kept)
    clone = copy.deepcopy(layer)
    assert clone.__dict__["_pending_stats"] is None
    torch.testing.assert_close(clone.last_stats.event_fraction, (out != 0).float().mean(dim=(1, 2)))
    buf = io.BytesIO()
    torch.save(layer, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    torch.testing.assert_close(loaded.last_stats.event_fraction, clone.last_stats.event_fraction)
