"""The layout of evsnn/ops: one folder per family, no import cycle, modules of a readable size,
and the backends dispatch registers are the family modules' own functions.

The import graph is read from the source (every ``import``/``from`` statement, module level or
inside a function), so a lazy import closing a cycle counts too.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from evsnn.ops import dispatch

OPS = Path(__file__).resolve().parents[2] / "evsnn" / "ops"
FAMILY_MODULES = {
    "alif": "alif",
    "egru": "egru",
    "delta_gru": "delta",
    "delta_lstm": "delta",
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(OPS.parent.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The evsnn.ops modules ``path`` imports (relative imports resolved)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # "from . import x" imports the submodule x (its package is already being imported)
            candidates = ([target] if node.module else []) + [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        found.update(c for c in candidates if c.startswith("evsnn.ops") and _exists(c))
    found.discard(name)
    return found


def _exists(module: str) -> bool:
    rel = Path(*module.split(".")[2:])
    return (OPS / rel).with_suffix(".py").is_file() or (OPS / rel / "__init__.py").is_file()


def test_no_import_cycle_in_ops() -> None:
    graph = {_module_name(p): _imports(p) for p in OPS.rglob("*.py")}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(nxt) :] + [nxt]))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    # the family modules do not reach back to the dispatcher that registers them
    for family in ("alif", "egru", "delta"):
        for mod in ("cpu", "cuda"):
            assert "evsnn.ops.dispatch" not in graph[f"evsnn.ops.{family}.{mod}"]


def test_ops_modules_are_short_or_say_why() -> None:
    for path in OPS.rglob("*.py"):
        lines = path.read_text().splitlines()
        if len(lines) > 600:
            head = "\n".join(lines[:40]).lower()
            assert "lines" in head and "because" in head, (
                f"{path.relative_to(OPS)}: {len(lines)} lines, no reason stated"
            )


def test_old_module_paths_are_gone() -> None:
    for old in (
        "cpu_event",
        "cpu_train",
        "alif_cupy",
        "egru_cupy",
        "delta_cupy",
        "cupy_backends",
        "alif.cpu_kernels",
        "alif.op",
        "egru.op",
        "delta.op",
    ):
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(f"evsnn.ops.{old}")


@pytest.mark.parametrize("family", list(FAMILY_MODULES))
@pytest.mark.parametrize("backend,kind", [("cpu_event", "cpu"), ("cupy", "cuda")])
def test_registered_backends_are_the_family_modules_functions(family: str, backend: str, kind: str) -> None:
    assert backend in dispatch.registered(family)
    registered = dispatch._REGISTRY[(family, backend)]
    module = importlib.import_module(f"evsnn.ops.{FAMILY_MODULES[family]}.{kind}")
    assert registered.fn is getattr(module, f"{family}_scan_{kind}")
    check = getattr(module, f"check_{kind}")
    if kind == "cuda":
        assert registered.check is check
    else:  # the cpu_event check decides "auto" per family: bound to it
        assert registered.check.func is check and registered.check.keywords == {"family": family}


@pytest.mark.parametrize("family", sorted(set(FAMILY_MODULES.values())))
@pytest.mark.parametrize("kind", ["cpu", "cpu_train", "cuda"])
def test_every_kernel_module_says_whether_its_kernels_can_run(family: str, kind: str) -> None:
    """One name in every folder: cpu.py, cpu_train.py and cuda.py, each with kernels_available()
    answering for its own runtime (numba for the CPU modules, CuPy and a GPU for cuda.py)."""
    from evsnn.ops import cpu_common, cupy_runtime

    module = importlib.import_module(f"evsnn.ops.{family}.{kind}")
    expected = cupy_runtime.unavailable_reason() is None if kind == "cuda" else cpu_common.numba_available()
    assert module.kernels_available() is expected
    assert sorted(p.name for p in (OPS / family).glob("*.py")) == ["__init__.py", "cpu.py", "cpu_train.py", "cuda.py"]
