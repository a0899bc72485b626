"""PyTorch examples' mnist_rnn (``main.py``'s Net: an LSTM over the 28 rows of an image,
``batch_first=True``, the last step ``output[:, -1, :]``, BatchNorm, dropout, Adadelta with
StepLR) with only the recurrent class swapped, on a small synthetic image set with 10 classes.

Truth: the same program with nn.LSTM, same data and seed. DeltaLSTM at Θ = 0 is nn.LSTM up to
float32 rounding: the first losses agree to 1e-5 relative, the whole curve to 1e-3 (that
rounding grown over the optimiser steps).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.lr_scheduler import StepLR

import evsnn

pytestmark = [
    pytest.mark.usefixtures("single_thread", "reference_backend"),
    pytest.mark.filterwarnings("ignore:dropout2d"),
]


class Net(nn.Module):
    def __init__(self, lstm_cls):
        super().__init__()
        self.rnn = lstm_cls(input_size=28, hidden_size=64, batch_first=True)
        self.batchnorm = nn.BatchNorm1d(64)
        self.dropout1 = nn.Dropout2d(0.25)
        self.dropout2 = nn.Dropout2d(0.5)
        self.fc1 = nn.Linear(64, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, input):
        # Shape of input is (batch_size,1, 28, 28)
        # converting shape of input to (batch_size, 28, 28)
        # as required by RNN when batch_first is set True
        input = input.reshape(-1, 28, 28)
        output, hidden = self.rnn(input)

        # RNN output shape is (seq_len, batch, input_size)
        # Get last output of RNN
        output = output[:, -1, :]
        output = self.batchnorm(output)
        output = self.dropout1(output)
        output = self.fc1(output)
        output = F.relu(output)
        output = self.dropout2(output)
        output = self.fc2(output)
        output = F.log_softmax(output, dim=1)
        return output


def _images(n: int = 96):
    """Digits stand-in: class k lights rows 2k..2k+3 of a noisy 28×28 image."""
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 10, (n,), generator=g)
    data = 0.3 * torch.randn(n, 1, 28, 28, generator=g)
    for i, k in enumerate(target.tolist()):
        data[i, 0, 2 * k : 2 * k + 4] += 1.0
    return data, target


def train_losses(lstm_cls, epochs=2):
    torch.manual_seed(1)
    data, target = _images()
    model = Net(lstm_cls)
    optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0)
    scheduler = StepLR(optimizer, step_size=1, gamma=0.7)
    losses = []
    for _ in range(epochs):
        model.train()
        for batch_idx in range(0, data.shape[0], 16):
            x, y = data[batch_idx : batch_idx + 16], target[batch_idx : batch_idx + 16]
            optimizer.zero_grad()
            output = model(x)
            loss = F.nll_loss(output, y)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        scheduler.step()
    return torch.tensor(losses)


def test_delta_lstm_follows_the_torch_loss_curve():
    expected = train_losses(nn.LSTM)
    got = train_losses(evsnn.DeltaLSTM)
    torch.testing.assert_close(got[:3], expected[:3], rtol=1e-5, atol=0)
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=0)
    assert expected[-3:].mean() < expected[:3].mean()
