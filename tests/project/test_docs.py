"""The docs site's configuration against the repository (the full ``mkdocs build --strict`` runs
in .ci/run after the tests; these checks are the fast part that needs no mkdocs)."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
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


def test_readme_tutorial_table_lists_every_notebook() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"^\| \d\d \| `(\w+)` \|", text, re.M))
    notebooks = {p.stem for p in (ROOT / "tutorials").glob("*.ipynb")}
    assert notebooks and listed == notebooks, (sorted(notebooks - listed), sorted(listed - notebooks))


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


# --- cross-references: Markdown (mkdocs-autorefs), never reST roles -------------------------------

# A reST role as Sphinx writes it; mkdocstrings renders Markdown, where it shows up verbatim.
REST_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|data|mod|exc|obj|const|type):`")
# "Example::" closing a line: a reST literal-block marker (Markdown needs none).
REST_LITERAL_MARKER = re.compile(r"(?<=[\w).\]'\"`])::[ \t]*$", re.M)
# The same role once Markdown has turned its backticks into a code element.
RENDERED_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|data|mod|exc|obj|const|type):(?:`|<code>)")


def _string_constants(path: Path) -> list[tuple[int, str]]:
    """Every string literal of a module (docstrings and the fragments that build a ``__doc__``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    ]


def test_no_rest_roles_in_docstrings() -> None:
    # Checks every module of the package: docs/tools/convert_roles.py rewrites the roles it finds.
    found = []
    for path in sorted((ROOT / "evsnn").rglob("*.py")):
        for line, text in _string_constants(path):
            for pattern in (REST_ROLE, REST_LITERAL_MARKER):
                for match in pattern.finditer(text):
                    found.append(
                        f"{path.relative_to(ROOT)}:{line}: {text[max(0, match.start() - 20) : match.end() + 30]!r}"
                    )
    assert not found, (
        f"{len(found)} reST roles or '::' markers in docstrings (run python docs/tools/convert_roles.py "
        "--inventory site/objects.inv evsnn):\n" + "\n".join(found[:40])
    )


def _convert_roles():
    spec = importlib.util.spec_from_file_location("convert_roles", DOCS / "tools" / "convert_roles.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("rest", "markdown"),
    [
        (":class:`~evsnn.stats.LayerStats`", "[`LayerStats`][evsnn.stats.LayerStats]"),
        (":class:`evsnn.DeltaGRU`", "[`evsnn.DeltaGRU`][evsnn.DeltaGRU]"),
        (":meth:`~evsnn.metrics.Profile.to_dict`", "[`to_dict`][evsnn.metrics.Profile.to_dict]"),
        (":func:`the scan <evsnn.functional.alif_scan>`", "[the scan][evsnn.functional.alif_scan]"),
        (":py:mod:`evsnn.functional`", "[`evsnn.functional`][evsnn.functional]"),
        (":attr:`last_stats`", "`last_stats`"),
        (":class:`~torch.nn.utils.rnn.PackedSequence`", "`PackedSequence`"),
        (":data:`POSITIVE_COLOR`", "`POSITIVE_COLOR`"),
        ("computes, with the default::\n\n    b_t = ...\n", "computes, with the default:\n\n    b_t = ...\n"),
        ("x[::2] and a :: b", "x[::2] and a :: b"),
    ],
)
def test_convert_roles_rewrites_each_form_once(rest: str, markdown: str) -> None:
    convert = _convert_roles().convert
    assert convert(rest) == markdown
    assert convert(markdown) == markdown  # idempotent
    assert not REST_ROLE.search(convert(rest))


def test_convert_roles_links_only_documented_objects() -> None:
    convert = _convert_roles().convert
    text = ":mod:`evsnn.functional.precision` and :func:`~evsnn.functional.alif_scan`"
    assert convert(text, {"evsnn.functional.alif_scan"}) == (
        "`evsnn.functional.precision` and [`alif_scan`][evsnn.functional.alif_scan]"
    )


