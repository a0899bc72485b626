"""evsnn.plot: every plot renders headless, draws exactly the events it is given, and is fast."""

from __future__ import annotations

import io
import os
import re
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
    # drawn in percent, the unit of the axis label
    assert ax.get_ylabel() == "event fraction (%)"
    assert np.allclose(lines["alif"], 100 * net.alif.last_stats.event_fraction.numpy())
    assert np.allclose(lines["egru"], 100 * net.egru.last_stats.event_fraction.numpy())
    events = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0]])
    ax = plot.activity({"hand": events, "stats": net.alif.last_stats})
    ydata = {line.get_label(): line.get_ydata() for line in ax.get_lines()}
    assert np.allclose(ydata["hand"], [25.0, 75.0, 0.0])
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
    assert (
        sorted(int(seg[0][0]) for seg in marks.get_segments())
        == torch.nonzero(spikes[:, sample, unit]).flatten().tolist()
    )
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
    assert np.allclose(act.get_lines()[0].get_ydata(), 100 * np.asarray(prof.layers[0].event_fraction_per_step))
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
    # units on the axes; accuracy and activity given as fractions are drawn in percent
    assert [a.get_ylabel() for a in axes] == ["loss", "accuracy (%)", "event fraction (%)"]
    loss_lines = {line.get_label(): line for line in axes[0].get_lines()}
    assert np.allclose(loss_lines["loss"].get_ydata(), [1.0, 0.6, 0.4])
    # legend entries are words, not variable names
    assert np.allclose(loss_lines["val loss"].get_ydata()[:2], [1.2, 0.9]) and np.isnan(
        loss_lines["val loss"].get_ydata()[2]
    )
    assert np.allclose(axes[1].get_lines()[0].get_ydata(), [30.0, 50.0, 70.0])
    assert np.allclose(axes[2].get_lines()[0].get_ydata(), [20.0, 12.0, 8.0])
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
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().lower() == "agg"


# Leading bytes of each file format (PNG signature, PDF header, EPS DSC header, GIF header, MP4 box).
_MAGIC = {"png": b"\x89PNG\r\n\x1a\n", "pdf": b"%PDF-", "eps": b"%!PS-Adobe"}


@pytest.mark.parametrize("fmt", ["png", "pdf", "svg", "eps"])
def test_save_writes_each_format_by_suffix_and_by_argument(tmp_path, fmt):
    by_suffix = plot.save(plot.raster(_known_spikes()), tmp_path / f"raster.{fmt}")
    by_argument = plot.save(plot.raster(_known_spikes()), tmp_path / "raster_no_suffix", format=fmt)
    for path in (by_suffix, by_argument):
        head = open(path, "rb").read(512)
        if fmt == "svg":
            assert b"<svg" in head, head[:80]
        else:
            assert head.startswith(_MAGIC[fmt]), head[:16]


def test_save_dpi_sets_the_pixel_size(tmp_path):
    from PIL import Image

    low = plot.save(plot.raster(_known_spikes(), size=(2.0, 1.0)), tmp_path / "low.png", dpi=50)
    high = plot.save(plot.raster(_known_spikes(), size=(2.0, 1.0)), tmp_path / "high.png", dpi=300)
    assert Image.open(low).size == (100, 50)
    assert Image.open(high).size == (600, 300)


def test_save_refuses_unknown_or_contradicting_formats(tmp_path):
    with pytest.raises(ValueError, match="unsupported image format 'bmpx'"):
        plot.save(plot.raster(_known_spikes()), tmp_path / "x.bmpx")
    with pytest.raises(ValueError, match="format='pdf' does not match the suffix"):
        plot.save(plot.raster(_known_spikes()), tmp_path / "x.png", format="pdf")
    with pytest.raises(ValueError, match="dpi must be a number > 0"):
        plot.save(plot.raster(_known_spikes()), tmp_path / "x.png", dpi=0)


