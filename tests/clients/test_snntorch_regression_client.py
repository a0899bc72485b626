"""snntorch's regression tutorials as their authors wrote them, the classes swapped: part 1's
network (random per-neuron ``beta`` and ``threshold``, ``learn_beta=True``, a leaky-integrator
output with ``reset_mechanism="none"`` whose membrane is the prediction, MSE, Adam) and a
recurrent variant with ``snn.RLeaky(linear_features=...)`` in the hidden layer (part 2's
neuron), on synthetic sine targets. ``snn.Leaky`` becomes evsnn's ALIF, ``snn.RLeaky`` its RALIF;
same seed, same data, and the swap must fit as well."""

from __future__ import annotations

import math

import pytest
import snntorch as snn
import torch
from snntorch import surrogate

from evsnn.interop import snntorch as esnn


def sine_targets(num_samples: int = 16, timesteps: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs: a constant drive per sample; targets: a sine whose frequency it sets, ``[T, B, 1]``."""
    g = torch.Generator().manual_seed(0)
    drive = 0.5 + torch.rand(num_samples, generator=g)
    t = torch.arange(timesteps, dtype=torch.float32)[:, None]
    x = drive[None, :, None].expand(timesteps, num_samples, 1).contiguous()
    y = torch.sin(2 * math.pi * t * drive[None, :] / timesteps)[..., None]
    return x, y


def build(Leaky, RLeaky, recurrent: bool, timesteps: int, hidden: int = 32) -> torch.nn.Module:
    class Net(torch.nn.Module):
        """spiking neural network in snntorch."""

        def __init__(self, timesteps, hidden):
            super().__init__()

            self.timesteps = timesteps  # number of time steps to simulate the network
            self.hidden = hidden  # number of hidden neurons
            spike_grad = surrogate.fast_sigmoid()  # surrogate gradient function

            # randomly initialize decay rate and threshold for layer 1
            beta_in = torch.rand(self.hidden)
            thr_in = torch.rand(self.hidden)

            # layer 1
            self.fc_in = torch.nn.Linear(in_features=1, out_features=self.hidden)
            self.lif_in = Leaky(beta=beta_in, threshold=thr_in, learn_beta=True, spike_grad=spike_grad)

            # randomly initialize decay rate and threshold for layer 2
            beta_hidden = torch.rand(self.hidden)
            thr_hidden = torch.rand(self.hidden)

            # layer 2
            self.fc_hidden = torch.nn.Linear(in_features=self.hidden, out_features=self.hidden)
            if recurrent:
                self.lif_hidden = RLeaky(
                    beta=beta_hidden,
                    threshold=thr_hidden,
                    learn_beta=True,
                    spike_grad=spike_grad,
                    linear_features=self.hidden,
                )
            else:
                self.lif_hidden = Leaky(beta=beta_hidden, threshold=thr_hidden, learn_beta=True, spike_grad=spike_grad)

            # randomly initialize decay rate for output neuron
            beta_out = torch.rand(1)

            # layer 3: leaky integrator neuron. Note the reset mechanism is disabled and we will disregard output spikes.
            self.fc_out = torch.nn.Linear(in_features=self.hidden, out_features=1)
            self.li_out = Leaky(
                beta=beta_out, threshold=1.0, learn_beta=True, spike_grad=spike_grad, reset_mechanism="none"
            )

        def forward(self, x):
            """Forward pass for several time steps."""

            # Initalize membrane potential
            mem_1 = self.lif_in.init_leaky()
            if recurrent:
                spk_2, mem_2 = self.lif_hidden.init_rleaky()
            else:
                mem_2 = self.lif_hidden.init_leaky()
            mem_3 = self.li_out.init_leaky()

            # Empty lists to record outputs
            mem_3_rec = []

            # Loop over
            for step in range(self.timesteps):
                x_timestep = x[step, :, :]

                cur_in = self.fc_in(x_timestep)
                spk_in, mem_1 = self.lif_in(cur_in, mem_1)

                cur_hidden = self.fc_hidden(spk_in)
                if recurrent:
                    spk_2, mem_2 = self.lif_hidden(cur_hidden, spk_2, mem_2)
                else:
                    spk_2, mem_2 = self.lif_hidden(cur_hidden, mem_2)

                cur_out = self.fc_out(spk_2)
                _, mem_3 = self.li_out(cur_out, mem_3)

                mem_3_rec.append(mem_3)

            return torch.stack(mem_3_rec)

    return Net(timesteps, hidden)


def train(Leaky, RLeaky, recurrent: bool, num_iter: int = 60) -> list[float]:
    x, y = sine_targets()
    torch.manual_seed(0)
    model = build(Leaky, RLeaky, recurrent, x.shape[0])
    optimizer = torch.optim.Adam(params=model.parameters(), lr=1e-2)
    loss_function = torch.nn.MSELoss()
    loss_hist = []
    for _ in range(num_iter):
        mem = model(x)
        loss = loss_function(mem, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss_hist.append(loss.item())
    return loss_hist


@pytest.mark.parametrize("recurrent", [False, True])
def test_regression_tutorial_with_alif_fits_as_the_original(single_thread, recurrent):
    original = train(snn.Leaky, snn.RLeaky, recurrent)
    swapped = train(esnn.ALIF, esnn.RALIF, recurrent)
    assert sum(swapped[-5:]) < 0.5 * sum(swapped[:5]), swapped
    # Adaptation changes the hidden spikes, so the curves differ: the swap's final loss may exceed
    # the original's by 10 % at most. Measured at seed 0 (mean of the last three iterations):
    # feed-forward 0.25 for the swap against 0.45, recurrent 0.10 against 0.42.
    assert sum(swapped[-5:]) <= 1.10 * sum(original[-5:]), (swapped[-5:], original[-5:])
