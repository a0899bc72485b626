"""Word-level language model, nn.GRU against a drop-in EGRU (the shape of PyTorch's word_language_model).

    OMP_NUM_THREADS=1 python examples/word_language_model.py --model GRU
    OMP_NUM_THREADS=1 python examples/word_language_model.py --model EGRU

Embedding → RNN → Linear decoder (``--tied`` shares the embedding and decoder weights), trained
with truncated backpropagation through time: the hidden state is carried from one ``--bptt``
window to the next and cut from the graph by :func:`repackage_hidden`. Plain SGD with gradient
clipping and a learning rate divided by 4 whenever the validation loss does not improve, as in
PyTorch's example. ``--model EGRU`` builds ``evsnn.EGRU`` with its default options where
PyTorch's example builds ``nn.GRU``; nothing else changes (``--threshold``, ``--threshold-init``
and ``--reset`` set those EGRU options instead).

Corpus: the Python language reference topics that ship with CPython (``pydoc_data.topics``), so
the script runs offline. Lower-cased words, numbers and punctuation marks are tokens, each line
ends with ``<eos>``; the topics in sorted order are split 80/10/10 into train, validation and
test; a word seen fewer than ``--min-count`` times in training reads as ``<unk>``. Prints the
perplexity per epoch, the test perplexity and, for the EGRU, the fraction of units with an event
per step.
"""

from __future__ import annotations

import argparse
import collections
import math
import re
import time

import torch
from torch import Tensor, nn

import evsnn

_TOKEN = re.compile(r"[a-z_]+|[0-9]+|[^\sa-z_0-9]")


class Corpus:
    """Train / validation / test token ids of ``pydoc_data.topics``, with the vocabulary."""

    def __init__(self, min_count: int = 2):
        from pydoc_data.topics import topics

        lines = [line for key in sorted(topics) for line in topics[key].lower().splitlines()]
        tokens = [tok for line in lines for tok in _TOKEN.findall(line) + ["<eos>"]]
        n = len(tokens)
        parts = tokens[: int(0.8 * n)], tokens[int(0.8 * n) : int(0.9 * n)], tokens[int(0.9 * n) :]
        counts = collections.Counter(parts[0])
        self.words = ["<unk>"] + sorted(w for w, c in counts.items() if c >= min_count and w != "<unk>")
        index = {w: i for i, w in enumerate(self.words)}
        self.train, self.valid, self.test = (torch.tensor([index.get(w, 0) for w in p]) for p in parts)


class RNNModel(nn.Module):
    """Embedding → ``nn.GRU`` or ``evsnn.EGRU`` → Linear decoder over the vocabulary."""

    def __init__(
        self,
        rnn_type: str,
        ntoken: int,
        ninp: int,
        nhid: int,
        nlayers: int,
        dropout: float,
        tied: bool,
        egru_options: dict | None = None,
    ):
        """``egru_options``: keyword arguments of ``evsnn.EGRU`` (its threshold, reset, ...)."""
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        options = dict(egru_options or {})
        if options and rnn_type != "EGRU":
            raise ValueError(f"EGRU options {sorted(options)} given for --model {rnn_type}")
        rnn_class = {"GRU": nn.GRU, "EGRU": evsnn.EGRU}[rnn_type]
        self.rnn = rnn_class(ninp, nhid, nlayers, dropout=dropout if nlayers > 1 else 0.0, **options)
        self.decoder = nn.Linear(nhid, ntoken)
        if tied:
            if nhid != ninp:
                raise ValueError(f"--tied needs --nhid equal to --emsize, got {nhid} and {ninp}")
            self.decoder.weight = self.encoder.weight
        self.rnn_type = rnn_type
        self.nhid, self.nlayers = nhid, nlayers
        # PyTorch's example draws the embedding and decoder from U(-0.1, 0.1): inputs far smaller
        # than nn.Embedding's N(0, 1), which an EGRU's thresholds have to accommodate.
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

    def forward(self, tokens: Tensor, hidden) -> tuple[Tensor, object, Tensor]:
        """``(log-probabilities [T·B, ntoken], next hidden, rnn output [T, B, nhid])``."""
        emb = self.drop(self.encoder(tokens))
        output, hidden = self.rnn(emb, hidden)
        decoded = self.decoder(self.drop(output))
        return torch.log_softmax(decoded.view(-1, decoded.shape[-1]), dim=-1), hidden, output

    def init_hidden(self, bsz: int):
        """Zero state: a tensor for nn.GRU, the layer's ``EGRUState(c, y)`` for the EGRU."""
        if self.rnn_type == "EGRU":
            return self.rnn.initial_state(bsz)
        return self.encoder.weight.new_zeros(self.nlayers, bsz, self.nhid)


