"""evsnn.plot: every plot renders headless, draws exactly the events it is given, and is fast."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402

import evsnn  # noqa: E402
from evsnn import metrics, plot  # noqa: E402
from evsnn.functional import alif_scan, egru_scan  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny ops on a shared 2-core machine run far faster on one thread than fighting for two.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _png(ax_or_fig) -> np.ndarray:
    fig = ax_or_fig.figure if hasattr(ax_or_fig, "figure") and not isinstance(ax_or_fig, plt.Figure) else ax_or_fig
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=60)
    buf.seek(0)
    assert buf.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"
    return plt.imread(buf)


def _differs(a: np.ndarray, b: np.ndarray, min_pixels: int = 5) -> bool:
    assert a.shape == b.shape
    return int((np.abs(a - b).sum(axis=-1) > 0.05).sum()) >= min_pixels


def _points(collection) -> set[tuple[int, int]]:
    return {(int(round(t)), int(round(n))) for t, n in collection.get_offsets()}


def _known_spikes() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return (torch.rand(12, 3, 7, generator=g) < 0.25).float()


def test_raster_draws_exactly_the_events_of_the_chosen_sample():
    s = _known_spikes()
    for sample in (0, 2):
        ax = plot.raster(s, sample=sample)
        assert len(ax.collections) == 1
        expected = {(int(t), int(n)) for t, n in torch.nonzero(s[:, sample])}
        drawn = ax.collections[0].get_offsets()
        assert len(drawn) == int(s[:, sample].sum())
        assert _points(ax.collections[0]) == expected
        assert ax.get_xlabel() == "time step" and ax.get_ylabel() == "unit"
    two_d = plot.raster(s[:, 1].numpy())
    assert _points(two_d.collections[0]) == {(int(t), int(n)) for t, n in torch.nonzero(s[:, 1])}


def test_raster_png_is_not_blank():
    s = _known_spikes()
    with_events = _png(plot.raster(s))
    without = _png(plot.raster(torch.zeros_like(s)))
    assert _differs(with_events, without)


def test_raster_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\[T, N\] or \[T, B, N\]"):
        plot.raster(torch.zeros(5))
    with pytest.raises(TypeError, match="torch.Tensor or numpy array"):
        plot.raster([[0, 1], [1, 0]])
    with pytest.raises(ValueError, match="sample=3 is out of range"):
        plot.raster(torch.zeros(4, 3, 2), sample=3)
    with pytest.raises(TypeError, match="ax must be a matplotlib Axes"):
        plot.raster(torch.zeros(4, 2), ax="left")


def test_large_raster_renders_within_two_seconds():
    g = torch.Generator().manual_seed(0)
    s = torch.rand(10_000, 1_000, generator=g) < 0.05
    start = time.perf_counter()
    ax = plot.raster(s)
    buf = io.BytesIO()
    ax.figure.savefig(buf, format="png", dpi=100)
    elapsed = time.perf_counter() - start
    assert len(ax.collections[0].get_offsets()) == int(s.sum())
    assert elapsed < 2.0, f"10 000 x 1 000 raster took {elapsed:.2f} s"


@pytest.mark.parametrize("signed", [False, True])
def test_large_event_raster_renders_within_two_seconds(signed):
    g = torch.Generator().manual_seed(1)
    values = torch.randn(10_000, 1_000, generator=g)
    y = values * (torch.rand(10_000, 1_000, generator=g) < 0.05)
    if not signed:
        y = y.abs()
    start = time.perf_counter()
    ax = plot.event_raster(y, signed=signed)
    buf = io.BytesIO()
    ax.figure.savefig(buf, format="png", dpi=100)
    elapsed = time.perf_counter() - start
    assert sum(len(c.get_offsets()) for c in ax.collections) == int((y != 0).sum())
    assert elapsed < 2.0, f"10 000 x 1 000 event raster (signed={signed}) took {elapsed:.2f} s"


def test_event_raster_signed_deltas_use_two_distinct_colours():
    d = torch.tensor([[0.5, 0.0, -0.2], [0.0, -1.0, 0.0], [0.3, 0.2, 0.0], [0.0, 0.0, -0.1]])
    ax = plot.event_raster(d)
    pos, neg = ax.collections
    assert _points(pos) == {(0, 0), (2, 0), (2, 1)}
    assert _points(neg) == {(0, 2), (1, 1), (3, 2)}
    c_pos, c_neg = pos.get_facecolor()[0], neg.get_facecolor()[0]
    assert np.allclose(c_pos, to_rgba(plot.POSITIVE_COLOR)) and np.allclose(c_neg, to_rgba(plot.NEGATIVE_COLOR))
    assert np.abs(c_pos - c_neg).sum() > 0.5
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["Δ > 0", "Δ < 0"]
    assert _differs(_png(ax), _png(plot.event_raster(torch.zeros_like(d), signed=True)))


def test_event_raster_from_a_delta_gru_trace():
    torch.manual_seed(1)
    layer = evsnn.DeltaGRU(3, 5, theta_h=0.02)
    rec = metrics.reference_traces(layer, torch.randn(15, 2, 3))
    dh = rec.trace.delta_h
    ax = plot.event_raster(dh, sample=1)
    pos, neg = ax.collections
    assert _points(pos) == {(int(t), int(n)) for t, n in torch.nonzero(dh[:, 1] > 0)}
    assert _points(neg) == {(int(t), int(n)) for t, n in torch.nonzero(dh[:, 1] < 0)}


def test_event_raster_graded_events_coloured_by_value():
    torch.manual_seed(0)
    layer = evsnn.EGRU(4, 6, threshold_init="constant", threshold=0.05)
    with torch.no_grad():
        y, _ = layer(torch.randn(20, 2, 4))
    assert (y >= 0).all() and (y > 0).sum() > 5
    ax = plot.event_raster(y)
    drawn = set().union(*(_points(c) for c in ax.collections))
    assert drawn == {(int(t), int(n)) for t, n in torch.nonzero(y[:, 0])}
    assert sum(len(c.get_offsets()) for c in ax.collections) == int((y[:, 0] != 0).sum())
    # The largest event gets the top colour of the map, the smallest the bottom one.
    vals = y[:, 0]
    t_max, n_max = np.unravel_index(int(vals.argmax()), vals.shape)
    t_min, n_min = [int(i) for i in torch.nonzero(vals == vals[vals > 0].min())[0]]
    cmap = plt.get_cmap("viridis").resampled(16)
    colour_of = {p: c.get_facecolor()[0] for c in ax.collections for p in _points(c)}
    assert np.allclose(colour_of[(t_max, n_max)], cmap(15))
    assert np.allclose(colour_of[(t_min, n_min)], cmap(0))
    assert len(ax.figure.axes) == 2  # the colour bar
    assert _differs(_png(ax), _png(plot.event_raster(torch.zeros_like(y), colorbar=False)))


def test_activity_from_stats_module_tensor_and_dict():
    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.alif = evsnn.ALIF(3, 8)
            self.egru = evsnn.EGRU(8, 5, threshold_init="constant", threshold=0.05)

        def forward(self, x):
            s, _ = self.alif(x)
            return self.egru(s)[0]

    net = Net()
    x = (torch.rand(16, 2, 3) < 0.5).float() * 3.0
    with torch.no_grad():
        net(x)
    ax = plot.activity(net)
    lines = {line.get_label(): line.get_ydata() for line in ax.get_lines()}
    assert set(lines) == {"alif", "egru"}
    assert np.allclose(lines["alif"], net.alif.last_stats.event_fraction.numpy())
    assert np.allclose(lines["egru"], net.egru.last_stats.event_fraction.numpy())
    events = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0]])
    ax = plot.activity({"hand": events, "stats": net.alif.last_stats})
    ydata = {line.get_label(): line.get_ydata() for line in ax.get_lines()}
    assert np.allclose(ydata["hand"], [0.25, 0.75, 0.0])
    single = plot.activity(net.alif.last_stats)
    assert single.get_lines()[0].get_label() == "ALIF"
    assert _differs(_png(single), _png(plot.activity(torch.zeros(16))))
    with pytest.raises(ValueError, match="no layer with last_stats"):
        plot.activity(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="activity expects"):
        plot.activity(3.0)


def test_traces_alif_membrane_threshold_and_spikes():
    torch.manual_seed(0)
    n = 4
    current = torch.rand(40, 2, n) * 3.0
    spikes, _, trace = alif_scan(current, None, tau_mem=torch.full((n,), 5.0), tau_adapt=torch.full((n,), 30.0))
    unit, sample = 2, 1
    ax = plot.traces(trace, spikes, unit=unit, sample=sample)
    v_line, b_line = ax.get_lines()
    assert np.allclose(v_line.get_ydata(), trace.v[:, sample, unit].numpy())
    assert np.allclose(b_line.get_ydata(), trace.threshold[:, sample, unit].numpy())
    marks = ax.collections[0]
    assert len(marks.get_segments()) == int(spikes[:, sample, unit].sum()) > 0
    assert sorted(int(seg[0][0]) for seg in marks.get_segments()) == torch.nonzero(spikes[:, sample, unit]).flatten().tolist()
    assert _differs(_png(ax), _png(plot.traces(trace, torch.zeros_like(spikes), unit=unit, sample=sample)))
    with pytest.raises(ValueError, match="carries its own adaptive threshold"):
        plot.traces(trace, spikes, threshold=0.3)


def test_traces_egru_state_theta_and_events():
    torch.manual_seed(0)
    layer = evsnn.EGRU(3, 5)
    x = torch.randn(30, 1, 3)
    with torch.no_grad():
        y, _, trace = egru_scan(
            x, None, layer.weight_ih, layer.weight_hh, layer.bias_ih, layer.bias_hh, layer.threshold, reset=layer.reset
        )
    unit = int((y[:, 0] != 0).sum(0).argmax())
    ax = plot.traces(trace, y, threshold=layer.threshold, unit=unit)
    assert np.allclose(ax.get_lines()[0].get_ydata(), trace.c_pre[:, 0, unit].numpy())
    assert np.allclose(ax.get_lines()[1].get_ydata(), float(layer.threshold[unit].detach()))
    assert len(ax.collections[0].get_segments()) == int((y[:, 0, unit] != 0).sum()) > 0
    # The layer form replays the same reference scan.
    ax2 = plot.traces(layer, x, unit=unit)
    assert np.allclose(ax2.get_lines()[0].get_ydata(), trace.c_pre[:, 0, unit].numpy())
    with pytest.raises(ValueError, match="needs threshold="):
        plot.traces(trace, y)
    with pytest.raises(ValueError, match="unit=9 is out of range"):
        plot.traces(trace, y, threshold=0.3, unit=9)
    with pytest.raises(TypeError, match="ALIFTrace, an EGRUTrace"):
        plot.traces(torch.zeros(3), y)


def test_profile_warms_up_before_it_times():
    class Counting(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = evsnn.EGRU(4, 6)
            self.calls: list[bool] = []

        def forward(self, x):
            self.calls.append(torch.is_grad_enabled())
            return self.layer(x)

    model, x = Counting(), torch.randn(5, 2, 4)
    prof = metrics.profile(model, x, backward=True)
    # one untimed call without a graph, then the profiled call; only the latter is reported
    assert model.calls == [False, True] and len(prof.layers) == 1
    assert prof.layers[0].event_ops == model.layer.last_stats.event_ops
    model.calls.clear()
    metrics.profile(model, x, warmup=False)
    assert model.calls == [False]


def test_op_savings_bars_match_the_profile():
    torch.manual_seed(0)
    model = evsnn.EGRU(4, 6, threshold_init="constant", threshold=0.1)
    prof = metrics.profile(model, torch.randn(10, 2, 4))
    ax = plot.op_savings(prof)
    heights = [p.get_height() for p in ax.patches]
    assert heights == [prof.layers[0].dense_macs, prof.layers[0].event_ops]
    assert ax.get_yscale() == "log"
    act = plot.activity(prof)
    assert np.allclose(act.get_lines()[0].get_ydata(), prof.layers[0].event_fraction_per_step)
    ax_dict = plot.op_savings(prof.to_dict())
    assert [p.get_height() for p in ax_dict.patches] == heights
    assert _png(ax).std() > 0
    with pytest.raises(TypeError, match="op_savings expects"):
        plot.op_savings({"dense": 3})


def test_training_curves_panels_and_values():
    log = [
        {"epoch": 1, "loss": 1.0, "val_loss": 1.2, "accuracy": 0.3, "activity": 0.20},
        {"epoch": 2, "loss": 0.6, "val_loss": 0.9, "accuracy": 0.5, "activity": 0.12},
        {"epoch": 3, "loss": 0.4, "accuracy": 0.7, "activity": 0.08},
    ]
    fig = plot.training_curves(log)
    assert isinstance(fig, plt.Figure)
    axes = fig.axes
    assert [a.get_ylabel() for a in axes] == ["loss", "accuracy", "activity"]
    loss_lines = {line.get_label(): line for line in axes[0].get_lines()}
    assert np.allclose(loss_lines["loss"].get_ydata(), [1.0, 0.6, 0.4])
    assert np.allclose(loss_lines["val_loss"].get_ydata()[:2], [1.2, 0.9]) and np.isnan(
        loss_lines["val_loss"].get_ydata()[2]
    )
    assert np.allclose(axes[2].get_lines()[0].get_xdata(), [1, 2, 3])
    as_columns = plot.training_curves({"loss": [3.0, 2.0], "accuracy": [0.1, 0.2]})
    assert len(as_columns.axes) == 2
    _, ax = plt.subplots()
    same = plot.training_curves(log, ax=ax)
    assert same is ax.figure and len(ax.get_lines()) == 4
    assert _png(fig).std() > 0
    with pytest.raises(ValueError, match="no loss/accuracy/activity column"):
        plot.training_curves([{"epoch": 1, "lr": 0.1}])
    with pytest.raises(TypeError, match="list of per-epoch dicts"):
        plot.training_curves("loss.csv")
    with pytest.raises(ValueError, match="equal-length"):
        plot.training_curves({"loss": [1.0, 2.0], "accuracy": [0.1]})


def test_save_writes_png_and_closes(tmp_path):
    ax = plot.raster(_known_spikes())
    fig = ax.figure
    path = plot.save(ax, tmp_path / "raster.png")
    assert os.path.getsize(path) > 1000
    assert not plt.fignum_exists(fig.number)
    with pytest.raises(TypeError, match="Axes or Figure"):
        plot.save("figure", tmp_path / "x.png")


def test_import_is_lazy_and_headless_uses_agg():
    code = (
        "import sys, torch\n"
        "import evsnn, evsnn.plot, evsnn.metrics, evsnn.regularizers\n"
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported at import time'\n"
        "evsnn.plot.raster(torch.zeros(3, 2))\n"
        "import matplotlib\n"
        "print(matplotlib.get_backend())\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "MPLBACKEND")}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().lower() == "agg"