def _text_sizes(fig) -> list[float]:
    fig.canvas.draw()
    return [t.get_fontsize() for t in fig.findobj(matplotlib.text.Text) if t.get_text() and t.get_visible()]


def test_new_figures_are_one_column_wide_with_readable_text():
    s = _known_spikes()
    torch.manual_seed(0)
    layer = evsnn.ALIF(3, 4)
    x = torch.rand(12, 2, 3) * 4
    figures = [
        plot.raster(s).figure,
        plot.event_raster(torch.randn(12, 7) * (s[:, 0] > 0)).figure,
        plot.activity(s).figure,
        plot.traces(layer, x).figure,
        plot.training_curves(
            [{"epoch": 1, "loss": 1.0, "test_loss": 1.1}, {"epoch": 2, "loss": 0.5, "test_loss": 0.7}]
        ),
    ]
    for fig in figures:
        assert fig.get_size_inches()[0] == pytest.approx(3.5)
        sizes = _text_sizes(fig)
        assert sizes and min(sizes) >= 8.0, sizes
    assert plot.raster(s, size="page").figure.get_size_inches()[0] == pytest.approx(7.0)
    assert tuple(plot.raster(s, size=(5, 2)).figure.get_size_inches()) == pytest.approx((5.0, 2.0))
    with pytest.raises(ValueError, match="size must be one of"):
        plot.raster(s, size="poster")


def test_axis_labels_carry_units():
    s = _known_spikes()
    ax = plot.raster(s)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("time step", "unit")
    assert plot.activity(s).get_ylabel() == "event fraction (%)"
    torch.manual_seed(0)
    traced = plot.traces(evsnn.ALIF(3, 4), torch.rand(12, 2, 3) * 4)
    assert traced.get_xlabel() == "time step" and "(input units)" in traced.get_ylabel()
    fig = plot.training_curves([{"epoch": 1, "test_loss": 0.9, "test_accuracy": 0.5}])
    assert [a.get_ylabel() for a in fig.axes] == ["loss", "accuracy (%)"]
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["test loss"]


def test_raster_marker_size_marker_and_colour_are_honoured():
    s = _known_spikes()
    ax = plot.raster(s, s=10)
    (collection,) = ax.collections
    assert np.allclose(collection.get_sizes(), [10.0])
    ax = plot.raster(s, s=4.5, marker="|", color="tab:red")
    assert np.allclose(ax.collections[0].get_sizes(), [4.5])
    assert np.allclose(ax.collections[0].get_facecolor()[0], to_rgba("tab:red"))
    signed = plot.event_raster(torch.tensor([[0.5, -0.5]]), s=7, positive_color="green", negative_color="purple")
    pos, neg = signed.collections
    assert np.allclose(pos.get_sizes(), [7.0]) and np.allclose(neg.get_sizes(), [7.0])
    assert np.allclose(pos.get_facecolor()[0], to_rgba("green")) and np.allclose(
        neg.get_facecolor()[0], to_rgba("purple")
    )
    with pytest.raises(ValueError, match="marker area in points"):
        plot.raster(s, s=-1)


def _ink_fraction(ax) -> float:
    """Mean darkness (1 − grey level) strictly inside the axes, spines excluded: a cell half
    covered by an antialiased mark counts half."""
    fig = ax.figure
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(float) / 255.0
    box = ax.get_window_extent()
    height = image.shape[0]
    top, bottom = int(height - box.y1) + 3, int(height - box.y0) - 3
    left, right = int(box.x0) + 3, int(box.x1) - 3
    inside = image[top:bottom, left:right].mean(axis=-1)
    return float((1.0 - inside).mean())


