"""See the events: rasters, activity, neuron traces, operation savings and training curves.

Every function takes ``ax=None`` (a new figure is made when it is ``None``), works headless and
returns the :class:`matplotlib.axes.Axes` it drew on (:func:`training_curves` returns the
:class:`~matplotlib.figure.Figure`, since it may draw several panels). :func:`save` writes any of
them to a file and closes the figure.

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
]

# Signed deltas: increases red, decreases blue (distinct in colour and in lightness when printed).
POSITIVE_COLOR = "#d62728"
NEGATIVE_COLOR = "#1f77b4"
SPIKE_COLOR = "black"
# Graded events are coloured by value through this many levels of the colour map: one uniform
# collection per level renders ~6x faster in Agg than per-point colours.
_COLOR_LEVELS = 16


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


def _new_axes(ax: Axes | None, figsize: tuple[float, float]) -> Axes:
    if ax is not None:
        from matplotlib.axes import Axes as _Axes

        if not isinstance(ax, _Axes):
            raise TypeError(f"ax must be a matplotlib Axes or None, got {type(ax).__name__}")
        return ax
    _, new = _pyplot().subplots(figsize=figsize, layout="constrained")
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


def _marker_size(n_points: int) -> float:
    # Points² per marker: visible for a handful of events, not a solid block for 10⁵ of them.
    return float(np.clip(2000.0 / max(n_points, 1), 0.5, 16.0))


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
    color: str = SPIKE_COLOR,
    title: str | None = None,
) -> Axes:
    """Spike raster: one mark at ``(t, n)`` for every nonzero ``spikes[t, n]``.

    ``spikes`` is ``[T, N]`` or ``[T, B, N]`` (then sample ``sample`` is drawn); time on x,
    unit on y. All marks form a single rasterised collection, whose offsets are exactly the
    event coordinates.
    """
    t, n, _, shape = _events(spikes, "spikes", sample)
    ax = _new_axes(ax, (8.0, 4.0))
    ax.scatter(t, n, s=_marker_size(t.size), marker="s", linewidths=0, color=color, rasterized=True)
    _event_axes(ax, shape[0], shape[1], title)
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
) -> Axes:
    """Raster of graded events (EGRU outputs ``y``) or signed deltas (``DeltaTrace.delta_h``).

    ``y`` is ``[T, N]`` or ``[T, B, N]``; only nonzero entries are drawn. ``signed=None``
    decides from the data (signed when any entry is negative).

    - unsigned: events coloured by value through ``cmap`` (quantised to 16 levels, one
      collection each) with a colour bar;
    - signed: increases in :data:`POSITIVE_COLOR`, decreases in :data:`NEGATIVE_COLOR`, two
      collections labelled ``"Δ > 0"`` and ``"Δ < 0"`` (empty ones are still added so that the
      legend and the collection order are always the same).
    """
    if signed is not None and not isinstance(signed, bool):
        raise TypeError(f"signed must be a bool or None, got {type(signed).__name__}")
    t, n, vals, shape = _events(y, "y", sample)
    ax = _new_axes(ax, (8.0, 4.0))
    size = _marker_size(t.size)
    if signed is None:
        signed = bool((vals < 0).any())
    if signed:
        for mask, color, label in ((vals > 0, POSITIVE_COLOR, "Δ > 0"), (vals < 0, NEGATIVE_COLOR, "Δ < 0")):
            ax.scatter(t[mask], n[mask], s=size, marker="s", linewidths=0, color=color, label=label, rasterized=True)
        ax.legend(loc="upper right", markerscale=max(1.0, 4.0 / np.sqrt(size)), fontsize="small")
    else:
        plt = _pyplot()
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        lo, hi = (float(vals.min()), float(vals.max())) if vals.size else (0.0, 1.0)
        if hi <= lo:
            hi = lo + 1.0
        colormap = plt.get_cmap(cmap).resampled(_COLOR_LEVELS)
        level = np.minimum(((vals - lo) / (hi - lo) * _COLOR_LEVELS).astype(np.int64), _COLOR_LEVELS - 1)
        for k in np.unique(level):
            m = level == k
            ax.scatter(
                t[m], n[m], s=size, marker="s", linewidths=0, color=colormap(int(k)), rasterized=True
            )
        if colorbar:
            mappable = ScalarMappable(norm=Normalize(lo, hi), cmap=colormap)
            ax.figure.colorbar(mappable, ax=ax, label="event value")
    _event_axes(ax, shape[0], shape[1], title)
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
        found = [(name or type(m).__name__, m.last_stats) for name, m in source.named_modules()
                 if isinstance(getattr(m, "last_stats", None), LayerStats)]
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
) -> Axes:
    """Event fraction per step, one line per layer, over time.

    ``source`` may be a :class:`~evsnn.stats.LayerStats`, a ``[T]`` fraction, an event tensor
    ``[T, N]``/``[T, B, N]`` (fraction of nonzero entries per step), a
    :class:`~evsnn.metrics.Profile`, an ``nn.Module`` (every submodule's ``last_stats``), or a
    dict (name → one of those) or list of them.
    """
    items = _activity_sources(source)
    ax = _new_axes(ax, (8.0, 3.0))
    for name, item in items:
        frac = _fraction_series(item, name)
        ax.plot(np.arange(frac.size), frac, label=name, linewidth=1.0)
    ax.set_xlabel("time step")
    ax.set_ylabel("event fraction")
    ax.set_ylim(bottom=0.0)
    ax.legend(loc="upper right", fontsize="small")
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
) -> Axes:
    """One neuron's internal state over time, with its threshold and its events.

    - :class:`~evsnn.functional.ALIFTrace` (from :func:`~evsnn.functional.alif_scan`) with the
      spikes: membrane ``v_t``, adaptive threshold ``B_t = b0 + β b_t`` and a vertical mark at
      every spike (SPEC §2);
    - :class:`~evsnn.functional.EGRUTrace` (from :func:`~evsnn.functional.egru_scan`) with the
      event output ``y`` and ``threshold`` θ (a float or the ``[H]`` per-unit tensor): the
      internal state ``c_t`` compared with θ, θ as a line and a mark at every event (SPEC §3);
    - an ``ALIF``/``EGRU`` layer with ``events`` being its input ``x``: the reference scan is
      replayed on ``x`` (:func:`evsnn.metrics.reference_traces`) and drawn as above.

    Spike/event marks are one ``LineCollection`` with one segment per event.
    """
    if isinstance(trace, nn.Module):
        from .metrics import reference_traces

        recorded = reference_traces(trace, events if isinstance(events, Tensor) else torch.as_tensor(events))
        trace, events, threshold = recorded.trace, recorded.events, recorded.threshold
        if isinstance(trace, ALIFTrace):
            threshold = None
    ax = _new_axes(ax, (8.0, 3.0))
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
        ax.set_ylabel("potential")
    elif isinstance(trace, EGRUTrace):
        if threshold is None:
            raise ValueError("an EGRU trace needs threshold= (θ: a float or the layer's [H] threshold tensor)")
        c = _unit_series(trace.c_pre, "trace.c_pre", sample, unit)
        _check_steps(c, ev)
        theta = _to_numpy(threshold, "threshold") if isinstance(threshold, (Tensor, np.ndarray)) else np.asarray(
            float(threshold)
        )
        if theta.ndim == 1:
            theta = theta[_check_index("unit", unit, theta.size, "thresholds")]
        elif theta.ndim != 0:
            raise ValueError(f"threshold must be a float or a [H] tensor, got shape {tuple(theta.shape)}")
        ax.plot(steps, c, label="state c", linewidth=1.0)
        ax.axhline(float(theta), label="threshold θ", linestyle="--", color="tab:orange", linewidth=1.0)
        label, state = "events", c
        ax.set_ylabel("state")
    else:
        raise TypeError(
            f"traces expects an ALIFTrace, an EGRUTrace or an ALIF/EGRU layer, got {type(trace).__name__}"
        )
    lo, hi = float(np.min(state)), float(np.max(state))
    ax.vlines(t_events, lo, hi, colors=SPIKE_COLOR, linewidth=0.6, alpha=0.6, label=label)
    ax.set_xlabel("time step")
    ax.legend(loc="upper right", fontsize="small")
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


def op_savings(profile: Any, ax: Axes | None = None, *, log: bool = True, title: str | None = None) -> Axes:
    """Dense multiply-accumulates vs the event operations actually needed, per layer.

    Two bars per layer (dense, event), each annotated with the saving ``dense / event``.
    ``profile``: an :class:`evsnn.metrics.Profile`, its :meth:`~evsnn.metrics.Profile.to_dict`,
    or :class:`~evsnn.stats.LayerStats` / a list of them.
    """
    rows = _savings_rows(profile)
    if not rows:
        raise ValueError("op_savings got a profile with no layers")
    ax = _new_axes(ax, (max(4.0, 1.6 * len(rows) + 2.0), 3.5))
    x = np.arange(len(rows))
    dense = np.array([r[1] for r in rows])
    event = np.array([r[2] for r in rows])
    width = 0.38
    ax.bar(x - width / 2, dense, width, label="dense MACs", color="tab:gray")
    ax.bar(x + width / 2, event, width, label="event ops", color="tab:green")
    for xi, d, e in zip(x, dense, event):
        ratio = f"{d / e:.1f}×" if e > 0 else "∞×"
        ax.annotate(ratio, (xi + width / 2, max(e, 1.0)), ha="center", va="bottom", fontsize="small")
    ax.set_xticks(x, [r[0] for r in rows], rotation=20 if len(rows) > 3 else 0)
    if log and (dense > 0).all():
        ax.set_yscale("log")
    ax.set_ylabel("operations")
    ax.legend(fontsize="small")
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


def training_curves(log: Any, ax: Axes | None = None, *, title: str | None = None) -> Figure:
    """Loss, accuracy and activity over epochs from a run's log.

    ``log`` is a list of per-epoch dicts (``{"epoch": 1, "loss": ..., "accuracy": ...,
    "activity": ...}``; any key may be missing in some rows) or a dict of equal-length lists.
    Keys containing ``loss`` go to the loss panel (e.g. ``loss``, ``val_loss``), ``acc`` to
    accuracy, ``activity``/``event``/``rate``/``sparsity`` to activity; other keys are not drawn.
    The x axis is ``epoch`` when present, else the row index. With ``ax=None`` one panel per
    present group is made; with an ``ax`` everything is drawn on it. Returns the Figure.
    """
    cols = _log_columns(log)
    epochs = np.asarray(cols["epoch"], dtype=float) if "epoch" in cols else np.arange(len(next(iter(cols.values()))))
    groups: list[tuple[str, list[str]]] = []
    for panel, needles in _PANELS:
        keys = [k for k in cols if k != "epoch" and any(s in k.lower() for s in needles)
                and not any(k in g for _, g in groups)]
        if keys:
            groups.append((panel, keys))
    if not groups:
        raise ValueError(f"the training log has no loss/accuracy/activity column; it has {sorted(cols)}")
    if ax is None:
        fig, axes = _pyplot().subplots(
            1, len(groups), figsize=(4.0 * len(groups), 3.2), squeeze=False, layout="constrained"
        )
        targets = list(axes[0])
    else:
        targets = [_new_axes(ax, (0, 0))] * len(groups)
        fig = ax.figure
    for target, (panel, keys) in zip(targets, groups):
        for key in keys:
            values = np.asarray(cols[key], dtype=float)
            target.plot(epochs, values, marker="o", markersize=3, linewidth=1.2, label=key)
        target.set_xlabel("epoch")
        target.set_ylabel(panel if ax is None else "value")
        target.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    return fig


def save(obj: Any, path: str | os.PathLike, *, dpi: int = 120, close: bool = True) -> str:
    """Save an Axes' or a Figure's figure to ``path`` (format from the suffix) and close it.

    The image is rendered in memory and moved into place atomically (a unique temporary file
    next to ``path``, then ``os.replace``): a reader never sees half an image, and a failed
    write leaves no temporary file and names ``path``.
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
    buf = io.BytesIO()
    try:
        fig.savefig(buf, dpi=dpi, format=os.path.splitext(os.fspath(path))[1].lstrip(".") or None)
    finally:
        if close:
            _pyplot().close(fig)
    atomic_write(path, buf.getvalue())
    return os.fspath(path)
