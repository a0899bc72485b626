"""examples/word_language_model.py's --trace-steps: what the first SGD steps do to an EGRU's
events, gradients and thresholds, checked against one step computed here by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn


@pytest.fixture(scope="module")
def lm(load_example):
    return load_example("word_language_model")


@pytest.mark.slow  # a whole small training and evaluation of the script (37 s at load 10)
def test_trace_of_the_first_step_matches_a_step_computed_here(lm, single_thread, capsys):
    argv = ["--model", "EGRU", "--emsize", "8", "--nhid", "8", "--batch-size", "400", "--bptt", "10"]
    argv += ["--dropout", "0", "--epochs", "1", "--seed", "3", "--trace-steps", "2", "--lr", "20"]
    result = lm.main(argv)
    trace = result["trace"]
    assert [t["step"] for t in trace] == [0, 1]
    assert capsys.readouterr().out.count("event_fraction") == 2

    # the same first step by hand: same seed, same model, same first window
    torch.manual_seed(3)
    corpus = lm.Corpus(2)
    model = lm.RNNModel("EGRU", len(corpus.words), 8, 8, 1, 0.0, False)
    data, targets = lm.get_batch(lm.batchify(corpus.train, 400), 0, 10)
    logp, _, output = model(data, model.init_hidden(400))
    loss = nn.functional.nll_loss(logp, targets)
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    norm = torch.sqrt(sum((g * g).sum() for g in grads))
    first = trace[0]
    assert first["loss"] == pytest.approx(loss.item(), abs=1e-4)
    assert first["event_fraction"] == pytest.approx(float((output != 0).float().mean()), abs=1e-5)
    silent = (output != 0).sum(dim=(0, 1)) == 0
    assert first["silent_units"] == pytest.approx(float(silent.float().mean()), abs=1e-3)
    assert first["grad_norm"] == pytest.approx(float(norm), rel=1e-3)
    assert first["grad_norm_theta"] == pytest.approx(float(model.rnn.log_threshold.grad.norm()), rel=1e-3)
    # θ after the clipped SGD step: log θ − lr · min(1, clip / norm) · ∂loss/∂log θ
    scale = min(1.0, 0.25 / float(norm))
    theta = (model.rnn.log_threshold.detach() - 20 * scale * model.rnn.log_threshold.grad).exp()
    expected = theta.quantile(torch.tensor([0.1, 0.5, 0.9]))
    assert first["theta_q10_q50_q90"] == pytest.approx(expected.tolist(), rel=1e-3)


def test_trace_steps_needs_the_egru(lm):
    with pytest.raises(SystemExit):
        lm.main(["--model", "GRU", "--trace-steps", "3"])