@pytest.mark.parametrize("shape", [(200, 50), (60, 300), (40, 12)])
def test_raster_ink_matches_the_event_fraction(shape):
    # The inked share of the axes is the share of (step, unit) cells with an event, for long,
    # tall and small rasters alike. 15 % relative tolerance: cells are a few pixels wide at the
    # default 100 dpi, so antialiased cell edges and rounding of cell boundaries to pixels move
    # the measured darkness by up to ~1 pixel per cell edge.
    g = torch.Generator().manual_seed(4)
    spikes = (torch.rand(*shape, generator=g) < 0.28).float()
    fraction = float(spikes.mean())
    ink = _ink_fraction(plot.raster(spikes, size=(3.5, 2.6)))
    assert ink == pytest.approx(fraction, rel=0.15), (ink, fraction)


def _gif_frames(path) -> list[np.ndarray]:
    from PIL import Image, ImageSequence

    with Image.open(path) as image:
        return [np.asarray(frame.convert("RGB"), dtype=float) / 255.0 for frame in ImageSequence.Iterator(image)]


def test_animate_writes_one_gif_frame_per_step(tmp_path):
    spikes = torch.zeros(6, 2, 16)
    spikes[1, 0, 5] = 1.0
    spikes[3, 0, :] = 1.0
    path = plot.animate(spikes, tmp_path / "spikes.gif", sample=0, fps=5)
    assert open(path, "rb").read(6) == b"GIF89a"
    frames = _gif_frames(path)
    assert len(frames) == 6
    darkness = [float((f.mean(axis=-1) < 0.5).mean()) for f in frames]
    # an empty step, one spike, an empty step, all units spiking: ink follows the events
    assert darkness[1] > darkness[0] and darkness[3] > 4 * darkness[1]
    assert not os.listdir(tmp_path) == [] and all(not p.startswith(".evsnn-") for p in os.listdir(tmp_path))


def test_animate_draws_signed_deltas_red_and_blue(tmp_path):
    deltas = torch.zeros(2, 4)
    deltas[0] = torch.tensor([0.5, 0.5, 0.5, 0.5])
    deltas[1] = torch.tensor([-0.5, -0.5, -0.5, -0.5])
    frames = _gif_frames(plot.animate(deltas, tmp_path / "deltas.gif", shape=(2, 2)))
    red_minus_blue = [float((f[..., 0] - f[..., 2]).mean()) for f in frames]
    assert red_minus_blue[0] > 0.1 and red_minus_blue[1] < -0.1


def test_animate_refuses_what_it_cannot_write(tmp_path, monkeypatch):
    from matplotlib import animation

    with pytest.raises(ValueError, match=r"\.gif or \.mp4"):
        plot.animate(_known_spikes(), tmp_path / "x.avi")
    with pytest.raises(ValueError, match="shape \\(2, 2\\) has 4 cells for 7 units"):
        plot.animate(_known_spikes(), tmp_path / "x.gif", shape=(2, 2))
    monkeypatch.setattr(animation.writers, "is_available", lambda name: False)
    with pytest.raises(RuntimeError, match="needs ffmpeg"):
        plot.animate(_known_spikes(), tmp_path / "x.mp4")
    assert not os.listdir(tmp_path)


def test_animate_writes_an_mp4_with_ffmpeg(tmp_path):
    from matplotlib import animation

    if not animation.writers.is_available("ffmpeg"):
        pytest.skip("needs ffmpeg on the PATH")
    spikes = torch.zeros(5, 16)
    spikes[2] = 1.0
    path = plot.animate(spikes, tmp_path / "spikes.mp4", fps=5)
    assert open(path, "rb").read(8)[4:] == b"ftyp"  # an ISO base media (MP4) file
    assert os.listdir(tmp_path) == ["spikes.mp4"]
    # ffmpeg decodes it back: one video frame per step
    decoded = subprocess.run(
        [matplotlib.rcParams["animation.ffmpeg_path"], "-v", "error", "-stats", "-i", str(path), "-f", "null", "-"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert decoded.returncode == 0, decoded.stderr
    assert re.findall(r"frame=\s*(\d+)", decoded.stderr)[-1] == "5", decoded.stderr
