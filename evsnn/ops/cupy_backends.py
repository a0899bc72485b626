"""Registers the CuPy backends of every family with the dispatcher.

Each family's CuPy op lives in its own module (``egru_cupy``, ``alif_cupy``, ``delta_cupy``);
importing one registers it. CuPy itself is imported lazily inside them, so this import is cheap
and works on machines without CuPy (their ``check`` then says why they cannot run).
"""

from __future__ import annotations

import importlib
import importlib.util

FAMILY_MODULES = ("egru_cupy", "alif_cupy", "delta_cupy")

for _name in FAMILY_MODULES:
    if importlib.util.find_spec(f"{__package__}.{_name}") is not None:
        importlib.import_module(f"{__package__}.{_name}")
