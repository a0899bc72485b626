"""Accelerated multi-step ops behind one dispatch point ([`evsnn.ops.dispatch`][evsnn.ops.dispatch])."""

from .dispatch import BACKENDS, ENV_VAR, Backend, BackendUnavailable, register, resolve, validate_backend

__all__ = ["BACKENDS", "ENV_VAR", "Backend", "BackendUnavailable", "register", "resolve", "validate_backend"]
