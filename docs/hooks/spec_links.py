"""MkDocs hook: a docstring's "SPEC.md §2" or "SPEC §2" becomes a link to that section of the
specification page, so the API reference points at the equations it implements.

Docstrings stay plain text (they are read in editors and ``help()`` too); the link is added to
the rendered HTML of every page except the specification itself.
"""

from __future__ import annotations

import re
from pathlib import Path

SPEC_PAGE = "SPEC.md"
# "SPEC.md §2", "SPEC §6", "SPEC.md's §4"; not inside a tag (the text between > and <).
_REFERENCE = re.compile(r"SPEC(?:\.md)?(?:'s)? §(?P<section>\d+)")
_HEADING = re.compile(r"^## (?P<section>\d+)\. .+$", re.M)
_TAG = re.compile(r"(<[^>]*>)")
_SKIPPED_ELEMENTS = re.compile(r"<(a|code|pre)\b[^>]*>.*?</\1>", re.S)


def section_anchors(spec_markdown: str, slugify) -> dict[str, str]:
    """Section number → anchor id of each ``## N. Title`` heading of the specification."""
    return {m.group("section"): slugify(m.group(0)[3:], "-") for m in _HEADING.finditer(spec_markdown)}


def link_spec_references(html: str, spec_url: str, anchors: dict[str, str]) -> str:
    """``html`` with every SPEC section reference in its text (outside links and code) linked."""

    def link(ref: re.Match[str]) -> str:
        anchor = anchors.get(ref.group("section"))
        if anchor is None:
            return ref.group(0)
        return f'<a href="{spec_url}#{anchor}">{ref.group(0)}</a>'

    def link_text(fragment: str) -> str:
        # Tags are left alone; only the text between them is searched.
        parts = _TAG.split(fragment)
        return "".join(part if part.startswith("<") else _REFERENCE.sub(link, part) for part in parts)

    pieces, last = [], 0
    for skipped in _SKIPPED_ELEMENTS.finditer(html):
        pieces.append(link_text(html[last : skipped.start()]))
        pieces.append(skipped.group(0))
        last = skipped.end()
    pieces.append(link_text(html[last:]))
    return "".join(pieces)


def _slugify(config):
    toc = config["mdx_configs"].get("toc", {})
    if "slugify" in toc:
        return toc["slugify"]
    from markdown.extensions.toc import slugify

    return slugify


def on_page_content(html: str, page, config, files) -> str:
    if page.file.src_uri == SPEC_PAGE:
        return html
    from mkdocs.utils import get_relative_url

    spec = files.get_file_from_path(SPEC_PAGE)
    if spec is None:
        return html
    text = (Path(config["docs_dir"]) / SPEC_PAGE).read_text(encoding="utf-8")
    anchors = section_anchors(text, _slugify(config))
    return link_spec_references(html, get_relative_url(spec.url, page.url), anchors)
