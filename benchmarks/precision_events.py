"""How often events differ from float32 under bf16/fp16 autocast (SPEC.md §6, docs/precision.md).

Fixed task: ALIF, EGRU and DeltaGRU (Θ_x = Θ_h = 0.2) at default initialisation, input
``2·N(0, 1)`` of shape T = 100, B = 8, I = 64, H = 128, seed 0. Events: ALIF spikes, EGRU
``y ≠ 0``, DeltaGRU ``Δh ≠ 0``. For each backend the low-precision run is compared with

- ``vs rounded``: the float32 reference (backend "torch", no autocast) on the same operands
  rounded to the low dtype (input, weights, biases) — isolates the low-precision products;
- ``vs float32``: the plain float32 run of the same layer — what switching autocast on changes.

Run: ``OMP_NUM_THREADS=1 python benchmarks/precision_events.py``
"""

from __future__ import annotations

import copy
import warnings

import torch

import evsnn
from evsnn.ops import dispatch

T, B, IN, H = 100, 8, 64, 128
THETA = 0.2


def _events(layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The boolean event positions ``[T, B, H]`` of one forward pass."""
    if isinstance(layer, evsnn.DeltaGRU):
        # Δh positions come from the scan's trace: run the backend the layer would run.
        backend = dispatch.resolve(
            "delta_gru", layer.backend, device=x.device, dtype=x.dtype, theta_x=THETA, theta_h=THETA, shape=(T, B, H)
        )
        _, _, trace = backend.fn(
            x, None, layer.weight_ih, layer.weight_hh, layer.bias_ih, layer.bias_hh, theta_x=THETA, theta_h=THETA
        )
        return trace.delta_h != 0
    out, _ = layer(x)
    return out != 0


def _rounded(layer: torch.nn.Module, low: torch.dtype) -> torch.nn.Module:
    ref = copy.deepcopy(layer)
    ref.backend = "torch"
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.startswith(("weight", "bias")):
                p.copy_(p.to(low).float())
    return ref


def main() -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    makers = {
        "ALIF": lambda b: evsnn.ALIF(IN, H, backend=b),
        "EGRU": lambda b: evsnn.EGRU(IN, H, backend=b),
        "DeltaGRU": lambda b: evsnn.DeltaGRU(IN, H, theta_x=THETA, theta_h=THETA, backend=b),
    }
    print(f"T={T} B={B} I={IN} H={H}, torch {torch.__version__}, CPU")
    print(f"{'layer':9s} {'backend':9s} {'dtype':9s} {'activity':>8s} {'vs rounded':>11s} {'vs float32':>11s}")
    for name, make in makers.items():
        for backend in ("torch", "cpu_event"):
            torch.manual_seed(0)
            layer = make(backend)
            x = 2.0 * torch.randn(T, B, IN)
            with torch.no_grad():
                plain = _events(_rounded(layer, torch.float32), x)
                for low in (torch.bfloat16, torch.float16):
                    with torch.autocast("cpu", low):
                        events = _events(layer, x)
                    rounded = _events(_rounded(layer, low), x.to(low).float())
                    d_round = (events != rounded).float().mean().item()
                    d_plain = (events != plain).float().mean().item()
                    act = plain.float().mean().item()
                    short = str(low).removeprefix("torch.")
                    print(f"{name:9s} {backend:9s} {short:9s} {act:8.3f} {d_round:11.2e} {d_plain:11.2e}")


if __name__ == "__main__":
    main()
