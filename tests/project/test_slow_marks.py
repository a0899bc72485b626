"""The slow-test list of tests/conftest.py names what exists: a renamed module or test must not
drop out of the list unnoticed and run in (or vanish from) the fast default ``pytest``."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from conftest import SLOW_MODULES, SLOW_TESTS, _is_slow

TESTS = Path(__file__).resolve().parents[1]
# conftest matches modules by file name, wherever they sit under tests/: names stay unique
MODULES = {path.name: path for path in TESTS.rglob("test_*.py")}


def _test_functions(module: str) -> set[str]:
    tree = ast.parse(MODULES[module].read_text())
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name.startswith("test")}


@pytest.mark.parametrize("module", sorted(SLOW_MODULES))
def test_every_slow_module_exists(module: str) -> None:
    assert module in MODULES, f"tests/conftest.py SLOW_MODULES names {module}, which is not under tests/"


@pytest.mark.parametrize("pattern", sorted(SLOW_TESTS))
def test_every_slow_test_pattern_names_an_existing_test(pattern: str) -> None:
    # "<module regex>::<function regex>[\\[<parameters regex>\\]]": some module of tests/ and some test
    # function in it must match (parameters are only known once collected)
    module_part, _, rest = pattern.partition("::")
    function_part = rest.split("\\[", 1)[0]
    modules = [name for name in sorted(MODULES) if re.fullmatch(module_part, name)]
    assert modules, f"SLOW_TESTS pattern {pattern!r}: no module of tests/ matches {module_part!r}"
    for module in modules:
        functions = [name for name in _test_functions(module) if re.fullmatch(function_part, name)]
        assert functions, (
            f"SLOW_TESTS pattern {pattern!r}: no test function of {MODULES[module].relative_to(TESTS.parent)} matches {function_part!r}"
        )


def test_the_default_run_leaves_out_the_slow_tests(request: pytest.FixtureRequest) -> None:
    # pyproject's addopts: `pytest` deselects what conftest marks slow
    assert request.config.getini("addopts")[:2] == ["-m", "not slow"]
    assert not _is_slow(request.node)


def test_test_module_names_are_unique_across_areas() -> None:
    # pytest imports test modules by their base name (rootdir-relative "prepend" mode, no
    # __init__.py): two areas holding the same file name would collide, and conftest's slow lists
    # could not tell them apart
    names = [path.name for path in TESTS.rglob("test_*.py")]
    assert len(names) == len(set(names)), sorted(name for name in names if names.count(name) > 1)
