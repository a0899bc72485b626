"""The slow-test list of tests/conftest.py names what exists: a renamed module or test must not
drop out of the list unnoticed and run in (or vanish from) the fast default ``pytest``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import SLOW_MODULES, SLOW_TESTS, _is_slow

TESTS = Path(__file__).resolve().parent


def _test_functions(module: str) -> set[str]:
    tree = ast.parse((TESTS / module).read_text())
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name.startswith("test")}


@pytest.mark.parametrize("module", sorted(SLOW_MODULES))
def test_every_slow_module_exists(module: str) -> None:
    assert (TESTS / module).is_file(), f"tests/conftest.py SLOW_MODULES names {module}, which is not in tests/"


@pytest.mark.parametrize("pattern", sorted(SLOW_TESTS))
def test_every_slow_test_pattern_names_an_existing_test(pattern: str) -> None:
    # "<module>::<function>[<parameters>]": the module and the function must exist
    module, _, rest = pattern.partition("::")
    module = module.replace("\\.", ".")
    function = rest.split("\\[", 1)[0]
    assert (TESTS / module).is_file(), f"SLOW_TESTS pattern {pattern!r}: no tests/{module}"
    assert function in _test_functions(module), f"SLOW_TESTS pattern {pattern!r}: no {function} in tests/{module}"


def test_the_default_run_leaves_out_the_slow_tests(request: pytest.FixtureRequest) -> None:
    # pyproject's addopts: `pytest` deselects what conftest marks slow
    assert request.config.getini("addopts")[:2] == ["-m", "not slow"]
    assert not _is_slow(request.node)