def _spec_links():
    spec = importlib.util.spec_from_file_location("spec_links", DOCS / "hooks" / "spec_links.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_spec_references_link_to_the_sections_markdown_gives_their_ids() -> None:
    import markdown
    from markdown.extensions.toc import slugify

    hook = _spec_links()
    spec_text = (DOCS / "SPEC.md").read_text(encoding="utf-8")
    anchors = hook.section_anchors(spec_text, slugify)
    # The ids Python-Markdown's toc extension gives the headings: the independent truth.
    rendered = markdown.markdown(spec_text, extensions=["toc"])
    for section in ("2", "3", "4", "6"):
        assert f'id="{anchors[section]}"' in rendered, (section, anchors[section])
    html = (
        "<p>ALIF (SPEC.md §2) and SPEC §3, not <code>SPEC §4</code>, "
        '<a href="x">SPEC §6</a>, nor the unknown SPEC §9.</p>'
    )
    linked = hook.link_spec_references(html, "../../SPEC/", anchors)
    assert f'<a href="../../SPEC/#{anchors["2"]}">SPEC.md §2</a>' in linked
    assert f'<a href="../../SPEC/#{anchors["3"]}">SPEC §3</a>' in linked
    assert "<code>SPEC §4</code>" in linked and '<a href="x">SPEC §6</a>' in linked
    assert "the unknown SPEC §9." in linked


# --- equations ---------------------------------------------------------------------------------


def _markdown_extensions() -> tuple[list[str], dict]:
    names, configs = [], {}
    for item in _config()["markdown_extensions"]:
        if isinstance(item, dict):
            ((name, options),) = item.items()
            names.append(name)
            configs[name] = options or {}
        else:
            names.append(item)
    return names, configs


@pytest.mark.parametrize("page", ["neurons/alif.md", "neurons/egru.md", "neurons/delta.md", "SPEC.md"])
def test_page_equations_become_math_for_mathjax(page: str) -> None:
    import markdown

    text = (DOCS / page).read_text(encoding="utf-8")
    names, configs = _markdown_extensions()
    html = markdown.markdown(text, extensions=names, extension_configs=configs)
    inline, display = text.count("\\("), text.count("\\[")
    assert inline > 5 and display > 2
    # every \( ... \) and \[ ... \] of the page is handed to MathJax as one arithmatex element
    assert html.count('class="arithmatex"') == inline + display
    scripts = _config()["extra_javascript"]
    assert any("mathjax" in s and s.startswith("https://") for s in scripts)
    assert all((DOCS / s).is_file() for s in scripts if not s.startswith("https://"))


def test_spec_equations_are_math_not_code_blocks() -> None:
    # A fenced block shows its equations as monospace text; the specification has no code to show.
    text = (DOCS / "SPEC.md").read_text(encoding="utf-8")
    assert "```" not in text
    # the equations of each section (ALIF, EGRU, delta cells) are display math
    for number in ("2", "3", "4"):
        section = re.search(rf"^## {number}\. .*?(?=^## )", text, re.S | re.M)
        assert section and "\\[" in section.group(0), number


def test_neuron_pages_and_figures_are_on_the_site() -> None:
    nav = set(_nav_files(_config()["nav"]))
    for page in ("neurons/alif.md", "neurons/egru.md", "neurons/delta.md", "performance.md"):
        assert page in nav, page
        for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (DOCS / page).read_text(encoding="utf-8")):
            assert (DOCS / page).parent.joinpath(image).resolve().is_file(), (page, image)


