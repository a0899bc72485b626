"""MkDocs hook: the site's home, contributing and changelog pages are README.md, CONTRIBUTING.md
and CHANGELOG.md of the repository root, so GitHub and the site show one text.

Links written for the repository root (``docs/SPEC.md``, ``CHANGELOG.md``) are rewritten to the
site's pages; any other broken link still fails ``mkdocs build --strict``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mkdocs.structure.files import Files

ROOT_PAGES = {"index.md": "README.md", "contributing.md": "CONTRIBUTING.md", "changelog.md": "CHANGELOG.md"}
SITE_NAME_OF = {source: page for page, source in ROOT_PAGES.items()}
_LINK = re.compile(r"\]\((?!https?://|#)([^)\s]+)\)")


def _site_link(target: str) -> str:
    path, _, anchor = target.partition("#")
    if path.startswith("docs/"):
        path = path[len("docs/") :]
    path = SITE_NAME_OF.get(path, path)
    return path + (f"#{anchor}" if anchor else "")


def root_page_markdown(text: str) -> str:
    """``text`` with its repository-root links pointed at the site's pages."""
    return _LINK.sub(lambda m: f"]({_site_link(m.group(1))})", text)


def on_files(files: Files, config) -> Files:
    # mkdocs is imported here so that the link rewriting above can be tested without it.
    from mkdocs.structure.files import File

    root = Path(config["config_file_path"]).parent
    for page, source in ROOT_PAGES.items():
        content = root_page_markdown((root / source).read_text(encoding="utf-8"))
        files.append(File.generated(config, page, content=content))
    return files
