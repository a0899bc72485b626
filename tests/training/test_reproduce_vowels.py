"""examples/reproduce_vowels.py's fixed-point options (the official DeltaRNN code's Qm.n training
and tie rule) on tiny data: parsing, the network they build, the rows they write and report."""

from __future__ import annotations

import argparse
import json
import sys

import pytest
import torch

import evsnn
from evsnn.functional.delta import delta_gru_initial_state, delta_gru_scan
from evsnn.functional.fixed_point import quantize_fixed_point

HEADER = """@problemName JapaneseVowels
@timeStamps false
@missing false
@univariate false
@dimensions 2
@equalLength false
@classLabel true 1 2
@data
"""


@pytest.fixture(scope="module")
def script(load_example):
    return load_example("reproduce_vowels")


@pytest.fixture
def tiny_vowels(tmp_path):
    gen = torch.Generator().manual_seed(0)

    def lines(n: int) -> str:
        out = []
        for i in range(n):
            steps = 2 + i % 3
            values = torch.randn(2, steps, generator=gen)
            out.append(":".join(",".join(f"{float(v):.4f}" for v in d) for d in values) + f":{1 + i % 2}")
        return HEADER + "\n".join(out) + "\n"

    (tmp_path / "JapaneseVowels_TRAIN.ts").write_text(lines(6))
    (tmp_path / "JapaneseVowels_TEST.ts").write_text(lines(4))
    return tmp_path


def test_q_format_parses_m_dot_n_and_names_what_it_expected(script):
    assert script.q_format("8.8") == (8, 8)
    assert script.q_format("1.7") == (1, 7)
    for bad in ("8", "8.8.1", "a.b", "-1.7", ""):
        with pytest.raises(argparse.ArgumentTypeError, match=r"M\.N such as 8\.8, got"):
            script.q_format(bad)
    with pytest.raises(argparse.ArgumentTypeError, match=r"int_bits >= 1.*got \(0, 8\)"):
        script.q_format("0.8")


def test_delta_aware_net_keeps_the_float_initial_weights_and_computes_the_reference(script, single_thread):
    torch.manual_seed(3)
    plain = script.delta_aware(2, 5, 2, 0.25, None, None, "strict")
    torch.manual_seed(3)
    fixed = script.delta_aware(2, 5, 2, 0.25, (8, 8), (1, 7), "inclusive")
    assert (fixed.layer.fixed_point, fixed.layer.weight_fixed_point, fixed.layer.delta_rule) == (
        (8, 8),
        (1, 7),
        "inclusive",
    )
    for name, p in plain.state_dict().items():
        assert torch.equal(p, fixed.state_dict()[name]), name
    # the layer's forward against the functional reference with the weights rounded by hand
    x = torch.randn(6, 3, 2)
    lay = fixed.layer
    state = delta_gru_initial_state(3, 2, 5, lay.bias_ih, lay.bias_hh, lay.weight_ih)
    ref, _, _ = delta_gru_scan(
        x,
        state,
        quantize_fixed_point(lay.weight_ih, 1, 7),
        quantize_fixed_point(lay.weight_hh, 1, 7),
        lay.bias_ih,
        lay.bias_hh,
        theta_x=0.25,
        theta_h=0.25,
        delta_rule="inclusive",
        fixed_point=(8, 8),
    )
    out, _ = lay(x)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert torch.equal(out, quantize_fixed_point(out, 8, 8))  # every h_t on the Q8.8 grid


def test_tie_rule_matters_on_the_grid_only(script, single_thread):
    """On a Q8.8 grid a delta can equal Θ = 0.25 = 64/256 but never Θ = 0.2 (51.2/256): the two
    rules give the same network at 0.2 and different ones at 0.25 (the docs' claim)."""
    x = torch.tensor([0.0, 0.25, 0.5, 0.5, 0.75]).reshape(5, 1, 1).expand(5, 2, 2).contiguous()
    x = x + 0.001  # under half a step (1/512): Q8.8 rounds it back to the grid values
    counts = {}
    for theta in (0.2, 0.25):
        for rule in ("strict", "inclusive"):
            torch.manual_seed(0)
            net = script.delta_aware(2, 4, 2, theta, (8, 8), (8, 8), rule)
            with torch.no_grad():
                out, _ = net.layer(x)
            counts[theta, rule] = (int(net.layer.last_stats.event_ops), out)
    assert counts[0.2, "strict"][0] == counts[0.2, "inclusive"][0]
    assert torch.equal(counts[0.2, "strict"][1], counts[0.2, "inclusive"][1])
    # at 0.25 every input step of +0.25 is a tie: inclusive fires on it, strict does not
    assert counts[0.25, "inclusive"][0] > counts[0.25, "strict"][0]