def repackage_hidden(h):
    """Cut the hidden state from its history (truncated BPTT), keeping its type (a named tuple stays one)."""
    if isinstance(h, Tensor):
        return h.detach()
    values = [repackage_hidden(v) for v in h]
    return type(h)(*values) if hasattr(h, "_fields") else type(h)(values)


def batchify(data: Tensor, bsz: int) -> Tensor:
    """``[steps, bsz]`` columns of consecutive tokens (the tail that does not fill a column is dropped)."""
    steps = data.shape[0] // bsz
    return data[: steps * bsz].view(bsz, steps).t().contiguous()


def get_batch(source: Tensor, i: int, bptt: int) -> tuple[Tensor, Tensor]:
    """Window ``[i, i + bptt)`` of ``source`` and its next-token targets, flattened."""
    seq_len = min(bptt, source.shape[0] - 1 - i)
    return source[i : i + seq_len], source[i + 1 : i + 1 + seq_len].reshape(-1)


def evaluate(model: RNNModel, source: Tensor, bptt: int) -> tuple[float, float]:
    """(mean negative log-likelihood per token, fraction of nonzero rnn outputs) over ``source``."""
    model.eval()
    total, nonzero, count = 0.0, 0.0, 0
    hidden = model.init_hidden(source.shape[1])
    with torch.no_grad():
        for i in range(0, source.shape[0] - 1, bptt):
            data, targets = get_batch(source, i, bptt)
            logp, hidden, output = model(data, hidden)
            total += len(data) * nn.functional.nll_loss(logp, targets).item()
            nonzero += (output != 0).float().mean().item() * len(data)
            count += len(data)
    return total / count, nonzero / count


def step_trace(model: RNNModel, step: int, loss: Tensor, output: Tensor, grad_norm: float, grad_theta: float) -> dict:
    """What one training step did to an EGRU, read after the clipped update: the loss, the
    share of units with an event per step, the share of units silent over the whole window,
    the gradient norms before clipping (all parameters, and θ's alone: ``log_threshold``) and
    θ's 10/50/90 % quantiles."""
    events = output != 0
    theta = model.rnn.threshold.detach()
    q = theta.quantile(torch.tensor([0.1, 0.5, 0.9], dtype=theta.dtype))
    return {
        "step": step,
        "loss": round(loss.item(), 4),
        "event_fraction": round(float(events.float().mean()), 5),
        "silent_units": round(float((~events.flatten(0, 1).any(0)).float().mean()), 3),
        "grad_norm": float(f"{grad_norm:.4g}"),
        "grad_norm_theta": float(f"{grad_theta:.4g}"),
        "theta_q10_q50_q90": [float(f"{v:.4g}") for v in q],
    }


