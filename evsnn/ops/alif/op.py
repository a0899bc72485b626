"""ALIF's accelerated scans as ``torch.library`` custom ops (SPEC §2), so that ``torch.compile`` sees
one opaque op per call (no graph break) and can trace shapes through its fake kernel.

``evsnn::alif_scan_cpu``: the ``"cpu_event"`` inference scan (:class:`~evsnn.ops.alif.cpu.ALIFRunner`);
:func:`~evsnn.ops.alif.cpu.alif_scan_cpu` calls it when no gradient is recorded. The state is
flattened to tensors (custom ops take no NamedTuples), ``b0``/``beta`` come as tensors, and every
output is a fresh tensor (no output aliases an input). Not differentiable: a call that records
gradients runs the training path instead.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...functional.alif import ALIFState
from ...functional.precision import state_dtype
from .cpu import ALIFRunner

__all__ = ["alif_scan_cpu_op"]


@torch.library.custom_op("evsnn::alif_scan_cpu", mutates_args=(), device_types="cpu")
def alif_scan_cpu_op(
    current: Tensor,
    v: Tensor,
    b: Tensor,
    s: Tensor,
    tau_mem: Tensor,
    tau_adapt: Tensor,
    b0: Tensor,
    beta: Tensor,
    weight_hh: Tensor | None,
    bias_hh: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """ALIF inference over ``current [T, B, N]`` from the state ``(v, b, s)``; returns
    ``(spikes, v_T, b_T, s_T, v_seq, threshold_seq)`` (sequences ``[T, B, N]``, state ``[B, N]``)."""
    runner = ALIFRunner(tau_mem=tau_mem, tau_adapt=tau_adapt, b0=b0, beta=beta, weight_hh=weight_hh, bias_hh=bias_hh)
    runner.load(ALIFState(v, b, s))
    spikes, vs, thresholds = runner.run(current)
    v_final, b_final, s_final = runner.state()
    return spikes, v_final, b_final, s_final, vs, thresholds


@alif_scan_cpu_op.register_fake
def _(current, v, b, s, tau_mem, tau_adapt, b0, beta, weight_hh, bias_hh):
    # The runner computes in float32 for a bfloat16/float16 current (SPEC §6), else in its dtype.
    dtype = state_dtype(current.dtype)
    seq = current.new_empty(current.shape, dtype=dtype)
    state = [t.new_empty(current.shape[1:], dtype=dtype) for t in (v, b, s)]
    return seq, *state, torch.empty_like(seq), torch.empty_like(seq)
