"""Rewrite reStructuredText cross-reference roles in Python sources as Markdown for mkdocstrings.

The docs site renders docstrings as Markdown (mkdocstrings + mkdocs-autorefs), where a reST role
such as ``:class:`~evsnn.stats.LayerStats``` shows up verbatim. This script rewrites, in the string
literals (docstrings and the fragments that build a ``__doc__``) of the given files or folders
(``*.py``, recursively; comments and code are left as they are):

- a role naming an ``evsnn`` object by its full path into an autorefs link,
  ``:class:`~evsnn.stats.LayerStats``` → ``[`LayerStats`][evsnn.stats.LayerStats]`` (``~`` shows
  the last component, as in Sphinx; an explicit title ``:func:`text <evsnn.x>``` keeps its text);
- any other role (a name relative to its module, torch, matplotlib ...) into inline code,
  ``:attr:`last_stats``` → ```last_stats```, since autorefs can only link what the site documents;
- a reST literal-block marker ``Example::`` at the end of a line into ``Example:`` (the indented
  block after it is a code block in Markdown already).

A link to an object the site does not document fails ``mkdocs build --strict``. With
``--inventory site/objects.inv`` (written by any ``mkdocs build``, strict or not) only the
targets listed there become links; the others become inline code.

The output contains no role, so a second run changes nothing, and the rewrite is a pure function
of each file's text (and the inventory). Usage:
``python docs/tools/convert_roles.py --inventory site/objects.inv evsnn/ops evsnn/plot.py``
(``--check`` lists the files it would change and exits 1 if there are any).
"""

from __future__ import annotations

import argparse
import io
import re
import sys
import tokenize
import zlib
from collections.abc import Callable, Collection
from pathlib import Path

ROLES = ("class", "func", "meth", "attr", "data", "mod", "exc", "obj", "const", "type")
# :role:`target`, :py:role:`target`, :role:`title <target>`; a title or target never spans a backtick.
ROLE = re.compile(r":(?:py:)?(?P<role>" + "|".join(ROLES) + r"):`(?P<body>[^`]+)`")
TITLED = re.compile(r"^(?P<title>.+?)\s*<(?P<target>[^<>]+)>$", re.S)
# "text::" closing a line (reST literal block); not "a[::]" or "::" alone on a line.
LITERAL_MARKER = re.compile(r"(?<=[\w).\]'\"`])::[ \t]*$", re.M)
LINKED_PACKAGE = "evsnn"


def _replacement(documented: Collection[str] | None) -> Callable[[re.Match[str]], str]:
    def link(match: re.Match[str]) -> str:
        body = " ".join(match.group("body").split())
        titled = TITLED.match(body)
        if titled:
            title, target = titled.group("title"), titled.group("target").lstrip("~!.")
        else:
            target = body.lstrip("!")
            shortened = target.startswith("~")
            target = target.lstrip("~.")
            title = f"`{target.rsplit('.', 1)[-1] if shortened else target}`"
        ours = target == LINKED_PACKAGE or target.startswith(LINKED_PACKAGE + ".")
        if ours and (documented is None or target in documented):
            return f"[{title}][{target}]"
        return title

    return link


def convert(text: str, documented: Collection[str] | None = None) -> str:
    """``text`` with every reST role and literal-block marker rewritten as Markdown.

    ``documented``: the identifiers the site documents (``None``: every ``evsnn`` target)."""
    text = ROLE.sub(_replacement(documented), text)
    return LITERAL_MARKER.sub(":", text)


def convert_source(source: str, documented: Collection[str] | None = None) -> str:
    """``source`` (a Python module) with :func:`convert` applied to each of its string literals."""
    lines = source.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    edits = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.STRING:
            new = convert(token.string, documented)
            if new != token.string:
                start = offsets[token.start[0] - 1] + token.start[1]
                end = offsets[token.end[0] - 1] + token.end[1]
                edits.append((start, end, new))
    for start, end, new in reversed(edits):
        source = source[:start] + new + source[end:]
    return source


def read_inventory(path: str | Path) -> set[str]:
    """The object names of a Sphinx ``objects.inv`` (version 2), as mkdocstrings writes it."""
    data = Path(path).read_bytes()
    header_end = 0
    for _ in range(4):
        header_end = data.index(b"\n", header_end) + 1
    if not data.startswith(b"# Sphinx inventory version 2"):
        raise SystemExit(f"convert_roles: {path} is not a Sphinx inventory (version 2)")
    lines = zlib.decompress(data[header_end:]).decode("utf-8").splitlines()
    return {line.split(" ", 1)[0] for line in lines if line.strip()}


def _python_files(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            files.extend(sorted(path.rglob("*.py")))
        elif path.suffix == ".py" and path.is_file():
            files.append(path)
        else:
            raise SystemExit(f"convert_roles: {name} is not a Python file or a folder")
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="Python files or folders (searched recursively)")
    parser.add_argument("--check", action="store_true", help="only list the files that would change")
    parser.add_argument("--inventory", help="objects.inv of a built site: link only the objects it lists")
    args = parser.parse_args(argv)
    documented = read_inventory(args.inventory) if args.inventory else None
    changed = []
    for path in _python_files(args.paths):
        before = path.read_text(encoding="utf-8")
        after = convert_source(before, documented)
        if after != before:
            changed.append(path)
            if not args.check:
                path.write_text(after, encoding="utf-8")
    for path in changed:
        print(path)
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main())
