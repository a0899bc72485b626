"""Draw the neuron-dynamics figures of the neuron pages (docs/img/*_dynamics.png) from the
reference scans of evsnn.functional, so the figures show what the library computes.

Run from the repository root: ``python docs/figures/neuron_dynamics.py [--format png|svg|pdf]``.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from evsnn.functional import alif_scan, delta_gru_scan, egru_scan  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "img"
# A two-column figure at 8-pt text: readable on a page and in a slide.
FIGSIZE = (7.0, 4.2)
plt.rcParams.update({"font.size": 8, "axes.titlesize": 8, "legend.fontsize": 7})


def alif_figure() -> plt.Figure:
    """One ALIF neuron (SPEC defaults b0 = 0.01, β = 1.8, τ_m = 20, τ_adp = 150) driven by a step current."""
    steps = 400
    current = torch.zeros(steps, 1, 1, dtype=torch.float64)
    current[50:300] = 0.06
    spikes, _, trace = alif_scan(
        current,
        None,
        tau_mem=torch.tensor([20.0], dtype=torch.float64),
        tau_adapt=torch.tensor([150.0], dtype=torch.float64),
        b0=0.01,
        beta=1.8,
    )
    t = torch.arange(steps)
    fig, (ax_i, ax_v, ax_s) = plt.subplots(
        3, 1, figsize=FIGSIZE, sharex=True, layout="constrained", gridspec_kw={"height_ratios": [1, 2.5, 0.8]}
    )
    ax_i.plot(t, current[:, 0, 0], color="tab:gray")
    ax_i.set_ylabel("input current $I_t$")
    ax_v.plot(t, trace.v[:, 0, 0], label="membrane $v_t$", linewidth=1.0)
    ax_v.plot(t, trace.threshold[:, 0, 0], label="adaptive threshold $B_t = b_0 + \\beta b_t$", linestyle="--")
    ax_v.set_ylabel("potential")
    ax_v.legend(loc="upper left")
    spike_times = torch.nonzero(spikes[:, 0, 0]).flatten()
    ax_s.vlines(spike_times, 0, 1, color="black", linewidth=0.8)
    ax_s.set_yticks([])
    ax_s.set_ylabel("spikes $s_t$")
    ax_s.set_xlabel("time step")
    isi = spike_times.diff().float()
    ax_v.set_title(
        f"ALIF: {len(spike_times)} spikes; the interval between spikes grows from {int(isi[0])} to "
        f"{int(isi[-1])} steps as the threshold adapts"
    )
    return fig


def egru_figure() -> plt.Figure:
    """One EGRU unit (θ = 0.3, reset="output") with hand-set weights driven by a slow sine."""
    steps = 200
    t = torch.arange(steps, dtype=torch.float64)
    x = (0.5 + torch.sin(2 * math.pi * t / 100)).reshape(steps, 1, 1)
    # Gates r, z, n (nn.GRU order): z near 0.5 so c follows n with memory; n driven by x.
    weight_ih = torch.tensor([[0.0], [0.0], [1.5]], dtype=torch.float64)
    weight_hh = torch.zeros(3, 1, dtype=torch.float64)
    bias_ih = torch.tensor([0.0, 1.5, 0.0], dtype=torch.float64)
    theta = torch.tensor([0.3], dtype=torch.float64)
    y, _, trace = egru_scan(x, None, weight_ih, weight_hh, bias_ih, None, theta, reset="output")
    fig, (ax_x, ax_c, ax_y) = plt.subplots(
        3, 1, figsize=FIGSIZE, sharex=True, layout="constrained", gridspec_kw={"height_ratios": [1, 2.5, 1.5]}
    )
    ax_x.plot(t, x[:, 0, 0], color="tab:gray")
    ax_x.set_ylabel("input $x_t$")
    ax_c.plot(t, trace.c_pre[:, 0, 0], label="internal state $c_t$", linewidth=1.0)
    ax_c.axhline(0.3, linestyle="--", color="tab:orange", label="threshold $\\vartheta$")
    ax_c.set_ylabel("state")
    ax_c.legend(loc="lower left")
    events = y[:, 0, 0]
    idx = torch.nonzero(events).flatten()
    ax_y.vlines(idx, 0, events[idx], color="black", linewidth=1.0)
    ax_y.set_ylabel("event output $y_t$")
    ax_y.set_xlabel("time step")
    ax_c.set_title(
        f"EGRU: {len(idx)} events in {steps} steps ({100 * len(idx) / steps:.0f} % activity); "
        "each event carries the value of $c_t$ and is subtracted from it"
    )
    return fig


def delta_figure() -> plt.Figure:
    """One-input, one-unit DeltaGRU (Θ_x = 0.1, Θ_h = 0.05): what is transmitted and remembered."""
    steps = 150
    g = torch.Generator().manual_seed(0)
    t = torch.arange(steps, dtype=torch.float64)
    x = torch.sin(2 * math.pi * t / 75) + 0.03 * torch.randn(steps, generator=g, dtype=torch.float64)
    x = x.reshape(steps, 1, 1)
    weight_ih = torch.tensor([[0.5], [0.5], [2.0]], dtype=torch.float64)
    weight_hh = torch.tensor([[0.0], [0.0], [0.5]], dtype=torch.float64)
    h, _, trace = delta_gru_scan(x, None, weight_ih, weight_hh, None, None, theta_x=0.1, theta_h=0.05)
    x_hat = trace.delta_x.cumsum(0)
    # trace.delta_h[t] is Δh_{t−1}, the hidden delta used at step t; ĥ_{t−1} is its running sum.
    h_hat_prev = trace.delta_h.cumsum(0)
    fig, axes = plt.subplots(
        4, 1, figsize=(7.0, 5.0), sharex=True, layout="constrained", gridspec_kw={"height_ratios": [2, 1, 2, 1]}
    )
    ax_x, ax_dx, ax_h, ax_dh = axes
    ax_x.plot(t, x[:, 0, 0], color="tab:gray", label="input $x_t$", linewidth=1.0)
    ax_x.step(t, x_hat[:, 0, 0], where="post", label="input memory $\\hat{x}_t$")
    ax_x.legend(loc="upper right")
    ax_x.set_ylabel("input")
    dx = trace.delta_x[:, 0, 0]
    idx = torch.nonzero(dx).flatten()
    ax_dx.vlines(idx, 0, dx[idx], color="tab:red", linewidth=1.0)
    ax_dx.axhline(0, color="black", linewidth=0.5)
    ax_dx.set_ylabel("$\\Delta x_t$")
    ax_h.plot(t, h[:, 0, 0], color="tab:gray", label="hidden state $h_t$", linewidth=1.0)
    ax_h.step(t[:-1], h_hat_prev[1:, 0, 0], where="post", label="hidden memory $\\hat{h}_t$")
    ax_h.legend(loc="upper right")
    ax_h.set_ylabel("hidden")
    dh = trace.delta_h[1:, 0, 0]
    idh = torch.nonzero(dh).flatten()
    ax_dh.vlines(idh, 0, dh[idh], color="tab:red", linewidth=1.0)
    ax_dh.axhline(0, color="black", linewidth=0.5)
    ax_dh.set_ylabel("$\\Delta h_t$")
    ax_dh.set_xlabel("time step")
    ax_x.set_title(
        f"DeltaGRU: {len(idx)} of {steps} input changes and {len(idh)} of {steps - 1} hidden changes "
        "cross their thresholds and are sent"
    )
    return fig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--format", default="png", choices=["png", "svg", "pdf"])
    parser.add_argument("--dpi", type=int, default=150)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name, make in (("alif", alif_figure), ("egru", egru_figure), ("delta", delta_figure)):
        path = OUT / f"{name}_dynamics.{args.format}"
        make().savefig(path, dpi=args.dpi)
        print(path)


if __name__ == "__main__":
    main()
