"""Start-up of the ``evsnn`` command and the import structure of the package.

``evsnn <command> --help`` parses arguments without torch (its import takes seconds), and no
two evsnn modules import each other, directly or through others.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

import evsnn

PACKAGE = Path(evsnn.__file__).resolve().parent


def _imported_modules(*args: str) -> set[str]:
    """The modules a ``python -m evsnn.cli ARGS`` process imports, from ``-X importtime``."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "evsnn.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=PACKAGE.parent,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("import time:")]
    assert lines, "no -X importtime lines: the check below would pass for nothing"
    return {line.rsplit("|", 1)[1].strip() for line in lines}


@pytest.mark.parametrize(
    "args",
    [("train", "--help"), ("plot", "--help"), ("bench", "--help"), ("info", "--help"), ("--help",), ("--version",)],
)
def test_help_does_not_import_torch(args):
    modules = _imported_modules(*args)
    assert "evsnn" in modules  # the package ran (evsnn.cli itself runs as __main__)
    assert "torch" not in modules, f"'evsnn {' '.join(args)}' imported torch"


def test_info_runs_the_backends_without_importing_dynamo():
    # `evsnn info` runs one pass per backend. Through a layer's forward the accelerated kernels are
    # custom ops, and PyTorch imports torch._dynamo (a second or more) at a custom op's first call;
    # info calls the same kernels through Stream and compiles nothing.
    # sys.modules after the command, not -X importtime: importtime's lines stop once numba's import
    # hooks are in place, so a later import of Dynamo would not be seen there
    script = (
        "import json, sys\n"
        "from evsnn.cli import main\n"
        "code = main(['info'])\n"
        "print('MODULES=' + json.dumps(sorted(sys.modules)))\n"
        "sys.exit(code)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=PACKAGE.parent
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    listed = [line for line in proc.stdout.splitlines() if line.startswith("MODULES=")]
    assert listed, proc.stdout[-2000:]
    modules = set(json.loads(listed[0].removeprefix("MODULES=")))
    assert {"torch", "evsnn.streaming", "evsnn.ops.alif.cpu", "evsnn.ops.egru.cpu", "evsnn.ops.delta.cpu"} <= modules
    if importlib.util.find_spec("numba") is not None:  # the cpu_event kernels ran
        assert "numba" in modules
    assert "torch._dynamo" not in modules


def test_train_option_choices_match_the_modules_that_use_them():
    # train_config repeats these tuples so that parsing stays torch-free; they must not drift apart.
    from evsnn import train_config
    from evsnn.data.encode import ENCODINGS
    from evsnn.models import MODELS
    from evsnn.ops.dispatch import BACKENDS

    assert train_config.MODELS == MODELS
    assert train_config.ENCODINGS == ENCODINGS
    assert train_config.BACKENDS == BACKENDS


def _module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    return ".".join(parts[:-1] if is_package else parts), is_package


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(node: ast.AST, here: list[str], modules: set[str]) -> set[str]:
    """The modules imported anywhere under ``node`` (``here``: the package of its file), except
    under ``if TYPE_CHECKING:``."""
    found: set[str] = set()
    for child in ast.iter_child_nodes(node):
        if _is_type_checking(child):
            for other in child.orelse:
                found |= _imports(ast.Module([other], []), here, modules)
        elif isinstance(child, ast.Import):
            found.update(alias.name for alias in child.names)
        elif isinstance(child, ast.ImportFrom):
            base = here[: len(here) - child.level + 1] if child.level else []
            target = ".".join(base + ([child.module] if child.module else []))
            for alias in child.names:
                candidate = f"{target}.{alias.name}"
                found.add(candidate if candidate in modules else target)
        else:
            found |= _imports(child, here, modules)
    return found


def import_graph() -> dict[str, set[str]]:
    """Every evsnn module and the evsnn modules it imports when it runs.

    Both module-level imports and imports inside functions count: a function-level import of a
    module that imports the caller back is the same circle, met later (at the first call instead
    of at import). Imports under ``if TYPE_CHECKING:`` never run and do not count. Importing
    ``a.b.c`` also runs the packages ``a`` and ``a.b``, so those are edges too.
    """
    paths = {_module_name(p)[0]: p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        is_package = _module_name(path)[1]
        here = name.split(".") if is_package else name.split(".")[:-1]
        edges = set()
        for target in _imports(ast.parse(path.read_text(encoding="utf-8")), here, set(paths)):
            parts = target.split(".")
            edges.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
        graph[name] = {t for t in edges if t in paths and t != name and not name.startswith(t + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle ``[a, b, ..., a]`` of ``graph``, or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := walk(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := walk(start)):
            return found
    return None


def test_find_cycle_finds_a_planted_circle():
    graph = {"p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.a"}, "p.d": set()}
    assert find_cycle(graph) == ["p.a", "p.b", "p.c", "p.a"]
    assert find_cycle({"p.a": {"p.b"}, "p.b": set()}) is None


def test_import_graph_sees_function_level_imports_and_skips_type_checking():
    graph = import_graph()
    assert "evsnn.atomic" in graph["evsnn.plot"]  # plot.save imports it inside the function
    assert "evsnn.train" not in graph["evsnn.runs"]  # only under TYPE_CHECKING there


def test_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)
