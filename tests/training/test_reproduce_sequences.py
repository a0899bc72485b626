"""examples/reproduce_sequences.py's EGRU recipe for mnist1d: the options' defaults, the layer they
build (checked against the functional reference), and the start-of-training activity that makes
the layer's own defaults fail on one-value-per-step input while the recipe learns."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

import evsnn
from evsnn.functional.egru import egru_initial_state, egru_step


@pytest.fixture(scope="module")
def script(load_example):
    return load_example("reproduce_sequences")


def test_defaults_are_the_recipe_of_the_table(script):
    args = script.build_parser().parse_args(["--task", "mnist1d"])
    assert (
        args.egru_reset,
        args.egru_threshold,
        args.egru_threshold_init,
        args.egru_target,
        args.egru_lr,
        args.lr,
    ) == ("threshold", 0.01, "constant", 0.15, 0.05, 0.01)
    old = script.build_parser().parse_args(
        ["--task", "mnist1d", "--egru-reset", "output", "--egru-threshold", "0.3", "--egru-threshold-init", "beta"]
    )
    assert (old.egru_reset, old.egru_threshold, old.egru_threshold_init) == ("output", 0.3, "beta")
    with pytest.raises(SystemExit):
        script.build_parser().parse_args(["--task", "mnist1d", "--egru-reset", "subtract"])


def test_recipe_layer_computes_the_reference_with_threshold_reset(script, single_thread):
    args = script.build_parser().parse_args(["--task", "mnist1d"])
    torch.manual_seed(0)
    net = script.make_net("egru", 1, 6, 3, args)
    layer = net.layer
    assert isinstance(layer, evsnn.EGRU) and layer.reset == "threshold"
    assert torch.allclose(layer.threshold, torch.full((6,), 0.01))
    x = torch.randn(7, 4, 1)
    y, _ = layer(x)
    state = egru_initial_state(4, 6, x)
    expected = []
    for t in range(7):
        out, state = egru_step(
            x[t],
            state,
            layer.weight_ih,
            layer.weight_hh,
            layer.bias_ih,
            layer.bias_hh,
            layer.threshold,
            reset="threshold",
            surrogate=layer.surrogate,
        )
        expected.append(out)
    torch.testing.assert_close(y, torch.stack(expected))
    # the other models are left as reproduce_common builds them
    assert isinstance(script.make_net("gru", 1, 6, 3, args).layer, nn.GRU)


def test_recipe_fires_at_start_where_the_layer_defaults_stay_silent(script, single_thread):
    # mnist1d's values: one feature per step, mean 0, std 1 (the loader's data, 100 samples)
    from evsnn.data.mnist_1d import load_mnist1d

    x = load_mnist1d(num_samples=100).train.tensors[0].transpose(0, 1)
    assert abs(float(x.std()) - 1.0) < 0.1
    recipe = script.build_parser().parse_args(["--task", "mnist1d"])
    old = script.build_parser().parse_args(
        ["--task", "mnist1d", "--egru-reset", "output", "--egru-threshold", "0.3", "--egru-threshold-init", "beta"]
    )
    rates = {}
    for name, args in (("recipe", recipe), ("old", old)):
        torch.manual_seed(0)
        net = script.make_net("egru", 1, 64, 10, args)
        with torch.no_grad():
            y, _ = net.layer(x)
        rates[name] = float((y != 0).float().mean())
    # measured 0.2 % of units per step with the old defaults (docs/reproductions.md), ~45 % with the recipe
    assert rates["old"] < 0.02 and rates["recipe"] > 0.3, rates


def test_cli_builds_the_recipe_layer_for_mnist1d_only():
    from evsnn.train import TrainConfig, build_model

    torch.manual_seed(0)
    model = build_model(TrainConfig(model="egru", data="mnist1d", hidden=5).validate(), 1, 10)
    assert model.layer.reset == "threshold" and (model.layer.hidden_size, model.layer.input_size) == (5, 1)
    assert torch.allclose(model.layer.threshold, torch.full((5,), 0.01))
    assert model.layers_with_stats() == [model.layer]
    other = build_model(TrainConfig(model="egru", data="digits", hidden=5).validate(), 8, 10)
    default = evsnn.EGRU(8, 5)
    assert other.layer.reset == default.reset and not torch.allclose(other.layer.threshold, torch.full((5,), 0.01))


def test_penalty_scale_is_off_in_warmup_then_ramps_linearly(script):
    common = sys.modules["reproduce_common"]
    # hand-computed: warm-up 2 epochs, ramp 4 epochs
    values = [common.penalty_scale(e, 2.0, 4.0) for e in (0.0, 1.99, 2.0, 3.0, 5.0, 6.0, 9.0)]
    assert values == [0.0, 0.0, 0.0, 0.25, 0.75, 1.0, 1.0]
    assert common.penalty_scale(0.0, 0.0, 0.0) == 1.0  # no warm-up, no ramp: full strength from the start
    assert common.penalty_scale(1.5, 1.0, 0.0) == 1.0
    with pytest.raises(ValueError, match="warmup and ramp must be >= 0 epochs, got -1"):
        common.penalty_scale(0.0, -1.0, 0.0)


def test_parser_passes_the_penalty_schedule(script):
    args = script.build_parser().parse_args(["--task", "mnist1d"])
    assert (args.egru_strength, args.egru_warmup, args.egru_ramp) == (1.0, 0.0, 0.0)
    args = script.build_parser().parse_args(
        ["--task", "mnist1d", "--egru-strength", "10", "--egru-warmup", "5", "--egru-ramp", "2.5"]
    )
    assert (args.egru_strength, args.egru_warmup, args.egru_ramp) == (10.0, 5.0, 2.5)


def _tiny_training(script, **penalty):
    common = sys.modules["reproduce_common"]
    gen = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(
        torch.randn(16, 5, 1, generator=gen), torch.randint(0, 3, (16,), generator=gen)
    )
    torch.manual_seed(0)
    net = common.Net("egru", 1, 8, 3, layer_options={"threshold": 0.01, "threshold_init": "constant"})
    common.train(net, data, epochs=2, batch_size=8, lr=0.05, seed=0, **penalty)
    return torch.cat([p.detach().flatten() for p in net.parameters()])


def test_warmup_over_the_whole_run_trains_as_without_penalty(script, single_thread):
    # the independent truth: the same run with no activity target at all
    free = _tiny_training(script)
    warm = _tiny_training(script, egru_target=0.01, egru_strength=100.0, egru_warmup=2.0)
    torch.testing.assert_close(warm, free, rtol=0, atol=0)
    # a penalty that starts at once (and one that starts after one epoch) changes the weights
    direct = _tiny_training(script, egru_target=0.01, egru_strength=100.0)
    late = _tiny_training(script, egru_target=0.01, egru_strength=100.0, egru_warmup=1.0)
    assert not torch.equal(direct, free) and not torch.equal(late, free) and not torch.equal(late, direct)


def test_surrogate_options_build_the_triangle_they_name(script):
    default = script.make_net("egru", 1, 4, 3, script.build_parser().parse_args(["--task", "mnist1d"]))
    assert (
        default.layer.surrogate.kernel_spec()
        == evsnn.EGRU(1, 4).surrogate.kernel_spec()
        == ("triangle", (0.3, 1 / 0.3))
    )
    damped = script.build_parser().parse_args(
        ["--task", "mnist1d", "--egru-surrogate-width", "1", "--egru-surrogate-peak", "0.7"]
    )
    layer = script.make_net("egru", 1, 4, 3, damped).layer
    assert layer.surrogate.kernel_spec() == ("triangle", (1.0, 0.7))
    # the peak alone keeps the layer's width
    peak = script.build_parser().parse_args(["--task", "mnist1d", "--egru-surrogate-peak", "1.5"])
    assert script.make_net("egru", 1, 4, 3, peak).layer.surrogate.kernel_spec() == ("triangle", (0.3, 1.5))