def test_part_delta_with_fixed_point_writes_labelled_rows_and_the_report_keeps_them_apart(
    script, tiny_vowels, tmp_path, monkeypatch, capsys, single_thread
):
    out = tmp_path / "rows.json"
    argv = [
        "reproduce_vowels.py",
        "--part",
        "delta",
        "--data-dir",
        str(tiny_vowels),
        "--seeds",
        "0",
        "1",
        "--train-thetas",
        "0.25",
        "--hidden",
        "4",
        "--epochs",
        "1",
        "--batch-size",
        "3",
        "--fixed-point",
        "8.8",
        "--weight-fixed-point",
        "1.7",
        "--delta-rule",
        "inclusive",
        "--eval-other-rule",
        "--json",
        str(out),
    ]
    monkeypatch.setattr(sys, "argv", argv)
    script.main()
    rows = json.loads(out.read_text())
    assert len(rows) == 4
    label = "delta-aware (L1 0.001), activations Q8.8, weights Q1.7, rule inclusive (≥)"
    fixed = [r for r in rows if r.get("fixed_point") is not None and r["eval_rule"] == "inclusive"]
    cross = [r for r in rows if r.get("fixed_point") is not None and r["eval_rule"] == "strict"]
    assert len(fixed) == len(cross) == 2
    for r, c in zip(fixed, cross):
        assert r["training"] == label
        assert (r["fixed_point"], r["weight_fixed_point"], r["delta_rule"]) == ([8, 8], [1, 7], "inclusive")
        assert c["training"] == label + ", evaluated with rule strict (>)"
        assert (c["seed"], c["train_s"], c["delta_rule"]) == (r["seed"], r["train_s"], "inclusive")
        assert "|" not in c["training"]  # it goes into a Markdown table cell
    # floating-point rows as the script writes them (the label of the published rows): the report
    # must keep them apart from the fixed-point ones at the same Θ
    plain = [
        r
        | {
            "training": script.delta_training(0.001, None, None, "strict"),
            "fixed_point": None,
            "weight_fixed_point": None,
            "delta_rule": "strict",
            "eval_rule": "strict",
            "accuracy": 0.5 * r["accuracy"] + 0.01 * r["seed"],
        }
        for r in fixed
    ]
    assert plain[0]["training"] == "delta-aware (L1 0.001)"
    out.write_text(json.dumps(rows + plain))
    capsys.readouterr()

    figure = tmp_path / "fig.png"
    script.report([str(out)], str(figure))
    printed = capsys.readouterr().out
    table = [line for line in printed.splitlines() if line.startswith("| deltagru")]
    assert len(table) == 3  # one row per recipe and evaluation rule, not one mixed row
    fixed_line = next(line for line in table if "Q8.8" in line and "evaluated" not in line)
    accs = [100 * r["accuracy"] for r in fixed]
    mean = sum(accs) / 2
    sd = abs(accs[0] - accs[1]) / 2**0.5
    assert f"| 2 | {mean:.1f} ± {sd:.1f} |" in fixed_line
    assert figure.stat().st_size > 0


@pytest.mark.parametrize(
    "option",
    [["--fixed-point", "8.8"], ["--weight-fixed-point", "1.7"], ["--delta-rule", "inclusive"], ["--eval-other-rule"]],
)
def test_official_options_are_refused_for_the_baseline_part(script, monkeypatch, capsys, option):
    monkeypatch.setattr(sys, "argv", ["reproduce_vowels.py", "--part", "baseline", *option])
    with pytest.raises(SystemExit):
        script.main()
    assert "apply to --part delta only" in capsys.readouterr().err


def test_delta_aware_without_options_is_the_plain_net(script):
    torch.manual_seed(1)
    net = script.delta_aware(3, 4, 2, 0.1, None, None, "strict")
    assert isinstance(net.layer, evsnn.DeltaGRU)
    assert (net.layer.fixed_point, net.layer.weight_fixed_point, net.layer.delta_rule) == (None, None, "strict")
    assert net.layer.theta_x == net.layer.theta_h == 0.1
