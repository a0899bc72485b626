"""See the events: rasters, activity, neuron traces, operation savings and training curves.

Every function takes ``ax=None`` (a new figure is made when it is ``None``), works headless and
returns the `matplotlib.axes.Axes` it drew on (`training_curves` returns the
`Figure`, since it may draw several panels). `save` writes any of
them to a file (PNG, or PDF/SVG/EPS for a paper, at a chosen ``dpi``) and closes the figure;
`animate` writes events over time as a GIF or MP4.

New figures are sized for print: ``size="column"`` (the default, 3.5 in wide: one column of a
two-column paper), ``size="page"`` (7 in) or ``(width, height)`` in inches. Axis labels carry
their units; legend text is at least 8 pt.

matplotlib is imported only when a function here is called, so ``import evsnn`` works without
the ``viz`` extra. Without a display (and without ``MPLBACKEND``) the Agg backend is selected.

Events are drawn as one rasterised scatter collection per colour, never one artist per spike,
so a ``T = 10 000 × N = 1 000`` raster at 5 % activity renders in well under two seconds.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from .functional.alif import ALIFTrace
from .functional.egru import EGRUTrace
from .stats import LayerStats

if TYPE_CHECKING:  # pragma: no cover - typing only
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "POSITIVE_COLOR",
    "NEGATIVE_COLOR",
    "raster",
    "event_raster",
    "activity",
    "traces",
    "op_savings",
    "training_curves",
    "save",
    "animate",
    "SIZES",
]

# Signed deltas: increases red, decreases blue (distinct in colour and in lightness when printed).
POSITIVE_COLOR = "#d62728"
NEGATIVE_COLOR = "#1f77b4"
SPIKE_COLOR = "black"
# Graded events are coloured by value through this many levels of the colour map: one uniform
# collection per level renders ~6x faster in Agg than per-point colours.
_COLOR_LEVELS = 16
# Named figure sizes in inches: one column / the full text width of a two-column paper.
SIZES = {"column": (3.5, 2.6), "page": (7.0, 3.0)}
# Legend and annotation text: the smallest size that stays readable in print.
_SMALL_PT = 8.0
# Smallest marker side of an automatically sized raster (points): below this a single event
# disappears at print resolution.
_MIN_MARKER_PT = 0.35


def _pyplot():
    """Import pyplot on first use; choose Agg when there is no display and no explicit backend."""
    try:
        import matplotlib
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("evsnn.plot needs matplotlib: pip install 'evsnn[viz]'") from err
    if "matplotlib.pyplot" not in sys.modules and not os.environ.get("MPLBACKEND"):
        headless = sys.platform.startswith("linux") and not (
            os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
        )
        if headless:
            matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _figsize(size: str | tuple[float, float]) -> tuple[float, float]:
    """Inches for a named size (`SIZES`) or a ``(width, height)`` pair."""
    if isinstance(size, str):
        if size not in SIZES:
            raise ValueError(f"size must be one of {sorted(SIZES)} or (width, height) in inches, got {size!r}")
        return SIZES[size]
    if (
        isinstance(size, (tuple, list))
        and len(size) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in size)
    ):
        return float(size[0]), float(size[1])
    raise ValueError(f"size must be one of {sorted(SIZES)} or (width, height) in inches > 0, got {size!r}")


def _new_axes(ax: Axes | None, size: str | tuple[float, float]) -> Axes:
    if ax is not None:
        from matplotlib.axes import Axes as _Axes

        if not isinstance(ax, _Axes):
            raise TypeError(f"ax must be a matplotlib Axes or None, got {type(ax).__name__}")
        return ax
    _, new = _pyplot().subplots(figsize=_figsize(size), layout="constrained")
    return new


def _to_numpy(x: Any, name: str) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().cpu().float().numpy()
    if isinstance(x, np.ndarray):
        return x
    raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")


def _check_index(name: str, value: Any, size: int, axis_name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not 0 <= value < size:
        raise ValueError(f"{name}={value} is out of range for {size} {axis_name}")
    return int(value)


def _time_by_unit(x: Any, name: str, sample: int) -> np.ndarray:
    """``[T, N]`` as is, or sample ``sample`` of ``[T, B, N]``."""
    arr = _to_numpy(x, name)
    if arr.ndim == 2:
        return arr
    if arr.ndim == 3:
        return arr[:, _check_index("sample", sample, arr.shape[1], "samples"), :]
    raise ValueError(f"{name} must have shape [T, N] or [T, B, N], got {tuple(arr.shape)}")


def _events(x: Any, name: str, sample: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int]]:
    """``(t, n, values, (T, N))`` of the nonzero entries of ``[T, N]`` or sample ``sample`` of
    ``[T, B, N]``. Tensors are searched in torch (no dense float copy of a 10⁷-entry raster)."""
    if not isinstance(x, Tensor):
        arr = _time_by_unit(x, name, sample)
        t, n = np.nonzero(arr)
        return t, n, arr[t, n].astype(np.float64), arr.shape
    x = x.detach()
    if x.dim() == 3:
        x = x[:, _check_index("sample", sample, x.shape[1], "samples"), :]
    elif x.dim() != 2:
        raise ValueError(f"{name} must have shape [T, N] or [T, B, N], got {tuple(x.shape)}")
    idx = torch.nonzero(x)
    values = x[idx[:, 0], idx[:, 1]]
    return idx[:, 0].cpu().numpy(), idx[:, 1].cpu().numpy(), values.cpu().double().numpy(), tuple(x.shape)


def _cell_points(ax: Axes, steps: int, units: int) -> tuple[float, float]:
    """Width and height in points of one (time step, unit) cell of the raster drawn on ``ax``."""
    width_in, height_in = ax.figure.get_size_inches()
    box = ax.get_position()
    return 72.0 * width_in * box.width / max(steps, 1), 72.0 * height_in * box.height / max(units, 1)


def _event_marker(ax: Axes, steps: int, units: int, s: float | None, marker: Any) -> tuple[Any, float]:
    """Marker and its size (points²) for a raster of ``steps × units`` cells.

    By default each event is a rectangle the size of its cell, so the inked area is the event
    fraction whatever the shape of the raster (28 % activity looks 28 % black), with a floor of
    `_MIN_MARKER_PT` so that a lone event stays visible on a very long raster. An explicit
    ``s`` (points², as in ``matplotlib.pyplot.scatter``) or ``marker`` is used as given.
    """
    if s is not None:
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not s > 0:
            raise ValueError(f"s must be a marker area in points² > 0, got {s!r}")
    engine = ax.figure.get_layout_engine()
    if engine is not None:
        # Place the axes as the final figure will (labels, title, legend space) before measuring.
        engine.execute(ax.figure)
    cell_w, cell_h = (max(v, _MIN_MARKER_PT) for v in _cell_points(ax, steps, units))
    if marker is not None:
        return marker, float(s) if s is not None else min(cell_w, cell_h) ** 2
    from matplotlib.path import Path as _Path

    # A custom marker is scaled by its largest extent; sqrt(s) is then that extent in points.
    half_w, half_h = cell_w / 2, cell_h / 2
    cell = _Path(
        [(-half_w, -half_h), (half_w, -half_h), (half_w, half_h), (-half_w, half_h), (-half_w, -half_h)], closed=True
    )
    return cell, float(s) if s is not None else max(cell_w, cell_h) ** 2


def _event_axes(ax: Axes, steps: int, units: int, title: str | None) -> None:
    ax.set_xlim(-0.5, steps - 0.5)
    ax.set_ylim(-0.5, units - 0.5)
    ax.set_xlabel("time step")
    ax.set_ylabel("unit")
    if title:
        ax.set_title(title)


def raster(
    spikes: Tensor | np.ndarray,
    ax: Axes | None = None,
    *,
    sample: int = 0,
    color: Any = SPIKE_COLOR,
    s: float | None = None,
    marker: Any = None,
    title: str | None = None,
    size: str | tuple[float, float] = "column",
    rasterized: bool = True,
) -> Axes:
    """Spike raster: one mark at ``(t, n)`` for every nonzero ``spikes[t, n]``.

    ``spikes`` is ``[T, N]`` or ``[T, B, N]`` (then sample ``sample`` is drawn); time on x,
    unit on y. All marks form a single collection, whose offsets are exactly the event
    coordinates.

    Args:
        spikes: events ``[T, N]`` or ``[T, B, N]``; nonzero entries are drawn.
        ax: axes to draw on; a new figure of ``size`` when ``None``.
        sample: which sample of a ``[T, B, N]`` input.
        color: any matplotlib colour for the marks.
        s: marker area in points² (as ``pyplot.scatter``); by default each mark fills its
            (step, unit) cell, so the inked fraction is the event fraction.
        marker: any matplotlib marker (``"|"``, ``"o"`` ...); by default a filled cell.
        title: axes title.
        size: ``"column"`` (3.5 in wide), ``"page"`` (7 in) or ``(width, height)`` in inches.
        rasterized: draw the marks as an image inside vector files (PDF/SVG), which keeps a
            raster of 10⁶ events small; ``False`` writes one vector mark per event.

    Returns:
        The axes drawn on.
    """
    t, n, _, shape = _events(spikes, "spikes", sample)
    ax = _new_axes(ax, size)
    _event_axes(ax, shape[0], shape[1], title)
    shape_marker, area = _event_marker(ax, shape[0], shape[1], s, marker)
    # snap=False: Agg would round cells thinner than a pixel to nothing.
    ax.scatter(t, n, s=area, marker=shape_marker, linewidths=0, color=color, rasterized=rasterized, snap=False)
    return ax


def event_raster(
    y: Tensor | np.ndarray,
    ax: Axes | None = None,
    *,
    sample: int = 0,
    signed: bool | None = None,
    cmap: str = "viridis",
    colorbar: bool = True,
    title: str | None = None,
    s: float | None = None,
    marker: Any = None,
    positive_color: Any = POSITIVE_COLOR,
    negative_color: Any = NEGATIVE_COLOR,
    size: str | tuple[float, float] = "column",
    rasterized: bool = True,
) -> Axes:
    """Raster of graded events (EGRU outputs ``y``) or signed deltas (``DeltaTrace.delta_h``).

    ``y`` is ``[T, N]`` or ``[T, B, N]``; only nonzero entries are drawn. ``signed=None``
    decides from the data (signed when any entry is negative).

    - unsigned: events coloured by value through ``cmap`` (quantised to 16 levels, one
      collection each) with a colour bar;
    - signed: increases in `POSITIVE_COLOR`, decreases in `NEGATIVE_COLOR`, two
      collections labelled ``"Δ > 0"`` and ``"Δ < 0"`` (empty ones are still added so that the
      legend and the collection order are always the same).

    ``s``, ``marker``, ``size`` and ``rasterized`` act as in `raster`; ``positive_color``
    and ``negative_color`` colour signed deltas.
    """
    if signed is not None and not isinstance(signed, bool):
        raise TypeError(f"signed must be a bool or None, got {type(signed).__name__}")
    t, n, vals, shape = _events(y, "y", sample)
    ax = _new_axes(ax, size)
    _event_axes(ax, shape[0], shape[1], title)
    if signed is None:
        signed = bool((vals < 0).any())
    if signed:
        shape_marker, area = _event_marker(ax, shape[0], shape[1], s, marker)
        for mask, color, label in ((vals > 0, positive_color, "Δ > 0"), (vals < 0, negative_color, "Δ < 0")):
            ax.scatter(
                t[mask],
                n[mask],
                s=area,
                marker=shape_marker,
                linewidths=0,
                color=color,
                label=label,
                rasterized=rasterized,
                snap=False,
            )
        ax.legend(loc="upper right", markerscale=max(1.0, 4.0 / np.sqrt(area)), fontsize=_SMALL_PT)
    else:
        plt = _pyplot()
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        lo, hi = (float(vals.min()), float(vals.max())) if vals.size else (0.0, 1.0)
        if hi <= lo:
            hi = lo + 1.0
        colormap = plt.get_cmap(cmap).resampled(_COLOR_LEVELS)
        if colorbar:
            # Before the marker size is chosen: the colour bar takes width from the axes.
            mappable = ScalarMappable(norm=Normalize(lo, hi), cmap=colormap)
            ax.figure.colorbar(mappable, ax=ax, label="event value")
        shape_marker, area = _event_marker(ax, shape[0], shape[1], s, marker)
        level = np.minimum(((vals - lo) / (hi - lo) * _COLOR_LEVELS).astype(np.int64), _COLOR_LEVELS - 1)
        for k in np.unique(level):
            m = level == k
            ax.scatter(
                t[m],
                n[m],
                s=area,
                marker=shape_marker,
                linewidths=0,
                color=colormap(int(k)),
                rasterized=rasterized,
                snap=False,
            )
    return ax


def _fraction_series(source: Any, name: str) -> np.ndarray:
    """Event fraction per step from a LayerStats, a ``[T]`` fraction or an event tensor."""
    if isinstance(source, LayerStats):
        return _to_numpy(source.event_fraction, name)
    arr = _to_numpy(source, name)
    if arr.ndim == 1:
        return arr
    if arr.ndim in (2, 3):
        return (arr != 0).reshape(arr.shape[0], -1).mean(axis=1)
    raise ValueError(f"{name} must be a LayerStats, a [T] fraction or events [T, N] / [T, B, N], got {arr.shape}")


def _activity_sources(source: Any) -> list[tuple[str, Any]]:
    from .metrics import Profile

    if isinstance(source, Profile):
        return [(layer.name, np.asarray(layer.event_fraction_per_step)) for layer in source.layers]
    if isinstance(source, LayerStats):
        return [(source.layer, source)]
    if isinstance(source, (Tensor, np.ndarray)):
        return [("events", source)]
    if isinstance(source, nn.Module):
        found = [
            (name or type(m).__name__, m.last_stats)
            for name, m in source.named_modules()
            if isinstance(getattr(m, "last_stats", None), LayerStats)
        ]
        if not found:
            raise ValueError(
                f"{type(source).__name__} holds no layer with last_stats; run a forward pass with record_stats=True first"
            )
        return found
    if isinstance(source, Mapping):
        return [(str(k), v) for k, v in source.items()]
    if isinstance(source, Sequence) and not isinstance(source, str):
        return [(s.layer if isinstance(s, LayerStats) else f"layer {i}", s) for i, s in enumerate(source)]
    raise TypeError(
        "activity expects LayerStats, a tensor, a Profile, an nn.Module with last_stats, or a dict/list of "
        f"LayerStats/tensors, got {type(source).__name__}"
    )


def activity(
    source: Any,
    ax: Axes | None = None,
    *,
    title: str | None = None,
    size: str | tuple[float, float] = "column",
) -> Axes:
    """Event fraction per step in percent, one line per layer, over time.

    ``source`` may be a [`LayerStats`][evsnn.stats.LayerStats], a ``[T]`` fraction, an event tensor
    ``[T, N]``/``[T, B, N]`` (fraction of nonzero entries per step), a
    [`Profile`][evsnn.metrics.Profile], an ``nn.Module`` (every submodule's ``last_stats``), or a
    dict (name → one of those) or list of them. ``size`` as in `raster`.
    """
    items = _activity_sources(source)
    ax = _new_axes(ax, size)
    for name, item in items:
        frac = _fraction_series(item, name)
        ax.plot(np.arange(frac.size), 100.0 * frac, label=name, linewidth=1.0)
    ax.set_xlabel("time step")
    ax.set_ylabel("event fraction (%)")
    ax.set_ylim(bottom=0.0)
    ax.legend(loc="upper right", fontsize=_SMALL_PT)
    if title:
        ax.set_title(title)
    return ax


def _unit_series(x: Any, name: str, sample: int, unit: int) -> np.ndarray:
    arr = _time_by_unit(x, name, sample)
    return arr[:, _check_index("unit", unit, arr.shape[1], "units")]


def traces(
    trace: ALIFTrace | EGRUTrace | nn.Module,
    events: Tensor | np.ndarray,
    ax: Axes | None = None,
    *,
    threshold: Tensor | float | None = None,
    unit: int = 0,
    sample: int = 0,
    title: str | None = None,
    size: str | tuple[float, float] = "column",
) -> Axes:
    """One neuron's internal state over time, with its threshold and its events.

    - [`ALIFTrace`][evsnn.functional.ALIFTrace] (from [`alif_scan`][evsnn.functional.alif_scan]) with the
      spikes: membrane ``v_t``, adaptive threshold ``B_t = b0 + β b_t`` and a vertical mark at
      every spike (SPEC §2);
    - [`EGRUTrace`][evsnn.functional.EGRUTrace] (from [`egru_scan`][evsnn.functional.egru_scan]) with the
      event output ``y`` and ``threshold`` θ (a float or the ``[H]`` per-unit tensor): the
      internal state ``c_t`` compared with θ, θ as a line and a mark at every event (SPEC §3);
    - an ``ALIF``/``EGRU`` layer with ``events`` being its input ``x``: the reference scan is
      replayed on ``x`` ([`evsnn.metrics.reference_traces`][evsnn.metrics.reference_traces]) and drawn as above.

    Spike/event marks are one ``LineCollection`` with one segment per event. ``size`` as in
    `raster`.
    """
    if isinstance(trace, nn.Module):
        from .metrics import reference_traces

        recorded = reference_traces(trace, events if isinstance(events, Tensor) else torch.as_tensor(events))
        trace, events, threshold = recorded.trace, recorded.events, recorded.threshold
        if isinstance(trace, ALIFTrace):
            threshold = None
    ax = _new_axes(ax, size)
    ev = _unit_series(events, "events", sample, unit)
    t_events = np.nonzero(ev)[0]
    steps = np.arange(ev.size)
    if isinstance(trace, ALIFTrace):
        if threshold is not None:
            raise ValueError("an ALIF trace carries its own adaptive threshold; do not pass threshold=")
        v = _unit_series(trace.v, "trace.v", sample, unit)
        b = _unit_series(trace.threshold, "trace.threshold", sample, unit)
        _check_steps(v, ev)
        ax.plot(steps, v, label="membrane v", linewidth=1.0)
        ax.plot(steps, b, label="threshold B", linestyle="--", linewidth=1.0)
        label, state = "spikes", v
        ax.set_ylabel("membrane potential (input units)")
    elif isinstance(trace, EGRUTrace):
        if threshold is None:
            raise ValueError("an EGRU trace needs threshold= (θ: a float or the layer's [H] threshold tensor)")
        c = _unit_series(trace.c_pre, "trace.c_pre", sample, unit)
        _check_steps(c, ev)
        theta = (
            _to_numpy(threshold, "threshold")
            if isinstance(threshold, (Tensor, np.ndarray))
            else np.asarray(float(threshold))
        )
        if theta.ndim == 1:
            theta = theta[_check_index("unit", unit, theta.size, "thresholds")]
        elif theta.ndim != 0:
            raise ValueError(f"threshold must be a float or a [H] tensor, got shape {tuple(theta.shape)}")
        ax.plot(steps, c, label="state c", linewidth=1.0)
        ax.axhline(float(theta), label="threshold θ", linestyle="--", color="tab:orange", linewidth=1.0)
        label, state = "events", c
        ax.set_ylabel("internal state c")
    else:
        raise TypeError(f"traces expects an ALIFTrace, an EGRUTrace or an ALIF/EGRU layer, got {type(trace).__name__}")
    lo, hi = float(np.min(state)), float(np.max(state))
    ax.vlines(t_events, lo, hi, colors=SPIKE_COLOR, linewidth=0.6, alpha=0.6, label=label)
    ax.set_xlabel("time step")
    ax.legend(loc="upper right", fontsize=_SMALL_PT)
    if title:
        ax.set_title(title)
    return ax


def _check_steps(state: np.ndarray, events: np.ndarray) -> None:
    if state.shape != events.shape:
        raise ValueError(f"trace has {state.shape[0]} steps but events have {events.shape[0]}")


def _savings_rows(profile: Any) -> list[tuple[str, float, float]]:
    from .metrics import Profile

    if isinstance(profile, Profile):
        return [(p.name, float(p.dense_macs), float(p.event_ops)) for p in profile.layers]
    if isinstance(profile, LayerStats):
        profile = [profile]
    if isinstance(profile, Mapping) and "layers" in profile:
        return [(str(p["name"]), float(p["dense_macs"]), float(p["event_ops"])) for p in profile["layers"]]
    if isinstance(profile, Sequence) and all(isinstance(s, LayerStats) for s in profile):
        return [(s.layer, float(s.dense_macs), float(s.event_ops)) for s in profile]
    raise TypeError(
        "op_savings expects an evsnn.metrics.Profile, its to_dict(), or LayerStats / a list of them, "
        f"got {type(profile).__name__}"
    )


def op_savings(
    profile: Any,
    ax: Axes | None = None,
    *,
    log: bool = True,
    title: str | None = None,
    size: str | tuple[float, float] = "column",
) -> Axes:
    """Dense multiply-accumulates vs the event operations actually needed, per layer.

    Two bars per layer (dense, event), each annotated with the saving ``dense / event``.
    ``profile``: an [`evsnn.metrics.Profile`][evsnn.metrics.Profile], its [`to_dict`][evsnn.metrics.Profile.to_dict],
    or [`LayerStats`][evsnn.stats.LayerStats] / a list of them. ``size`` as in `raster`.
    """
    rows = _savings_rows(profile)
    if not rows:
        raise ValueError("op_savings got a profile with no layers")
    ax = _new_axes(ax, size)
    x = np.arange(len(rows))
    dense = np.array([r[1] for r in rows])
    event = np.array([r[2] for r in rows])
    width = 0.38
    ax.bar(x - width / 2, dense, width, label="dense MACs", color="tab:gray")
    ax.bar(x + width / 2, event, width, label="event ops", color="tab:green")
    for xi, d, e in zip(x, dense, event):
        ratio = f"{d / e:.1f}×" if e > 0 else "∞×"
        ax.annotate(ratio, (xi + width / 2, max(e, 1.0)), ha="center", va="bottom", fontsize=_SMALL_PT)
    ax.set_xticks(x, [r[0] for r in rows], rotation=20 if len(rows) > 3 else 0)
    if log and (dense > 0).all():
        ax.set_yscale("log")
    ax.set_ylabel("operations per forward pass")
    ax.legend(fontsize=_SMALL_PT)
    if title:
        ax.set_title(title)
    return ax


_PANELS = (("loss", ("loss",)), ("accuracy", ("acc",)), ("activity", ("activity", "event", "rate", "sparsity")))


def _log_columns(log: Any) -> dict[str, list[float]]:
    """Columns of a training log: a list of per-epoch dicts or a dict of equal-length lists."""
    if isinstance(log, Mapping):
        cols = {str(k): list(v) for k, v in log.items()}
        lengths = {len(v) for v in cols.values()}
        if len(lengths) > 1:
            raise ValueError(f"a dict log must hold equal-length lists, got lengths {sorted(lengths)}")
    elif isinstance(log, Sequence) and not isinstance(log, str):
        if not all(isinstance(row, Mapping) for row in log):
            raise TypeError("a list log must hold one dict per epoch, e.g. {'epoch': 1, 'loss': 0.5}")
        keys: list[str] = []
        for row in log:
            keys.extend(k for k in row if k not in keys)
        cols = {k: [row.get(k, float("nan")) for row in log] for k in keys}
    else:
        raise TypeError(f"log must be a list of per-epoch dicts or a dict of lists, got {type(log).__name__}")
    if not cols or not next(iter(cols.values()), []):
        raise ValueError("the training log is empty")
    return cols


def _panel_label(panel: str, keys: list[str]) -> str:
    if panel == "accuracy":
        return "accuracy (%)"
    if panel == "activity":
        return "activity (%)" if any("sparsity" in k.lower() for k in keys) else "event fraction (%)"
    return panel


def _as_percent(values: np.ndarray) -> np.ndarray:
    """Fractions in [0, 1] as percent; values already past 1 are taken to be percent."""
    finite = values[np.isfinite(values)]
    if finite.size and finite.min() >= 0.0 and finite.max() <= 1.0:
        return 100.0 * values
    return values


def training_curves(
    log: Any,
    ax: Axes | None = None,
    *,
    title: str | None = None,
    size: str | tuple[float, float] = "column",
) -> Figure:
    """Loss, accuracy and activity over epochs from a run's log.

    ``log`` is a list of per-epoch dicts (``{"epoch": 1, "loss": ..., "accuracy": ...,
    "activity": ...}``; any key may be missing in some rows) or a dict of equal-length lists.
    Keys containing ``loss`` go to the loss panel (e.g. ``loss``, ``test_loss``), ``acc`` to
    accuracy, ``activity``/``event``/``rate``/``sparsity`` to activity; other keys are not drawn.
    Accuracy and activity are drawn in percent (a column whose values all lie in [0, 1] is read
    as fractions and multiplied by 100). Legend entries are the keys in words (``test_loss`` →
    "test loss"). The x axis is ``epoch`` when present, else the row index. With ``ax=None`` one
    panel per present group is made, stacked for ``size="column"`` (3.5 in wide) and side by side
    for ``"page"`` or a ``(width, height)`` in inches; with an ``ax`` everything is drawn on it.
    Returns the Figure.
    """
    cols = _log_columns(log)
    epochs = np.asarray(cols["epoch"], dtype=float) if "epoch" in cols else np.arange(len(next(iter(cols.values()))))
    groups: list[tuple[str, list[str]]] = []
    for panel, needles in _PANELS:
        keys = [
            k
            for k in cols
            if k != "epoch" and any(s in k.lower() for s in needles) and not any(k in g for _, g in groups)
        ]
        if keys:
            groups.append((panel, keys))
    if not groups:
        raise ValueError(f"the training log has no loss/accuracy/activity column; it has {sorted(cols)}")
    if ax is None:
        width, height = _figsize(size)
        stacked = size == "column"
        rows, columns = (len(groups), 1) if stacked else (1, len(groups))
        figsize = (width, 1.8 * len(groups)) if stacked else (width, height)
        fig, axes = _pyplot().subplots(
            rows, columns, figsize=figsize, squeeze=False, layout="constrained", sharex=stacked
        )
        targets = list(axes.flat)
    else:
        targets = [_new_axes(ax, size)] * len(groups)
        fig = ax.figure
    for target, (panel, keys) in zip(targets, groups):
        for key in keys:
            values = np.asarray(cols[key], dtype=float)
            if panel != "loss":
                values = _as_percent(values)
            target.plot(epochs, values, marker="o", markersize=3, linewidth=1.2, label=key.replace("_", " "))
        target.set_xlabel("epoch")
        target.legend(fontsize=_SMALL_PT)
        if ax is None:
            target.set_ylabel(_panel_label(panel, keys))
    if ax is not None:
        ax.set_ylabel(", ".join(_panel_label(panel, keys) for panel, keys in groups))
    if title:
        fig.suptitle(title)
    return fig


_VECTOR_FORMATS = ("pdf", "svg", "eps", "ps")


def save(
    obj: Any,
    path: str | os.PathLike,
    *,
    format: str | None = None,
    dpi: int = 120,
    close: bool = True,
) -> str:
    """Save an Axes' or a Figure's figure to ``path`` and close it.

    The image is rendered in memory and moved into place atomically (a unique temporary file
    next to ``path``, then ``os.replace``): a reader never sees half an image, and a failed
    write leaves no temporary file and names ``path``.

    Args:
        obj: the Axes or Figure returned by a function of this module (or any matplotlib one).
        path: the file to write.
        format: ``"png"``, ``"pdf"``, ``"svg"``, ``"eps"`` ... (any format of matplotlib's
            ``savefig``); by default the suffix of ``path``. Vector formats keep text and lines
            as vectors; the event marks of a raster are embedded as an image at ``dpi`` unless it
            was drawn with ``rasterized=False``.
        dpi: resolution in dots per inch of PNG output and of the images inside vector output
            (300 for print).
        close: close the figure after writing.

    Returns:
        ``path`` as a string.
    """
    from matplotlib.axes import Axes as _Axes
    from matplotlib.figure import Figure as _Figure

    from .atomic import atomic_write

    if isinstance(obj, _Axes):
        fig = obj.figure
    elif isinstance(obj, _Figure):
        fig = obj
    else:
        raise TypeError(f"save expects a matplotlib Axes or Figure, got {type(obj).__name__}")
    if isinstance(dpi, bool) or not isinstance(dpi, (int, float)) or not dpi > 0:
        raise ValueError(f"dpi must be a number > 0, got {dpi!r}")
    suffix = os.path.splitext(os.fspath(path))[1].lstrip(".").lower() or None
    fmt = format.lower() if isinstance(format, str) else format
    if fmt is not None and not isinstance(fmt, str):
        raise TypeError(f"format must be a string such as 'png', 'pdf' or 'svg', got {type(format).__name__}")
    supported = fig.canvas.get_supported_filetypes()
    if fmt is None:
        fmt = suffix
    elif suffix is not None and suffix != fmt:
        raise ValueError(f"format={fmt!r} does not match the suffix of {os.fspath(path)!r}")
    if fmt is not None and fmt not in supported:
        raise ValueError(
            f"unsupported image format {fmt!r} for {os.fspath(path)!r}; expected one of {sorted(supported)}"
        )
    buf = io.BytesIO()
    try:
        fig.savefig(buf, dpi=dpi, format=fmt)
    finally:
        if close:
            _pyplot().close(fig)
    atomic_write(path, buf.getvalue())
    return os.fspath(path)


def _frame_grid(units: int, shape: tuple[int, int] | None) -> tuple[int, int]:
    if shape is None:
        rows = int(np.ceil(np.sqrt(units)))
        return rows, int(np.ceil(units / rows))
    if (
        not isinstance(shape, (tuple, list))
        or len(shape) != 2
        or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in shape)
    ):
        raise ValueError(f"shape must be (rows, columns) of positive ints, got {shape!r}")
    if shape[0] * shape[1] < units:
        raise ValueError(f"shape {tuple(shape)} has {shape[0] * shape[1]} cells for {units} units")
    return int(shape[0]), int(shape[1])


def animate(
    events: Tensor | np.ndarray,
    path: str | os.PathLike,
    *,
    sample: int = 0,
    shape: tuple[int, int] | None = None,
    fps: float = 10.0,
    cmap: str | None = None,
    signed: bool | None = None,
    title: str | None = None,
    size: str | tuple[float, float] = (2.5, 2.5),
    dpi: int = 100,
) -> str:
    """Write events over time as an animation: one frame per time step, one pixel per unit.

    The counterpart of snntorch's ``spikeplot.animator`` for spikes, EGRU events and deltas:
    frame ``t`` shows ``events[t]`` (of sample ``sample``) laid out as a ``shape`` image, e.g.
    ``(28, 28)`` for an input of MNIST pixels; by default the units fill a near-square grid row by
    row, unused cells left blank. Colours: spikes black on white; graded events through
    ``viridis``; signed deltas (``signed=None`` decides from the data) through ``RdBu_r``
    centred on zero, increases red.

    Args:
        events: ``[T, N]`` or ``[T, B, N]``.
        path: ``.gif`` (Pillow) or ``.mp4`` (needs ``ffmpeg`` on the ``PATH``).
        sample: which sample of a ``[T, B, N]`` input.
        shape: ``(rows, columns)`` of a frame, at least ``N`` cells.
        fps: frames (time steps) per second.
        cmap: a matplotlib colour map instead of the default.
        signed: draw negative values as decreases (``None``: when any value is negative).
        title: text above the frame, followed by the time step.
        size: ``"column"``, ``"page"`` or ``(width, height)`` in inches.
        dpi: resolution of the frames.

    Returns:
        ``path`` as a string. The file is written next to ``path`` and moved into place.
    """
    plt = _pyplot()
    from matplotlib import animation

    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not fps > 0:
        raise ValueError(f"fps must be a number > 0, got {fps!r}")
    target = os.fspath(path)
    suffix = os.path.splitext(target)[1].lower()
    if suffix == ".gif":
        writer: Any = animation.PillowWriter(fps=fps)
    elif suffix == ".mp4":
        if not animation.writers.is_available("ffmpeg"):
            raise RuntimeError(f"writing {target!r} needs ffmpeg on the PATH; install it or write a .gif instead")
        writer = animation.FFMpegWriter(fps=fps)
    else:
        raise ValueError(f"animate writes .gif or .mp4 files, got {target!r}")
    frames = _time_by_unit(events, "events", sample).astype(np.float64)
    steps, units = frames.shape
    if steps == 0:
        raise ValueError("events has no time steps to animate")
    rows, columns = _frame_grid(units, shape)
    grid = np.full((steps, rows * columns), np.nan)
    grid[:, :units] = frames
    grid = grid.reshape(steps, rows, columns)
    finite = frames[np.isfinite(frames)]
    if signed is None:
        signed = bool(finite.size and finite.min() < 0)
    binary = finite.size == 0 or bool(np.isin(finite, (0.0, 1.0)).all())
    if signed:
        peak = float(np.abs(finite).max()) if finite.size else 1.0
        norm = {"vmin": -(peak or 1.0), "vmax": peak or 1.0}
        colormap = cmap or "RdBu_r"
    elif binary:
        norm, colormap = {"vmin": 0.0, "vmax": 1.0}, cmap or "gray_r"
    else:
        norm, colormap = {"vmin": 0.0, "vmax": float(finite.max()) or 1.0}, cmap or "viridis"
    fig, ax = plt.subplots(figsize=_figsize(size), layout="constrained")
    image = ax.imshow(grid[0], cmap=colormap, interpolation="nearest", **norm)
    ax.set_xticks([])
    ax.set_yticks([])
    label = ax.set_title("")

    def draw(t: int):
        image.set_data(grid[t])
        label.set_text(f"{title + ', ' if title else ''}time step {t}")
        return image, label

    directory = os.path.dirname(os.path.abspath(target))
    import tempfile

    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".evsnn-", suffix=suffix)
    os.close(handle)
    try:
        movie = animation.FuncAnimation(fig, draw, frames=steps, blit=False)
        movie.save(temporary, writer=writer, dpi=dpi)
        os.replace(temporary, target)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    finally:
        plt.close(fig)
    return target
