"""The docs site's configuration against the repository (the full ``mkdocs build --strict`` runs
in .ci/run after the tests; these checks are the fast part that needs no mkdocs)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _nav_files(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [f for item in node for f in _nav_files(item)]
    if isinstance(node, dict):
        return [f for value in node.values() for f in _nav_files(value)]
    return []


def _config() -> dict:
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))


def _hook():
    spec = importlib.util.spec_from_file_location("root_pages", DOCS / "hooks" / "root_pages.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_tutorial_is_on_the_site() -> None:
    nav = set(_nav_files(_config()["nav"]))
    notebooks = sorted(p.name for p in (ROOT / "tutorials").glob("*.ipynb"))
    assert notebooks, "no tutorials found"
    missing = [name for name in notebooks if f"tutorials/{name}" not in nav]
    assert not missing, f"tutorials missing from mkdocs.yml nav: {missing}"


def test_every_nav_page_exists_or_is_generated_from_the_root() -> None:
    generated = set(_hook().ROOT_PAGES)
    nav = _nav_files(_config()["nav"])
    missing = [page for page in nav if page not in generated and not (DOCS / page).is_file()]
    assert not missing, f"mkdocs.yml nav names pages that do not exist under docs/: {missing}"
    for page, source in _hook().ROOT_PAGES.items():
        assert page in nav and (ROOT / source).is_file(), (page, source)


def test_api_pages_name_importable_modules() -> None:
    pages = sorted((DOCS / "api").glob("*.md"))
    assert pages
    for page in pages:
        for line in page.read_text(encoding="utf-8").splitlines():
            if line.startswith("::: "):
                target = line[4:].strip()
                # A class path (evsnn.stats.LayerStats) names its module before the last dot.
                candidates = [target, target.rsplit(".", 1)[0]]
                assert any(_is_module(c) for c in candidates), f"{page.name}: {target!r} is not importable"


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def test_root_page_links_point_at_site_pages() -> None:
    rewrite = _hook().root_page_markdown
    text = (
        "See [the spec](docs/SPEC.md#2-alif), [bench](docs/benchmarks.md), [log](CHANGELOG.md), "
        "[how](CONTRIBUTING.md), [web](https://example.org/docs/x.md) and [here](#quick-start)."
    )
    assert rewrite(text) == (
        "See [the spec](SPEC.md#2-alif), [bench](benchmarks.md), [log](changelog.md), "
        "[how](contributing.md), [web](https://example.org/docs/x.md) and [here](#quick-start)."
    )