# --- the API pages as built -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def api_site(tmp_path_factory) -> Path:
    """The API reference pages built by mkdocs with the site's configuration (no notebooks)."""
    from mkdocs.commands.build import build
    from mkdocs.config import load_config

    site = tmp_path_factory.mktemp("site")
    docs = tmp_path_factory.mktemp("docs")
    for page in ["SPEC.md", *(f"api/{p.name}" for p in (DOCS / "api").glob("*.md"))]:
        (docs / page).parent.mkdir(parents=True, exist_ok=True)
        (docs / page).write_text((DOCS / page).read_text(encoding="utf-8"), encoding="utf-8")
    config = _config()
    nav = [{"Specification": "SPEC.md"}] + [
        item for item in config["nav"] if isinstance(item, dict) and "API reference" in item
    ]
    plugins = [p for p in config["plugins"] if not (isinstance(p, dict) and "mkdocs-jupyter" in p)]
    options = {
        "config_file": str(ROOT / "mkdocs.yml"),
        "docs_dir": str(docs),
        "site_dir": str(site),
        "nav": nav,
        "plugins": plugins,
        "hooks": [str(ROOT / "docs" / "hooks" / "spec_links.py")],
        "strict": False,
        "extra_javascript": [],
        "exclude_docs": "",
    }
    build(load_config(**options))
    return site


def test_rest_role_hook_warns_so_the_strict_build_fails(caplog) -> None:
    spec = importlib.util.spec_from_file_location("rest_roles", DOCS / "hooks" / "rest_roles.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    assert hook.RENDERED_ROLE.pattern == RENDERED_ROLE.pattern

    class Page:
        class file:
            src_uri = "api/nn.md"

    clean = "<p>See <code>evsnn.ALIF</code> and <a href='x'>LayerStats</a>.</p>"
    with caplog.at_level("WARNING", logger="mkdocs"):
        assert hook.on_page_content(clean, Page, {}, None) == clean
        assert not caplog.records
        hook.on_page_content("<p>Uses :class:<code>~evsnn.ALIF</code> here.</p>", Page, {}, None)
    (record,) = caplog.records
    # strict mode counts the warnings of the "mkdocs" loggers
    assert record.name.startswith("mkdocs.") and record.levelname == "WARNING"
    assert "api/nn.md shows 1 reST role" in record.getMessage()


def test_built_api_pages_show_no_rest_roles(api_site: Path) -> None:
    found = []
    for page in sorted(api_site.glob("api/*/index.html")):
        text = page.read_text(encoding="utf-8")
        found += [f"{page.parent.name}: {text[m.start() - 30 : m.end() + 40]!r}" for m in RENDERED_ROLE.finditer(text)]
    assert not found, f"{len(found)} raw reST roles on the API pages:\n" + "\n".join(found[:30])


def test_built_api_pages_show_inherited_public_methods(api_site: Path) -> None:
    nn_page = (api_site / "api" / "nn" / "index.html").read_text(encoding="utf-8")
    # from_torch / to_torch are defined on a private base class of the delta layers
    for cls in ("DeltaGRU", "DeltaLSTM"):
        for method in ("from_torch", "to_torch"):
            assert f'id="evsnn.nn.{cls}.{method}"' in nn_page, (cls, method)


def test_built_api_pages_link_spec_sections(api_site: Path) -> None:
    nn_page = (api_site / "api" / "nn" / "index.html").read_text(encoding="utf-8")
    assert re.search(r'<a href="\.\./\.\./SPEC/#2-[^"]+">SPEC(\.md)? §2</a>', nn_page)


@pytest.mark.parametrize("page", ["neurons/alif.md", "neurons/egru.md", "neurons/delta.md"])
def test_neuron_page_examples_run(page: str, tmp_path, monkeypatch) -> None:
    # The page's Python blocks, in order, as a reader would paste them; figures go to tmp_path.
    import torch

    torch.set_num_threads(1)
    monkeypatch.chdir(tmp_path)
    code = "\n".join(re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(encoding="utf-8"), re.S))
    assert code
    exec(compile(code, page, "exec"), {})
    written = sorted(p.name for p in tmp_path.iterdir())
    saved = re.findall(r'"([\w.]+\.(?:pdf|svg|png|gif))"', code)
    assert written == sorted(saved)


