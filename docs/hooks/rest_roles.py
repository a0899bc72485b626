"""MkDocs hook: a page showing a reST role (``:class:`x```, as Sphinx writes it) or a Markdown-escaped
``:func:`` left in a docstring is a warning, so ``mkdocs build --strict`` fails on it.

mkdocstrings renders docstrings as Markdown, where a role shows up verbatim; the fix is
``python docs/tools/convert_roles.py``, which rewrites roles as Markdown cross-references.
"""

from __future__ import annotations

import logging
import re

# A role once Markdown has turned its backticks into a code element, or left them as they were.
RENDERED_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|data|mod|exc|obj|const|type):(?:`|<code>)")

log = logging.getLogger("mkdocs.hooks.rest_roles")


def raw_roles(html: str) -> list[str]:
    """Each reST role in ``html``, with a little context."""
    return [html[max(0, m.start() - 30) : m.end() + 40] for m in RENDERED_ROLE.finditer(html)]


def on_page_content(html: str, page, config, files) -> str:
    found = raw_roles(html)
    if found:
        log.warning(
            "%s shows %d reST role(s), first %r: run python docs/tools/convert_roles.py",
            page.file.src_uri,
            len(found),
            found[0],
        )
    return html
