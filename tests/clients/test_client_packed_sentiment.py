"""A packed bidirectional LSTM sentiment classifier, as in the widely used "Upgraded Sentiment
Analysis" tutorial (pytorch-sentiment-analysis): ``pack_padded_sequence``,
``packed_output, (hidden, cell) = self.rnn(packed_embedded)``, ``pad_packed_sequence`` and
``torch.cat((hidden[-2,:,:], hidden[-1,:,:]), dim=1)``, trained with Adam and
BCEWithLogitsLoss, with only the recurrent class swapped, on small synthetic "reviews".

Truth: the same program with nn.LSTM, same data and seed. DeltaLSTM at Θ = 0 is nn.LSTM up to
float32 rounding: the first losses agree to 1e-5 relative, the whole curve to 1e-3.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import evsnn

pytestmark = pytest.mark.usefixtures("single_thread", "reference_backend")

PAD_IDX = 0


class RNN(nn.Module):
    def __init__(
        self, lstm_cls, vocab_size, embedding_dim, hidden_dim, output_dim, n_layers, bidirectional, dropout, pad_idx
    ):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=pad_idx)
        self.rnn = lstm_cls(
            embedding_dim, hidden_dim, num_layers=n_layers, bidirectional=bidirectional, dropout=dropout
        )
        self.fc = nn.Linear(hidden_dim * 2, output_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, text, text_lengths):
        # text = [sent len, batch size]
        embedded = self.dropout(self.embedding(text))
        # pack sequence; lengths need to be on CPU
        packed_embedded = nn.utils.rnn.pack_padded_sequence(embedded, text_lengths.to("cpu"))
        packed_output, (hidden, cell) = self.rnn(packed_embedded)
        # unpack sequence
        output, output_lengths = nn.utils.rnn.pad_packed_sequence(packed_output)
        # concat the final forward (hidden[-2,:,:]) and backward (hidden[-1,:,:]) hidden layers
        hidden = self.dropout(torch.cat((hidden[-2, :, :], hidden[-1, :, :]), dim=1))
        return self.fc(hidden)


def _reviews(n: int = 64, vocab: int = 30):
    """Token 1 ("good") or 2 ("bad") among random words decides the label; lengths 3..12, sorted
    longest first within each batch (the tutorial's BucketIterator with sort_within_batch)."""
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(n // 16):
        lengths = torch.randint(3, 13, (16,), generator=g).sort(descending=True).values
        label = torch.randint(0, 2, (16,), generator=g)
        text = torch.full((int(lengths[0]), 16), PAD_IDX)
        for b, n_words in enumerate(lengths.tolist()):
            words = torch.randint(3, vocab, (n_words,), generator=g)
            words[torch.randint(0, n_words, (1,), generator=g)] = 1 if label[b] else 2
            text[:n_words, b] = words
        batches.append((text, lengths, label.float()))
    return batches


def binary_accuracy(preds, y):
    rounded_preds = torch.round(torch.sigmoid(preds))
    correct = (rounded_preds == y).float()
    return correct.sum() / len(correct)


def train_losses(lstm_cls, epochs=3):
    torch.manual_seed(2)
    model = RNN(lstm_cls, 30, 16, 12, 1, 2, True, 0.0, PAD_IDX)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    criterion = nn.BCEWithLogitsLoss()
    losses = []
    for _ in range(epochs):
        model.train()
        for text, text_lengths, label in _reviews():
            optimizer.zero_grad()
            predictions = model(text, text_lengths).squeeze(1)
            loss = criterion(predictions, label)
            binary_accuracy(predictions, label)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return torch.tensor(losses)


def test_delta_lstm_follows_the_torch_loss_curve():
    expected = train_losses(nn.LSTM)
    got = train_losses(evsnn.DeltaLSTM)
    torch.testing.assert_close(got[:3], expected[:3], rtol=1e-5, atol=0)
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=0)
    assert expected[-3:].mean() < expected[:3].mean()
