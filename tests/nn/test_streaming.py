"""Stream(layer): step-by-step and chunked inference equal the layer's own forward over the
whole sequence, on every layer and cell, and a 100 000-step stream keeps memory bounded."""

from __future__ import annotations

import gc
import resource
import time

import pytest
import torch

import evsnn
from evsnn.ops import auto
from evsnn.streaming import Stream

H_EVENT = auto.AUTO_MIN_HIDDEN  # where "auto" picks the event path on CPU


def _sequence_layers():
    return [
        ("EGRU", lambda: evsnn.EGRU(3, H_EVENT)),
        ("EGRU-threshold-reset", lambda: evsnn.EGRU(3, 12, reset="threshold")),
        ("EGRU-zoneout", lambda: evsnn.EGRU(3, 12, zoneout=0.3)),
        ("EGRU-batch-first", lambda: evsnn.EGRU(3, H_EVENT, batch_first=True)),
        ("ALIF", lambda: evsnn.ALIF(3, H_EVENT)),
        ("ALIF-feedforward", lambda: evsnn.ALIF(3, 12, recurrent=False)),
        ("DeltaGRU", lambda: evsnn.DeltaGRU(3, H_EVENT, theta_x=0.1, theta_h=0.05)),
        ("DeltaLSTM", lambda: evsnn.DeltaLSTM(3, 12, theta_x=0.1, theta_h=0.05)),
        ("LeakyReadout", lambda: evsnn.LeakyReadout(3, 5)),
    ]


def _cells():
    return [
        ("EGRUCell", lambda: evsnn.EGRUCell(3, 12)),
        ("ALIFCell", lambda: evsnn.ALIFCell(3, 12)),
        ("DeltaGRUCell", lambda: evsnn.DeltaGRUCell(3, 12, theta_x=0.1, theta_h=0.05)),
        ("DeltaLSTMCell", lambda: evsnn.DeltaLSTMCell(3, 12, theta_x=0.1, theta_h=0.05)),
    ]


def _reference(layer, x):
    """The layer's own forward on the reference backend, over all of ``x [T, B, I]``."""
    with torch.no_grad():
        if hasattr(layer, "backend"):
            saved, layer.backend = layer.backend, "torch"
        try:
            if isinstance(layer, (evsnn.EGRUCell, evsnn.ALIFCell, evsnn.DeltaGRUCell, evsnn.DeltaLSTMCell)):
                state, outs = None, []
                for t in range(x.shape[0]):
                    out, state = layer.step(x[t], state)
                    outs.append(out)
                return torch.stack(outs)
            if getattr(layer, "batch_first", False):
                return layer(x.transpose(0, 1))[0].transpose(0, 1)
            return layer(x)[0]
        finally:
            if hasattr(layer, "backend"):
                layer.backend = saved


