"""Griffe extension: a class whose docstring is assembled at import time (``__doc__ = (...) +
SHARED_ARGS``, as the layers of ``evsnn.nn`` do to share their argument lists) gets that runtime
docstring; static analysis alone would leave it undocumented and drop it from the API pages."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import griffe


class RuntimeDocstrings(griffe.Extension):
    def on_class_instance(self, *, cls: griffe.Class, **kwargs: Any) -> None:
        if cls.docstring is not None or not cls.path.startswith("evsnn."):
            return
        try:
            obj = getattr(importlib.import_module(cls.module.path), cls.name)
        except (ImportError, AttributeError):
            return
        doc = obj.__dict__.get("__doc__")
        if doc:
            # Parse it like the statically read docstrings (the style set in mkdocs.yml).
            like = cls.module.docstring
            parser = like.parser if like is not None else None
            options = like.parser_options if like is not None else {}
            cls.docstring = griffe.Docstring(inspect.cleandoc(doc), parent=cls, parser=parser, parser_options=options)
