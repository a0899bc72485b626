"""The networks ``evsnn train`` builds: `SequenceClassifier` (one evsnn layer and a leaky
readout, logits at each sample's last step) and `PerStepALIF` (Yin et al.'s per-step ECG
classifier). Each model also gives the training loop its loss, its hit count and its optimiser's
parameter groups."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from . import nn as enn

__all__ = ["MODELS", "PerStepALIF", "SequenceClassifier"]

MODELS = ("alif", "egru", "deltagru", "deltalstm")


class SequenceClassifier(nn.Module):
    """``x [T, B, I] → layer → LeakyReadout → logits = m_T [B, classes]``."""

    def __init__(
        self,
        model: str,
        input_size: int,
        hidden: int,
        n_classes: int,
        *,
        backend: str = "auto",
        adaptive: bool = True,
        layer_options: dict[str, Any] | None = None,
    ):
        """``layer_options`` are keyword arguments of the layer's class that replace the defaults
        chosen here (e.g. an EGRU's ``threshold`` and ``reset``)."""
        super().__init__()
        if model not in MODELS:
            raise ValueError(f"unknown model {model!r}; expected one of {MODELS}")
        self.model_name = model
        if model == "alif":
            # Short time constants: the digits are 24 steps, the default τ_m ~ N(20, 5) would barely
            # charge the membrane before the sequence ends.
            layer_class, options = enn.ALIF, {"tau_mem": (5.0, 1.25), "tau_adapt": (25.0, 5.0), "adaptive": adaptive}
        elif model == "egru":
            layer_class, options = enn.EGRU, {}
        else:
            layer_class = enn.DeltaGRU if model == "deltagru" else enn.DeltaLSTM
            options = {"theta_x": 0.05, "theta_h": 0.05}
        self.layer = layer_class(input_size, hidden, backend=backend, **{**options, **(layer_options or {})})
        self.readout = enn.LeakyReadout(hidden, n_classes, tau=(5.0, 1.25))
        self.input_gain = 2.0 if model == "alif" else 1.0

    def forward(self, x: Tensor | PackedSequence) -> tuple[Tensor, Tensor]:
        """Return ``(logits [B, classes], events [T, B, hidden])``.

        A ``PackedSequence`` of variable-length samples runs without padded steps (exact
        statistics), and each sample's logits are the readout at its own last step."""
        if isinstance(x, PackedSequence):
            packed, _ = self.layer(x._replace(data=x.data * self.input_gain))
            events, lengths = pad_packed_sequence(packed)
            m, _ = self.readout(events)
            return m[lengths.to(m.device) - 1, torch.arange(m.shape[1], device=m.device)], events
        events, _ = self.layer(x * self.input_gain)
        m, _ = self.readout(events)
        return m[-1], events

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Cross-entropy of the logits, mean over the batch."""
        return F.cross_entropy(logits, labels)

    def hits(self, logits: Tensor, labels: Tensor) -> tuple[int, int]:
        """``(correct, counted)`` predictions of a batch."""
        return int((logits.argmax(1) == labels).sum()), labels.numel()

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """The optimiser's parameter groups: one, at ``lr``."""
        return [{"params": list(self.parameters()), "lr": lr}]

    def layers_with_stats(self) -> list[nn.Module]:
        return [self.layer]


class PerStepALIF(nn.Module):
    """Yin, Corradi & Bohté's (2021) per-step classifier (their QTDB ECG network), SPEC.md §2.

    ``x [T, B, I] → recurrent ALIF(hidden) → ALIFReadout(classes)``; the readout's membrane goes
    through ``log_softmax`` at every step: ``forward`` returns ``(log_probs [T, B, classes],
    spikes [T, B, hidden])``. Initialised as their code: τ_m = 20 (both layers), τ_adp = 7
    (hidden) and 100 (readout), orthogonal ``W_hh``, Xavier-uniform input and readout weights,
    zero biases. The readout is adaptive; ``adaptive=False`` makes the hidden layer a LIF (β = 0).
    The loss is the negative log-likelihood summed over the steps ``t ≥ warmup`` and averaged over
    the batch; accuracy counts those steps. The time constants learn at 3× (hidden) and 2×
    (readout) the weights' learning rate, as theirs.

    Args:
        input_size: input channels per step.
        hidden: recurrent ALIF neurons.
        n_classes: classes, one readout neuron each.
        adaptive: adaptive threshold in the hidden layer (β = 1.8) or a fixed one (β = 0).
        warmup: leading steps left out of the loss and the accuracy.
        backend: evsnn op backend of both layers.
    """

    def __init__(
        self,
        input_size: int,
        hidden: int,
        n_classes: int,
        *,
        adaptive: bool = True,
        warmup: int = 10,
        backend: str = "auto",
    ):
        super().__init__()
        self.warmup = int(warmup)
        self.layer = enn.ALIF(input_size, hidden, tau_mem=20.0, tau_adapt=7.0, adaptive=adaptive, backend=backend)
        self.readout = enn.ALIFReadout(hidden, n_classes, tau_mem=20.0, tau_adapt=100.0, backend=backend)
        with torch.no_grad():
            nn.init.orthogonal_(self.layer.weight_hh)
            nn.init.xavier_uniform_(self.layer.weight_ih)
            nn.init.xavier_uniform_(self.readout.weight_ih)
            for b in (self.layer.bias_ih, self.layer.bias_hh, self.readout.bias_ih):
                b.zero_()

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(log_probs [T, B, classes], spikes [T, B, hidden])``."""
        spikes, _ = self.layer(x)
        v, _ = self.readout(spikes)
        return F.log_softmax(v, dim=-1), spikes

    def loss(self, log_probs: Tensor, labels: Tensor) -> Tensor:
        """NLL summed over the steps ``t ≥ warmup``, mean over the batch (``labels [B, T]``)."""
        kept = log_probs[self.warmup :]
        target = labels.t()[self.warmup :]
        return F.nll_loss(kept.reshape(-1, kept.shape[-1]), target.reshape(-1), reduction="sum") / labels.shape[0]

    def hits(self, log_probs: Tensor, labels: Tensor) -> tuple[int, int]:
        """``(correct, counted)`` per-step predictions over the steps ``t ≥ warmup``."""
        target = labels.t()[self.warmup :]
        return int((log_probs[self.warmup :].argmax(-1) == target).sum()), target.numel()

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Weights and biases at ``lr``; hidden τ at 3·lr, readout τ at 2·lr (their recipe)."""
        taus = {"layer.tau_mem": 3.0, "layer.tau_adapt": 3.0, "readout.tau_mem": 2.0, "readout.tau_adapt": 2.0}
        groups = [{"params": [p for n, p in self.named_parameters() if n not in taus], "lr": lr}]
        params = dict(self.named_parameters())
        groups += [{"params": [params[n]], "lr": lr * k} for n, k in taus.items()]
        return groups

    def layers_with_stats(self) -> list[nn.Module]:
        return [self.layer]
