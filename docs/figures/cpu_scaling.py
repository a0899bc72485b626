"""Draw docs/img/cpu_scaling.png (or .svg/.pdf) from the points ``benchmarks/cpu_scaling.py --json``
wrote (default ``docs/data/cpu_scaling_training.json`` and ``cpu_scaling_streaming.json``); nothing is measured here. Run from the repository root:
``python docs/figures/cpu_scaling.py [--json FILE ...] [--format png|svg|pdf]``.

Two rows (time against activity at one hidden size; time against hidden size at one activity),
one column per mode (training, ``Stream.chunk``, ``Stream.step``); each curve is evsnn's time as a
multiple of ``nn.GRU``'s (``nn.LSTM``'s for the DeltaLSTM) timed in the same process, with the
range of the repeats shaded. Below the dotted line at 1, evsnn is faster.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402

DOCS = Path(__file__).resolve().parent.parent
LABELS = {"egru": "EGRU", "delta_gru": "DeltaGRU", "delta_lstm": "DeltaLSTM (÷ nn.LSTM)"}
PLAIN = FuncFormatter(lambda value, _: f"{value:g}" if f"{value:.0e}"[0] in "125" else "")
TITLES = {"training": "training (B = 32, T = 100)", "chunk": "Stream.chunk (B = 1)", "step": "Stream.step (B = 1)"}


def figure(record: dict) -> plt.Figure:
    points = record["points"]
    modes = [m for m in ("training", "chunk", "step") if any(p["mode"] == m for p in points)]
    fig, axes = plt.subplots(2, len(modes), figsize=(2.5 * len(modes), 4.6), layout="constrained", squeeze=False)
    for col, mode in enumerate(modes):
        for row, sweep in enumerate(("activity", "hidden")):
            ax = axes[row][col]
            for family, label in LABELS.items():
                mine = [p for p in points if p["mode"] == mode and p["family"] == family]
                if sweep == "activity":
                    hidden = max((p["hidden"] for p in mine if p["sweep"] == "activity"), default=None)
                    mine = sorted((p for p in mine if p["hidden"] == hidden), key=lambda p: p["target_activity"])
                    xs = [100 * p["activity"] for p in mine]
                else:
                    target = min((p["target_activity"] for p in mine if p["sweep"] == "hidden"), default=None)
                    mine = sorted((p for p in mine if p["target_activity"] == target), key=lambda p: p["hidden"])
                    xs = [p["hidden"] for p in mine]
                if not mine:
                    continue
                (line,) = ax.plot(xs, [p["ratio"] for p in mine], marker="o", markersize=3, label=label)
                ax.fill_between(
                    xs,
                    [p["ratio_min"] for p in mine],
                    [p["ratio_max"] for p in mine],
                    color=line.get_color(),
                    alpha=0.15,
                )
            ax.axhline(1.0, color="gray", linestyle=":", linewidth=0.8)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ticks = sorted({p["hidden"] for p in points}) if sweep == "hidden" else [1, 2, 5, 10, 20, 50]
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.yaxis.set_major_formatter(PLAIN)
            ax.yaxis.set_minor_formatter(PLAIN)
            ax.set_ylabel("time ÷ nn.GRU's (×)")
            if sweep == "activity":
                ax.set_xlabel("activity (% of units or delta slots)")
                ax.set_title(TITLES[mode])
            else:
                ax.set_xlabel("hidden size H (units)")
    axes[0][0].legend(loc="best")
    fig.suptitle(
        f"CPU, {record['threads']} thread(s), {record['machine']}, {record['date']}, load {record['load'][0]:.1f}–"
        f"{record['load'][1]:.1f}",
        fontsize=8,
    )
    return fig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--json",
        nargs="+",
        default=[str(DOCS / "data" / f"cpu_scaling_{part}.json") for part in ("training", "streaming")],
        help="one or more files, drawn together",
    )
    parser.add_argument("--format", default="png", choices=("png", "svg", "pdf"))
    parser.add_argument("--dpi", type=int, default=150)
    args = parser.parse_args()
    plt.rcParams.update({"font.size": 8, "axes.titlesize": 8, "legend.fontsize": 7})
    records = [json.loads(Path(name).read_text()) for name in args.json]
    record = dict(records[0])
    record["points"] = [p for r in records for p in r["points"]]
    record["load"] = [min(r["load"][0] for r in records), max(r["load"][1] for r in records)]
    fig = figure(record)
    out = DOCS / "img" / f"cpu_scaling.{args.format}"
    fig.savefig(out, dpi=args.dpi)
    print(out)


if __name__ == "__main__":
    main()