def _signal(t, b, i, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.cumsum(torch.randn(t, b, i, generator=gen), dim=0) * 0.5


@pytest.mark.parametrize("name,make", _sequence_layers() + _cells(), ids=lambda v: v if isinstance(v, str) else "")
@pytest.mark.parametrize("batch", [1, 3])
def test_steps_and_chunks_equal_the_whole_forward(name, make, batch):
    torch.manual_seed(0)
    layer = make().eval()
    x = _signal(14, batch, 3, seed=batch)
    ref = _reference(layer, x)
    stream = Stream(layer, batch_size=batch)
    if layer is not None and H_EVENT == getattr(layer, "hidden_size", None) and not getattr(layer, "zoneout", 0.0):
        assert stream.backend == "cpu_event"
    first = torch.stack([stream.step(x[t]) for t in range(5)])
    chunk_in = x[5:11].transpose(0, 1) if getattr(layer, "batch_first", False) else x[5:11]
    middle = stream.chunk(chunk_in)
    middle = middle.transpose(0, 1) if getattr(layer, "batch_first", False) else middle
    last = torch.stack([stream.step(x[t]) for t in range(11, 14)])
    got = torch.cat([first, middle, last])
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert not got.requires_grad
    # reset() returns to the initial state: the same input gives the same first outputs.
    stream.reset()
    torch.testing.assert_close(stream.step(x[0]), ref[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "cpu_event"])
def test_state_roundtrip_and_explicit_backend(backend):
    torch.manual_seed(1)
    layer = evsnn.DeltaGRU(3, 10, theta_x=0.1, theta_h=0.05).eval()
    x = _signal(8, 2, 3, seed=5)
    stream = Stream(layer, batch_size=2, backend=backend)
    assert stream.backend == backend
    stream.chunk(x[:4])
    saved = stream.state
    assert isinstance(saved, evsnn.DeltaGRUState)
    tail = stream.chunk(x[4:])
    other = Stream(layer, batch_size=2, backend=backend)
    other.reset(saved)
    torch.testing.assert_close(other.chunk(x[4:]), tail)
    with torch.no_grad():
        _, mid = layer(x[:4])
        ref_tail, _ = layer(x[4:], mid)
    torch.testing.assert_close(tail, ref_tail, rtol=1e-5, atol=1e-5)


def test_bad_inputs_raise():
    layer = evsnn.EGRU(3, 8)
    with pytest.raises(TypeError, match="Stream expects"):
        Stream(torch.nn.GRU(3, 8))
    with pytest.raises(ValueError, match="batch_size"):
        Stream(layer, batch_size=0)
    with pytest.raises(ValueError, match="unknown backend"):
        Stream(layer, backend="fast")
    stream = Stream(layer, batch_size=2)
    with pytest.raises(ValueError, match="batch size 2"):
        stream.step(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="input_size=3"):
        stream.step(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="2-D"):
        stream.step(torch.zeros(2, 1, 3))
    with pytest.raises(TypeError, match="dtype"):
        stream.step(torch.zeros(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="shape"):
        stream.reset(evsnn.EGRUState(torch.zeros(1, 8), torch.zeros(1, 8)))
    with pytest.raises(evsnn.ops.BackendUnavailable, match="zoneout"):
        Stream(evsnn.EGRU(3, 8, zoneout=0.1), backend="cpu_event")


def _live_tensors() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if issubclass(type(o), torch.Tensor))


@pytest.mark.slow
@pytest.mark.parametrize(
    "make",
    [
        lambda: evsnn.EGRU(2, 8, threshold=0.1, threshold_init="constant"),
        lambda: evsnn.DeltaGRU(2, 8, theta_x=0.1, theta_h=0.05),
    ],
    ids=["EGRU", "DeltaGRU"],
)
def test_hundred_thousand_steps_with_bounded_memory(make):
    torch.manual_seed(0)
    layer = make().eval()
    stream = Stream(layer, batch_size=1, backend="cpu_event")
    x = torch.randn(64, 1, 2)
    for t in range(2000):  # warm up the allocator and every code path
        stream.step(x[t % 64])
    tensors_before = _live_tensors()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    events = 0
    start = time.perf_counter()
    for t in range(100_000):
        y = stream.step(x[t % 64])
        if t % 1000 == 0:
            events += int(y.count_nonzero())
    elapsed = time.perf_counter() - start
    tensors_after = _live_tensors()
    rss_growth_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    assert events > 0  # the stream did produce events
    # One leaked tensor per step would add 100 000 live tensors (and several MiB).
    assert tensors_after - tensors_before <= 5, (tensors_before, tensors_after)
    assert rss_growth_kib < 16 * 1024, f"max RSS grew by {rss_growth_kib} KiB over 100 000 steps"
    assert elapsed < 120, f"100 000 steps took {elapsed:.1f} s"


def _change_in_place(layer):
    with torch.no_grad():
        layer.weight_hh.mul_(1.5)


def _replace_parameter(layer):
    layer.weight_hh = torch.nn.Parameter(layer.weight_hh.detach() * 1.5)


def _optimiser_step(layer):
    for p in layer.parameters():
        p.grad = torch.ones_like(p)
    torch.optim.SGD(layer.parameters(), lr=0.1).step()


def _change_threshold(layer):
    layer.theta_h = layer.theta_h + 0.1


@pytest.mark.parametrize("backend", ["torch", "cpu_event"])
@pytest.mark.parametrize(
    "change", [_change_in_place, _replace_parameter, _optimiser_step, _change_threshold], ids=lambda f: f.__name__[1:]
)
def test_stream_refuses_weights_changed_under_it_and_refresh_reads_them(change, backend):
    torch.manual_seed(2)
    layer = evsnn.DeltaGRU(3, H_EVENT, theta_x=0.05, theta_h=0.02).eval()
    x = _signal(6, 1, 3, seed=7)
    stream = Stream(layer, backend=backend)
    stream.step(x[0])
    change(layer)
    with pytest.raises(RuntimeError, match=r"Stream\(DeltaGRU\): the layer's .* changed since the stream read them"):
        stream.step(x[1])
    with pytest.raises(RuntimeError, match=r"call stream.refresh\(\)"):
        stream.chunk(x[1:3])
    # refresh(keep_state=True) continues from the state reached, with the new weights.
    saved = stream.state
    stream.refresh(keep_state=True)
    got = stream.chunk(x[1:])
    with torch.no_grad():
        want, _ = layer(x[1:], saved)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    stream.refresh()  # back to the initial state
    with torch.no_grad():
        want, _ = layer(x)
    torch.testing.assert_close(stream.chunk(x), want, rtol=1e-5, atol=1e-5)


def test_readout_stream_refuses_a_changed_tau():
    readout = evsnn.LeakyReadout(3, 4)
    stream = Stream(readout)
    stream.step(torch.randn(1, 3))
    with torch.no_grad():
        readout.tau.add_(1.0)
    with pytest.raises(RuntimeError, match=r"Stream\(LeakyReadout\): the layer's tau changed"):
        stream.step(torch.randn(1, 3))
