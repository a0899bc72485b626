"""``torch.compile`` marks that do not import Dynamo at evsnn's import.

``torch.compiler.assume_constant_result`` and ``torch.compiler.disable`` import ``torch._dynamo``
(about a second, more on a loaded machine) when they decorate a function. evsnn marks its
functions at import time, and most programs never compile, so ``import evsnn.nn`` and a first
forward pass would pay that second for nothing. Here:

- `assume_constant_result` sets the attribute Dynamo reads (what
  ``torch._dynamo.assume_constant_result`` itself does);
- `compile_opaque` calls the function directly unless Dynamo is tracing the call, and behind
  ``torch.compiler.disable`` (created on that first traced call) when it is.

``tests/ops/test_compile.py`` compiles the layers through both, so a PyTorch release that reads
other marks fails there.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["assume_constant_result", "compile_opaque"]


def assume_constant_result(fn: F) -> F:
    """Dynamo takes ``fn()``'s result as a constant of the trace instead of tracing into ``fn``
    (``torch.compiler.assume_constant_result`` without importing Dynamo)."""
    fn._dynamo_marked_constant = True  # type: ignore[attr-defined]
    return fn


def compile_opaque(fn: F) -> F:
    """``fn``, run eagerly behind one graph break when a compiled program calls it
    (``torch.compiler.disable(fn)``), without importing Dynamo until something compiles."""
    disabled: list[Callable[..., Any]] = []

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        if not torch.compiler.is_compiling():
            return fn(*args, **kwargs)
        if not disabled:
            disabled.append(torch.compiler.disable(fn))
        return disabled[0](*args, **kwargs)

    return call  # type: ignore[return-value]
