"""PyTorch examples' time_sequence_prediction (``train.py``'s Sequence: two stacked LSTMCells
looped over time in float64, ``h_t, c_t = self.lstm1(input_t, (h_t, c_t))``, predicting sine
waves, trained with LBFGS), and the same loop with GRUCells (``h_t = self.gru1(input_t, h_t)``),
with only the cell class swapped; fewer, shorter waves and steps.

Truth: the same program with nn.LSTMCell / nn.GRUCell, same data and seed. The delta cells at
Θ = 0 are those cells up to float64 rounding (1e-8 relative on each loss leaves room for it to
grow through LBFGS's line searches). EGRUCell is a different model: it must run and its loss
decrease.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.optim as optim

import evsnn

pytestmark = pytest.mark.usefixtures("single_thread", "reference_backend")


class Sequence(nn.Module):
    def __init__(self, lstm_cell):
        super().__init__()
        self.lstm1 = lstm_cell(1, 51)
        self.lstm2 = lstm_cell(51, 51)
        self.linear = nn.Linear(51, 1)

    def forward(self, input, future=0):
        outputs = []
        h_t = torch.zeros(input.size(0), 51, dtype=torch.double)
        c_t = torch.zeros(input.size(0), 51, dtype=torch.double)
        h_t2 = torch.zeros(input.size(0), 51, dtype=torch.double)
        c_t2 = torch.zeros(input.size(0), 51, dtype=torch.double)

        for input_t in input.split(1, dim=1):
            h_t, c_t = self.lstm1(input_t, (h_t, c_t))
            h_t2, c_t2 = self.lstm2(h_t, (h_t2, c_t2))
            output = self.linear(h_t2)
            outputs += [output]
        for i in range(future):  # noqa: B007  (as in the example) if we should predict the future
            h_t, c_t = self.lstm1(output, (h_t, c_t))
            h_t2, c_t2 = self.lstm2(h_t, (h_t2, c_t2))
            output = self.linear(h_t2)
            outputs += [output]
        outputs = torch.cat(outputs, dim=1)
        return outputs


class GRUSequence(nn.Module):
    """The same model with GRUCells: one hidden state per cell."""

    def __init__(self, gru_cell):
        super().__init__()
        self.gru1 = gru_cell(1, 51)
        self.gru2 = gru_cell(51, 51)
        self.linear = nn.Linear(51, 1)

    def forward(self, input, future=0):
        outputs = []
        h_t = torch.zeros(input.size(0), 51, dtype=torch.double)
        h_t2 = torch.zeros(input.size(0), 51, dtype=torch.double)

        for input_t in input.split(1, dim=1):
            h_t = self.gru1(input_t, h_t)
            h_t2 = self.gru2(h_t, h_t2)
            output = self.linear(h_t2)
            outputs += [output]
        for i in range(future):  # noqa: B007  (as in the example) if we should predict the future
            h_t = self.gru1(output, h_t)
            h_t2 = self.gru2(h_t, h_t2)
            output = self.linear(h_t2)
            outputs += [output]
        outputs = torch.cat(outputs, dim=1)
        return outputs


def _waves():
    """generate_sine_wave.py, smaller: 12 shifted sine waves of 60 steps."""
    np.random.seed(2)
    T, L, N = 20, 60, 12
    x = np.empty((N, L), "int64")
    x[:] = np.array(range(L)) + np.random.randint(-4 * T, 4 * T, N).reshape(N, 1)
    return torch.from_numpy(np.sin(x / 1.0 / T).astype("float64"))


def train_losses(model_cls, cell_cls, steps=3, lr=0.8):
    np.random.seed(0)
    torch.manual_seed(0)
    data = _waves()
    input = data[3:, :-1]
    target = data[3:, 1:]
    seq = model_cls(cell_cls)
    seq.double()
    criterion = nn.MSELoss()
    optimizer = optim.LBFGS(seq.parameters(), lr=lr, max_iter=5)
    losses = []
    for i in range(steps):  # noqa: B007  (train.py prints it)

        def closure():
            optimizer.zero_grad()
            out = seq(input)
            loss = criterion(out, target)
            losses.append(loss.item())
            loss.backward()
            return loss

        optimizer.step(closure)
    return torch.tensor(losses)


@pytest.mark.parametrize(
    "model_cls,ours,theirs",
    [(Sequence, evsnn.DeltaLSTMCell, nn.LSTMCell), (GRUSequence, evsnn.DeltaGRUCell, nn.GRUCell)],
)
def test_delta_cells_follow_the_torch_loss_curve(model_cls, ours, theirs):
    expected = train_losses(model_cls, theirs)
    got = train_losses(model_cls, ours)
    torch.testing.assert_close(got, expected, rtol=1e-8, atol=0)
    assert expected[-1] < expected[0]


def test_egru_cell_runs_the_program_and_learns():
    losses = train_losses(GRUSequence, evsnn.EGRUCell, lr=0.1)  # at the example's 0.8 LBFGS overshoots EGRU
    assert torch.isfinite(losses).all()
    assert (losses.diff() <= 0).all() and losses[-1] < losses[0] - 3e-3, losses
