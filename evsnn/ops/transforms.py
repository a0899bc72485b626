"""Which autograd transforms the accelerated backends run, and the errors for those they cannot.

The ``"cpu_event"`` and ``"cupy"`` kernels are ``torch.library`` custom ops with a registered
first-order backward (a kernel of its own) and nothing else: no forward-mode (JVP) rule, no
functorch rule for ``torch.func.grad``/``vjp``, no derivative of the backward. The reference
(``backend="torch"``) is differentiable torch ops and runs every transform. docs/transforms.md
has the table; the rules:

- a call under ``torch.func.grad``/``vjp``/``jacrev``/``jacfwd``/``hessian``/``jvp`` or under
  ``torch.autograd.forward_ad.dual_level`` (`active_transform`) runs on the reference when
  the backend is ``"auto"`` (one warning per family and transform; the reference is the only path
  that computes such a call) and is refused with [`BackendUnavailable`][evsnn.ops.dispatch.BackendUnavailable]
  when an accelerated backend was asked for by name;
- ``torch.func.vmap`` alone runs the accelerated kernels (PyTorch loops them over the mapped
  dimension), as does ``torch.func.functionalize``;
- a backward with ``create_graph=True`` through an accelerated kernel raises
  `refuse_double_backward`'s error: the forward had already run when the request for a
  second derivative comes, so only the layer's backend can change it.
"""

from __future__ import annotations

from typing import Any

import torch

from .compile_marks import assume_constant_result

__all__ = ["active_transform", "refuse_double_backward", "DOUBLE_BACKWARD_HINT"]

# functorch transform types that need a derivative rule of the op (vmap and functionalize do not).
_NEEDS_RULE = {"Grad": "torch.func.grad/vjp/jacrev", "Jvp": "torch.func.jvp/jacfwd"}

DOUBLE_BACKWARD_HINT = (
    "build the layer with backend='torch' (or set the environment variable EVSNN_BACKEND=torch), "
    "whose reference ops have every derivative"
)


def _functorch_transforms() -> list[str]:
    if torch._C._functorch.maybe_current_level() is None:
        return []
    try:
        from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters
    except ImportError:  # a torch without the interpreter listing: any level may need a rule
        return [_NEEDS_RULE["Grad"]]
    return [_NEEDS_RULE[i.key().name] for i in retrieve_all_functorch_interpreters() if i.key().name in _NEEDS_RULE]


# A compiled graph takes the answer as a constant of its trace (torch.compile guards on the
# functorch state of the frame itself) instead of tracing into functorch's interpreter stack.
@assume_constant_result
def active_transform() -> str | None:
    """The name of the active autograd transform that the accelerated kernels cannot run
    (``"torch.func.grad/vjp/jacrev"``, ``"torch.func.jvp/jacfwd"`` or
    ``"forward-mode AD (torch.autograd.forward_ad)"``), or ``None`` when there is none (no
    transform, or only ``vmap``/``functionalize``, which run custom ops as they are)."""
    names = _functorch_transforms()
    if names:
        return names[-1]
    if torch.autograd.forward_ad._current_level >= 0:
        return "forward-mode AD (torch.autograd.forward_ad)"
    return None


def refuse_double_backward(backend: str, family: str, *tensors: Any) -> None:
    """Raise when a backward through the ``backend`` kernels of ``family`` records a graph
    (``create_graph=True``: grad mode is on inside the backward) that reaches a tensor needing a
    gradient: the kernel's backward has no derivative of its own, and PyTorch's error would name
    the internal op only."""
    if not torch.is_grad_enabled():
        return
    if not any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors):
        return
    raise RuntimeError(
        f"evsnn: the {backend} {family} kernels have a first-order backward only; a backward with "
        "create_graph=True (double backward, torch.autograd.functional.hessian, a gradient penalty) "
        f"cannot differentiate it: {DOUBLE_BACKWARD_HINT}"
    )