def test_convert_roles_rewrites_string_literals_only() -> None:
    source = (
        '"""Uses :func:`~evsnn.functional.alif_scan`."""\n'
        "# see :func:`evsnn.functional.alif_scan`\n"
        'DOC = (\'x :attr:`last_stats`\' + """\n    :class:`evsnn.ALIF`::\n""")\n'
    )
    converted = _convert_roles().convert_source(source)
    assert converted == (
        '"""Uses [`alif_scan`][evsnn.functional.alif_scan]."""\n'
        "# see :func:`evsnn.functional.alif_scan`\n"
        'DOC = (\'x `last_stats`\' + """\n    [`evsnn.ALIF`][evsnn.ALIF]:\n""")\n'
    )
    assert _convert_roles().convert_source(converted) == converted


# --- MathJax's choice of elements ------------------------------------------------------------------


def _mathjax_option(name: str) -> re.Pattern[str]:
    """``options.<name>`` of docs/javascripts/mathjax.js as the regular expression MathJax 3 builds."""
    script = (DOCS / "javascripts" / "mathjax.js").read_text(encoding="utf-8")
    (value,) = re.findall(rf'{name}: "([^"]*)"', script)
    return re.compile(rf"(^| )({value})( |$)")


def _typeset_text(html: str) -> str:
    """The text MathJax 3 searches for math in ``html``: its element walk (HTMLDomStrings), where an
    element whose class matches ignoreHtmlClass is skipped with everything inside it unless its class
    matches processHtmlClass, and <code>, <pre> and <script> are never searched."""
    from html.parser import HTMLParser

    ignore_class, process_class = _mathjax_option("ignoreHtmlClass"), _mathjax_option("processHtmlClass")
    void = {"br", "img", "hr", "input", "meta", "link", "col", "area", "base", "source", "wbr"}

    class Walk(HTMLParser):
        def __init__(self) -> None:
            super().__init__(convert_charrefs=True)
            self.stack: list[bool] = [False]  # True: this element's text is skipped
            self.found: list[str] = []

        def handle_starttag(self, tag, attrs):
            if tag in void:
                return
            cls = dict(attrs).get("class") or ""
            process = bool(process_class.search(cls))
            skip = (self.stack[-1] or bool(ignore_class.search(cls))) and not process
            self.stack.append(skip or tag in {"code", "pre", "script", "style"})

        def handle_endtag(self, tag):
            if tag not in void and len(self.stack) > 1:
                self.stack.pop()

        def handle_data(self, data):
            if not self.stack[-1]:
                self.found.append(data)

    walk = Walk()
    walk.feed(html)
    return " ".join(walk.found)


def test_mathjax_typesets_arithmatex_and_notebook_markdown_only(tmp_path) -> None:
    nbformat = pytest.importorskip("nbformat")
    nb2html = pytest.importorskip("mkdocs_jupyter.nbconvert2").nb2html

    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_markdown_cell(
            "A state $h_t$ in a paragraph.\n\n- and $y_{t-1}$ in a list item\n\n$$c_t = z_t$$"
        ),
        nbformat.v4.new_code_cell("print('$5 and $6')", outputs=[nbformat.v4.new_output("stream", text="$5 and $6\n")]),
    ]
    path = tmp_path / "nb.ipynb"
    nbformat.write(notebook, path)
    notebook_html = nb2html(str(path))
    # the page as the material theme lays it out: everything inside its header and container
    page = (
        '<body><header class="md-header">Costs $1 or $2</header><div class="md-container">'
        '<article class="md-content__inner md-typeset"><p>A page: $3 and $4, '
        '<span class="arithmatex">\\(\\alpha\\)</span></p>' + notebook_html + "</article></div></body>"
    )
    text = _typeset_text(page)
    for math in ("$h_t$", "$y_{t-1}$", "$$c_t = z_t$$", "\\(\\alpha\\)"):
        assert math in text, math
    # dollar signs outside math-bearing elements are never read as delimiters
    for prose in ("Costs $1", "$3 and $4", "$5 and $6"):
        assert prose not in text, prose
