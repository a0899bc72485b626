"""JapaneseVowels: GRU vs EGRU vs DeltaGRU vs ALIF at the same width (docs/reproductions.md).

    OMP_NUM_THREADS=1 python examples/reproduce_vowels.py --part baseline --seeds 0 1 2 --json runs/vowels_base.json
    OMP_NUM_THREADS=1 python examples/reproduce_vowels.py --part delta --seeds 0 1 2 --json runs/vowels_delta.json
    OMP_NUM_THREADS=1 python examples/reproduce_vowels.py --part delta --seeds 0 1 2 --train-thetas 0.2 0.4 \
        --fixed-point 8.8 --weight-fixed-point 8.8 --json runs/vowels_fixed.json
    python examples/reproduce_vowels.py --report runs/vowels_base.json runs/vowels_delta.json --figure docs/img/vowels_accuracy_vs_ops.png

``--part baseline`` trains nn.GRU, EGRU and ALIF per seed and evaluates each trained GRU converted
to a DeltaGRU (same weights, ``DeltaGRU.from_torch``) at every Θ of ``--convert-thetas``
("conversion only": trained at Θ = 0, evaluated at Θ > 0). ``--part delta`` trains a DeltaGRU at
each Θ of ``--train-thetas`` (Θ_x = Θ_h = Θ during training, plus the L1 cost on Δh) and evaluates
it at the same Θ ("delta-aware"); ``--fixed-point M.N`` adds the official DeltaRNN code's
fixed-point rounding to it: each input frame and each ``h_t`` rounded to signed QM.N
(``DeltaGRU(fixed_point=(M, N))``; that code's DeltaGRU defaults to activations Q8.8, ``aqi/aqf``)
and, with ``--weight-fixed-point M.N``, ``weight_ih``/``weight_hh`` too in the products (its
``wqi/wqf``, default Q1.7), with a straight-through gradient, in training and test (that code
rounds the activations in evaluation only, and also rounds its gate pre-activations and outputs,
which evsnn does not model). ``--delta-rule inclusive`` fires on ``|Δ| ≥ Θ`` as that code does
(default ``strict``: ``|Δ| > Θ``); the rules differ only where a delta equals Θ, which on a 2^−N
grid needs Θ on the grid (Θ = 0.25 = 64/256 is, Θ = 0.2 and 0.4 are not); ``--eval-other-rule``
also evaluates each trained network under the other rule. Operations are the
recurrent layer's own count on the test set
(``last_stats``: dense MACs vs event operations, packed sequences, no padded step counted).
Every row is printed as a Markdown table row and kept in ``--json``; ``--report`` prints mean ± std
per configuration and draws accuracy against operations.

Data: the aeon package's copy of JapaneseVowels (or ``--data-dir``, a folder holding
JapaneseVowels_TRAIN.ts and JapaneseVowels_TEST.ts).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reproduce_common import Net, Result, evaluate, hardware, train  # noqa: E402

import evsnn  # noqa: E402
from evsnn.data.vowels import load_japanese_vowels  # noqa: E402
from evsnn.functional.fixed_point import check_fixed_point  # noqa: E402

HEADER = (
    "| model | training | Θ eval | seed | test accuracy | activity | event ops | dense MACs | ops ÷ | train s |\n"
    "|---|---|---|---|---|---|---|---|---|---|"
)


def row(model: str, training: str, theta: float, seed: int, r: Result, seconds: float) -> dict:
    d = {
        "model": model,
        "training": training,
        "theta": theta,
        "seed": seed,
        "accuracy": r.accuracy,
        "activity": r.event_fraction,
        "event_ops": r.event_ops,
        "dense_macs": r.dense_macs,
        "ops_reduction": r.ops_reduction,
        "train_s": seconds,
    }
    print(
        f"| {model} | {training} | {theta:g} | {seed} | {r.accuracy:.4f} | {r.event_fraction:.3f} | "
        f"{r.event_ops:,} | {r.dense_macs:,} | {r.ops_reduction:.2f} | {seconds:.0f} |",
        flush=True,
    )
    return d


def converted(gru_net: Net, theta: float) -> Net:
    """The trained nn.GRU network with its layer replaced by a DeltaGRU of the same weights at Θ."""
    net = Net("deltagru", gru_net.layer.input_size, gru_net.layer.hidden_size, gru_net.readout.output_size)
    net.layer = evsnn.DeltaGRU.from_torch(gru_net.layer, theta_x=theta, theta_h=theta)
    net.readout.load_state_dict(gru_net.readout.state_dict())
    return net


def q_format(text: str) -> tuple[int, int]:
    """``"M.N"`` → ``(M, N)``: signed fixed point, M integer bits (sign included), N fraction bits."""
    parts = text.split(".")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"expected a fixed-point format M.N such as 8.8, got {text!r}")
    try:
        return check_fixed_point("fixed-point format", (int(parts[0]), int(parts[1])))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def delta_aware(
    n_in: int,
    hidden: int,
    n_classes: int,
    theta: float,
    fixed_point: tuple[int, int] | None,
    weight_fixed_point: tuple[int, int] | None,
    delta_rule: str,
) -> Net:
    """The delta-aware network at Θ, its DeltaGRU with the official options. The options draw no random
    numbers, so each seed starts from the initial weights of the floating-point run of that seed."""
    options = {"fixed_point": fixed_point, "weight_fixed_point": weight_fixed_point, "delta_rule": delta_rule}
    return Net("deltagru", n_in, hidden, n_classes, theta=theta, layer_options=options)


def delta_training(
    l1: float, fixed_point: tuple[int, int] | None, weight_fixed_point: tuple[int, int] | None, delta_rule: str
) -> str:
    """The "training" label of a delta-aware row, naming the formats and the tie rule when used
    (no ``|`` in it: the rows are Markdown table rows)."""
    label = f"delta-aware (L1 {l1:g})"
    if fixed_point is not None:
        label += f", activations Q{fixed_point[0]}.{fixed_point[1]}"
    if weight_fixed_point is not None:
        label += f", weights Q{weight_fixed_point[0]}.{weight_fixed_point[1]}"
    if fixed_point is not None or weight_fixed_point is not None or delta_rule != "strict":
        label += f", rule {delta_rule} ({'≥' if delta_rule == 'inclusive' else '>'})"
    return label


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=("baseline", "delta"), default=None)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=30)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--egru-target", type=float, default=0.15, help="one-sided activity target of the EGRU")
    p.add_argument("--egru-strength", type=float, default=1.0, help="strength of the EGRU activity regulariser")
    p.add_argument("--l1", type=float, default=1e-3, help="strength of the L1 cost on Δh (delta-aware training)")
    p.add_argument("--convert-thetas", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.2, 0.3, 0.5])
    p.add_argument("--train-thetas", type=float, nargs="+", default=[0.1, 0.2, 0.4])
    p.add_argument("--models", nargs="+", default=["gru", "egru", "alif"])
    p.add_argument(
        "--fixed-point",
        type=q_format,
        default=None,
        metavar="M.N",
        help="--part delta: round inputs and h_t to signed QM.N in training and test (e.g. 8.8)",
    )
    p.add_argument(
        "--weight-fixed-point",
        type=q_format,
        default=None,
        metavar="M.N",
        help="--part delta: round weight_ih/weight_hh to signed QM.N in the products (e.g. 8.8)",
    )
    p.add_argument(
        "--delta-rule",
        choices=("strict", "inclusive"),
        default="strict",
        help="--part delta: fire on |Δ| > Θ (strict, SPEC) or |Δ| ≥ Θ (inclusive, official code)",
    )
    p.add_argument(
        "--eval-other-rule",
        action="store_true",
        help="--part delta: also evaluate each trained network under the other tie rule (same weights)",
    )
    p.add_argument("--json", default=None, help="append the rows to this JSON file")
    p.add_argument("--report", nargs="+", default=None, help="JSON files of earlier runs: print mean ± std")
    p.add_argument("--figure", default=None, help="with --report: draw accuracy vs operations here")
    args = p.parse_args()
    if args.report:
        report(args.report, args.figure)
        return
    if args.part is None:
        p.error("give --part baseline or --part delta (or --report)")
    official = (args.fixed_point, args.weight_fixed_point, args.delta_rule)
    if args.part == "baseline" and (official != (None, None, "strict") or args.eval_other_rule):
        p.error("--fixed-point, --weight-fixed-point, --delta-rule and --eval-other-rule apply to --part delta only")
    torch.set_num_threads(1)
    data = load_japanese_vowels(args.data_dir)
    print(
        f"# JapaneseVowels: {len(data.train)} train, {len(data.test)} test, {data.n_features} features, "
        f"{data.n_classes} speakers, lengths {int(data.train.lengths.min())}-{data.max_steps}; hidden {args.hidden}, "
        f"{args.epochs} epochs, batch {args.batch_size}, lr {args.lr}; {hardware()}\n\n{HEADER}",
        flush=True,
    )
    rows = []
    common = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr}
    for seed in args.seeds:
        if args.part == "baseline":
            for kind in args.models:
                torch.manual_seed(seed)
                net = Net(kind, data.n_features, args.hidden, data.n_classes)
                extra = {"egru_target": args.egru_target, "egru_strength": args.egru_strength} if kind == "egru" else {}
                secs = train(net, data.train, seed=seed, **common, **extra)
                training = {"gru": "dense", "egru": f"activity ≤ {args.egru_target:g} (×{args.egru_strength:g})"}.get(
                    kind, "native"
                )
                rows.append(row(kind, training, 0.0, seed, evaluate(net, data.test), secs))
                if kind == "gru":
                    for theta in args.convert_thetas:
                        rows.append(
                            row("deltagru", "conversion", theta, seed, evaluate(converted(net, theta), data.test), 0.0)
                        )
        else:
            for theta in args.train_thetas:
                torch.manual_seed(seed)
                net = delta_aware(data.n_features, args.hidden, data.n_classes, theta, *official)
                secs = train(net, data.train, seed=seed, l1_delta=args.l1, **common)
                label = delta_training(args.l1, *official)
                fields = {
                    "fixed_point": args.fixed_point,
                    "weight_fixed_point": args.weight_fixed_point,
                    "delta_rule": args.delta_rule,
                    "eval_rule": args.delta_rule,
                }
                rows.append(row("deltagru", label, theta, seed, evaluate(net, data.test), secs) | fields)
                if args.eval_other_rule:
                    # the same trained weights under the other rule: what the ties alone change
                    other = "inclusive" if args.delta_rule == "strict" else "strict"
                    net.layer.delta_rule = other
                    label += f", evaluated with rule {other} ({'≥' if other == 'inclusive' else '>'})"
                    rows.append(
                        row("deltagru", label, theta, seed, evaluate(net, data.test), secs)
                        | fields
                        | {"eval_rule": other}
                    )
    print(f"\n# end: {hardware()}")
    if args.json:
        path = Path(args.json)
        old = json.loads(path.read_text()) if path.is_file() else []
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(old + rows, indent=1))


def ops_per_gru_mac(r: dict) -> float:
    """Event operations over the dense MACs of an nn.GRU of the same width (an ALIF layer's own
    dense count is one gate's, a third of the GRU's three)."""
    return r["event_ops"] / (r["dense_macs"] * (3 if r["model"] == "alif" else 1))


def report(paths: list[str], figure: str | None) -> None:
    rows = [r for path in paths for r in json.loads(Path(path).read_text())]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["training"], r["theta"]), []).append(r)

    def ms(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
        values = [v * scale for v in values]
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"

    print(
        "| model | training | Θ | seeds | test accuracy % | activity % | ops ÷ (dense / event) | "
        "ops / nn.GRU MACs | train s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for (model, training, theta), rs in groups.items():
        print(
            f"| {model} | {training} | {theta:g} | {len(rs)} | {ms([r['accuracy'] for r in rs], 100)} | "
            f"{ms([r['activity'] for r in rs], 100)} | {ms([r['ops_reduction'] for r in rs], digits=2)} | "
            f"{statistics.mean(ops_per_gru_mac(r) for r in rs):.3f} | "
            f"{ms([r['train_s'] for r in rs], digits=0)} |"
        )
    if figure:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(10, 4.5))
        # one line per DeltaGRU training recipe (conversion, delta-aware, each fixed-point variant)
        # (the evaluations under the other tie rule are diagnostics: in the table only)
        recipes = list(dict.fromkeys(k[1] for k in groups if k[0] == "deltagru" and "evaluated with" not in k[1]))
        for i, training in enumerate(recipes):
            if training.startswith("conversion"):
                style, label = "o-", "DeltaGRU, conversion only (trained Θ=0)"
            else:
                extra = training.partition(")")[2].lstrip(", ")  # what follows "delta-aware (L1 β)"
                style = "s-" if not extra else ("^--", "v--", "D--", "<--")[i % 4]
                label = "DeltaGRU, delta-aware training" + (f", {extra}" if extra else "")
            pts = sorted((k[2], rs) for k, rs in groups.items() if k[0] == "deltagru" and k[1] == training)
            xs = [statistics.mean(ops_per_gru_mac(r) for r in rs) for _, rs in pts]
            ys = [100 * statistics.mean(r["accuracy"] for r in rs) for _, rs in pts]
            es = [100 * statistics.stdev(r["accuracy"] for r in rs) if len(rs) > 1 else 0 for _, rs in pts]
            ax.errorbar(xs, ys, yerr=es, fmt=style, capsize=3, label=label)
            if style in ("o-", "s-"):  # the variants sit at the same Θ as these: labels would overlap
                for (theta, _), x, y in zip(pts, xs, ys):
                    ax.annotate(f"Θ={theta:g}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
        for (model, training, _), rs in groups.items():
            if model in ("gru", "egru", "alif"):
                x = statistics.mean(ops_per_gru_mac(r) for r in rs)
                y = 100 * statistics.mean(r["accuracy"] for r in rs)
                e = 100 * statistics.stdev(r["accuracy"] for r in rs) if len(rs) > 1 else 0
                label = {
                    "gru": "nn.GRU (dense)",
                    "egru": f"EGRU, {training}",
                    "alif": "ALIF (binary spikes: accumulates)",
                }[model]
                ax.errorbar([x], [y], yerr=[e], fmt="*", markersize=10, capsize=3, label=label)
        ax.set_xscale("log")
        ax.set_xlabel("layer operations / dense MACs of an nn.GRU of that width")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title("JapaneseVowels, hidden 64, mean ± std over seeds")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
        fig.tight_layout()
        fig.savefig(figure, dpi=120)
        print(f"\nfigure: {figure}")


if __name__ == "__main__":
    main()
