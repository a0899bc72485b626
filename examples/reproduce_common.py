"""Shared pieces of the examples/reproduce_*.py scripts: one recurrent layer and a leaky readout,
trained on zero-padded batches, evaluated on packed sequences with the layer's own operation count.

The logits are the readout's membrane at each sequence's last valid step, ``m[len_i − 1, i]``.
The layers are causal, so padding after a sequence's end changes nothing before it: training on
padded batches gives exactly the gradients of the unpadded sequences. Evaluation feeds a
``PackedSequence`` (each group of equal-length sequences runs as one dense batch, no padded step is
computed), so the layer's ``last_stats`` (``event_ops``, ``dense_macs``, event fraction: what
:func:`evsnn.metrics.profile` reports) count the real sequences only.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import evsnn
from evsnn.data import pad_collate
from evsnn.regularizers import EGRUActivityRegularizer, hidden_deltas

KINDS = ("gru", "lstm", "egru", "deltagru", "deltalstm", "alif", "lif")


class Net(nn.Module):
    """``layer → LeakyReadout``; ``kind`` one of :data:`KINDS` (``lif`` is ALIF with ``adaptive=False``)."""

    def __init__(
        self,
        kind: str,
        n_in: int,
        hidden: int,
        n_classes: int,
        *,
        theta: float = 0.0,
        backend: str = "auto",
        tau_mem=(5.0, 1.25),
        tau_adapt=(25.0, 5.0),
        readout_tau=(5.0, 1.25),
        layer_options: dict | None = None,
    ):
        """``layer_options``: more keyword arguments of an evsnn layer (an EGRU's threshold and reset,
        a DeltaGRU's fixed-point formats, ...); the torch layers take none."""
        super().__init__()
        self.kind = kind
        options = dict(layer_options or {})
        if options and kind in ("gru", "lstm"):
            raise ValueError(f"layer_options apply to the evsnn layers, not to {kind!r}")
        if kind == "gru":
            self.layer = nn.GRU(n_in, hidden)
        elif kind == "lstm":
            self.layer = nn.LSTM(n_in, hidden)
        elif kind == "egru":
            self.layer = evsnn.EGRU(n_in, hidden, backend=backend, **options)
        elif kind == "deltagru":
            self.layer = evsnn.DeltaGRU(n_in, hidden, theta_x=theta, theta_h=theta, backend=backend, **options)
        elif kind == "deltalstm":
            self.layer = evsnn.DeltaLSTM(n_in, hidden, theta_x=theta, theta_h=theta, backend=backend, **options)
        elif kind in ("alif", "lif"):
            # the short time constants evsnn train uses for sequences of tens of steps
            self.layer = evsnn.ALIF(
                n_in, hidden, adaptive=kind == "alif", tau_mem=tau_mem, tau_adapt=tau_adapt, backend=backend, **options
            )
        else:
            raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
        self.readout = evsnn.LeakyReadout(hidden, n_classes, tau=readout_tau)
        self.input_gain = 2.0 if kind in ("alif", "lif") else 1.0

    def forward(self, x: Tensor | torch.nn.utils.rnn.PackedSequence, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """``(logits [B, classes], layer output [T, B, H])`` for ``x [T, B, F]`` padded or packed."""
        if isinstance(x, torch.nn.utils.rnn.PackedSequence):
            x = x._replace(data=x.data * self.input_gain)
            out, _ = self.layer(x)
            out, _ = pad_packed_sequence(out)
        else:
            out, _ = self.layer(x * self.input_gain)
        m, _ = self.readout(out)
        return m[lengths - 1, torch.arange(m.shape[1])], out


@dataclass
class Result:
    accuracy: float
    event_fraction: float  # mean fraction of units with an event (or nonzero Δh) per step
    event_ops: int
    dense_macs: int
    seconds: float

    @property
    def ops_reduction(self) -> float:
        return self.dense_macs / max(self.event_ops, 1)


def batch(dataset, idx: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(x [T, B, F] zero-padded, labels [B], lengths [B])``."""
    if isinstance(dataset, torch.utils.data.TensorDataset):
        x, y = dataset.tensors
        return x[idx].transpose(0, 1), y[idx], torch.full((len(idx),), x.shape[1], dtype=torch.int64)
    return pad_collate([dataset[int(i)] for i in idx], time_first=True)


def dense_macs(kind: str, n_in: int, hidden: int, steps: int) -> int:
    """MACs of the recurrent layer over ``steps`` sample-steps, for the dense nn.GRU / nn.LSTM."""
    gates = {"gru": 3, "lstm": 4}[kind]
    return steps * gates * hidden * (n_in + hidden)


@torch.no_grad()
def evaluate(model: Net, dataset, batch_size: int = 512) -> Result:
    """Accuracy and, summed over the whole set, the layer's event operations and dense MACs."""
    model.eval()
    correct = ops = macs = 0
    frac_sum = steps_sum = 0.0
    start = time.perf_counter()
    for i in range(0, len(dataset), batch_size):
        idx = torch.arange(i, min(i + batch_size, len(dataset)))
        x, y, lengths = batch(dataset, idx)
        if int(lengths.min()) == int(lengths.max()):
            inp = x
        else:
            inp = pack_padded_sequence(x, lengths, enforce_sorted=False)
        logits, _ = model(inp, lengths)
        correct += int((logits.argmax(1) == y).sum())
        valid = int(lengths.sum())
        stats = getattr(model.layer, "last_stats", None)
        if stats is None:  # nn.GRU / nn.LSTM: every step is dense
            ops += dense_macs(model.kind, model.layer.input_size, model.layer.hidden_size, valid)
            macs += dense_macs(model.kind, model.layer.input_size, model.layer.hidden_size, valid)
            frac_sum += valid
        else:
            ops += int(stats.event_ops)
            macs += int(stats.dense_macs)
            # event_fraction is per step over the batch columns present at that step
            frac_sum += stats.mean_event_fraction * valid
        steps_sum += valid
    model.train()
    return Result(correct / len(dataset), frac_sum / steps_sum, ops, macs, time.perf_counter() - start)


def train(
    model: Net,
    train_set,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    l1_delta: float = 0.0,
    egru_target: float | None = None,
    egru_strength: float = 1.0,
    egru_warmup: float = 0.0,
    egru_ramp: float = 0.0,
    log_every: int = 0,
    test_set=None,
) -> float:
    """Adam with a one-cycle schedule on cross-entropy (+ the optional regularisers); returns
    the training wall-clock seconds.

    The activity penalty is off for the first ``egru_warmup`` epochs, then its strength grows
    linearly to ``egru_strength`` over ``egru_ramp`` epochs (both may be fractional; see
    :func:`penalty_scale`)."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    per_epoch = len(train_set) // batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * per_epoch)
    activity = EGRUActivityRegularizer(egru_target, egru_strength, one_sided=True) if egru_target else None
    step = 0
    start = time.perf_counter()
    for epoch in range(epochs):
        perm = torch.randperm(len(train_set), generator=gen)
        for b in range(per_epoch):
            x, y, lengths = batch(train_set, perm[b * batch_size : (b + 1) * batch_size])
            logits, out = model(x, lengths)
            loss = F.cross_entropy(logits, y)
            valid = (torch.arange(x.shape[0])[:, None] < lengths[None, :]).to(out.dtype)[..., None]
            if l1_delta:
                # Σ|Δh| over the valid steps per sample (SPEC §4's L1 cost on the deltas)
                dh = hidden_deltas(out, model.layer.theta_h, delta_rule=model.layer.delta_rule)
                loss = loss + l1_delta * (dh.abs() * valid).sum() / x.shape[1]
            scale = penalty_scale(step / per_epoch, egru_warmup, egru_ramp)
            if activity is not None and scale > 0.0:  # the event rate of the valid steps only ([steps, H] rows)
                loss = loss + scale * activity(out[valid[..., 0].bool()])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
        if log_every and (epoch + 1) % log_every == 0 and test_set is not None:
            r = evaluate(model, test_set)
            print(
                f"#   epoch {epoch + 1}: loss {float(loss):.3f} test {r.accuracy:.3f} activity {r.event_fraction:.3f}",
                flush=True,
            )
    return time.perf_counter() - start


def penalty_scale(epoch: float, warmup: float, ramp: float) -> float:
    """Factor on the activity penalty at ``epoch`` (fractional: steps done / steps per epoch): 0
    during the ``warmup`` epochs, then linear up to 1 over ``ramp`` epochs, 1 after.

    The network first learns with as many events as it wants (learning follows the activity at
    the start, docs/egru-tuning.md) and the penalty then brings the activity down."""
    if warmup < 0 or ramp < 0:
        raise ValueError(f"warmup and ramp must be >= 0 epochs, got {warmup!r} and {ramp!r}")
    if epoch < warmup:
        return 0.0
    if ramp == 0:
        return 1.0
    return min(1.0, (epoch - warmup) / ramp)


def hardware() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s), load {load:.2f}"
    )