def train_epoch(model: RNNModel, source: Tensor, args, lr: float, trace: list | None = None) -> float:
    """One pass of truncated BPTT with plain SGD at ``lr``; returns the mean training loss.

    With a ``trace`` list, an EGRU's first ``args.trace_steps`` steps are appended to it and
    printed (`step_trace`)."""
    model.train()
    hidden = model.init_hidden(args.batch_size)
    total, count = 0.0, 0
    for i in range(0, source.shape[0] - 1, args.bptt):
        data, targets = get_batch(source, i, args.bptt)
        hidden = repackage_hidden(hidden)
        model.zero_grad()
        logp, hidden, output = model(data, hidden)
        loss = nn.functional.nll_loss(logp, targets)
        loss.backward()
        tracing = trace is not None and len(trace) < args.trace_steps
        grad_theta = float(model.rnn.log_threshold.grad.norm()) if tracing else 0.0
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip))
        with torch.no_grad():
            for p in model.parameters():
                p.add_(p.grad, alpha=-lr)
        if tracing:
            trace.append(step_trace(model, len(trace), loss, output, grad_norm, grad_theta))
            print(" ".join(f"{k} {v}" for k, v in trace[-1].items()), flush=True)
        total += loss.item()
        count += 1
    return total / count


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=("GRU", "EGRU"), default="GRU")
    p.add_argument("--emsize", type=int, default=128)
    p.add_argument("--nhid", type=int, default=128)
    p.add_argument("--nlayers", type=int, default=1)
    p.add_argument("--lr", type=float, default=20.0)
    p.add_argument("--clip", type=float, default=0.25)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=20)
    p.add_argument("--bptt", type=int, default=35)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--tied", action="store_true")
    p.add_argument("--min-count", type=int, default=2)
    p.add_argument("--seed", type=int, default=1111)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--threshold", type=float, help="EGRU threshold (default: the layer's)")
    p.add_argument("--threshold-init", choices=evsnn.nn.egru.THRESHOLD_INITS, help="EGRU threshold_init")
    p.add_argument("--reset", choices=evsnn.functional.egru.RESETS, help="EGRU reset")
    p.add_argument(
        "--trace-steps",
        type=int,
        default=0,
        help="EGRU: print the first N training steps (loss, events, silent units, gradient norms, θ)",
    )
    args = p.parse_args(argv)
    if args.trace_steps and args.model != "EGRU":
        p.error(f"--trace-steps reads an EGRU's events and thresholds, got --model {args.model}")
    egru_options = {
        name: value
        for name, value in (
            ("threshold", args.threshold),
            ("threshold_init", args.threshold_init),
            ("reset", args.reset),
        )
        if value is not None
    }
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    corpus = Corpus(args.min_count)
    train_data = batchify(corpus.train, args.batch_size)
    val_data, test_data = batchify(corpus.valid, 10), batchify(corpus.test, 10)
    model = RNNModel(
        args.model, len(corpus.words), args.emsize, args.nhid, args.nlayers, args.dropout, args.tied, egru_options
    )
    print(
        f"# {args.model}: vocabulary {len(corpus.words)}, tokens {len(corpus.train)} / {len(corpus.valid)} / "
        f"{len(corpus.test)}, {vars(args)}",
        flush=True,
    )
    lr, best, best_state = args.lr, math.inf, None
    trace: list | None = [] if args.trace_steps else None
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        train_loss = train_epoch(model, train_data, args, lr, trace)
        val_loss, val_active = evaluate(model, val_data, args.bptt)
        print(
            f"epoch {epoch:2d} | lr {lr:6.2f} | train ppl {math.exp(train_loss):8.2f} | valid ppl "
            f"{math.exp(val_loss):8.2f} | activity {val_active:.3f} | {time.perf_counter() - start:6.0f} s",
            flush=True,
        )
        if val_loss < best:
            best, best_state = val_loss, {k: v.clone() for k, v in model.state_dict().items()}
        else:
            lr /= 4.0
    model.load_state_dict(best_state)
    test_loss, test_active = evaluate(model, test_data, args.bptt)
    result = {
        "model": args.model,
        "test_ppl": math.exp(test_loss),
        "valid_ppl": math.exp(best),
        "activity": test_active,
        "seconds": time.perf_counter() - start,
        "trace": trace,
    }
    print(f"test ppl {result['test_ppl']:.2f} | activity {test_active:.3f} | {result['seconds']:.0f} s")
    return result


if __name__ == "__main__":
    main()
