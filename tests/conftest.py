"""Shared test setup.

- Every test starts from the same random seed, so a failure reproduces.
- ``@pytest.mark.gpu`` tests are skipped, with the reason, when no CUDA GPU or no CuPy is present.
- The modules and tests listed in ``SLOW_MODULES`` and ``SLOW_TESTS`` get ``@pytest.mark.slow``: a plain
  ``pytest`` deselects them (``addopts`` in pyproject.toml), ``pytest -m "slow or not slow"`` and
  ``bash .ci/run`` run them.
- ``recording_backend`` compiles through ``aot_eager`` and keeps the graph's call targets;
  ``load_example`` imports a script from ``examples/``.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _gpu_skip_reason() -> str | None:
    if not torch.cuda.is_available():
        return "needs a CUDA GPU (torch.cuda.is_available() is False)"
    if importlib.util.find_spec("cupy") is None:
        return 'needs CuPy: pip install "evsnn[cuda13]" (or "evsnn[cuda12]")'
    return None


# Whole modules whose every test starts a process, runs a notebook or builds a package: each test
# costs seconds of start-up before it checks anything.
SLOW_MODULES: dict[str, str] = {
    "test_tutorials.py": "executes every notebook of tutorials/",
    "test_ddp.py": "starts torchrun with two processes",
    "test_packaging.py": "builds the wheel and installs it into a fresh environment",
    "test_run_folder.py": "runs `evsnn train` in subprocesses, some of them concurrently",
}

# Single tests, as regular expressions matched against "<module file>::<test name with parameters>".
SLOW_TESTS: dict[str, str] = {
    r"test_autocast\.py::test_layer_low_precision\[.*-cpu_event-bf16-.*\]": (
        "bfloat16 on the numba kernels: compiles the cpu_event kernels for the low-precision path"
    ),
    r"test_autocast\.py::test_float64_layer_stays_float64_under_autocast\[.*-cpu_event\]": (
        "compiles the cpu_event kernels for float64 under autocast"
    ),
    r"test_(cpu_train|cpu_train_egru|cpu_train_alif)\.py::test_torch_thread_setting_survives_the_kernels": (
        "a fresh process that imports torch and compiles the numba kernels"
    ),
    r"test_cli\.py::test_(interrupt_keeps_last_checkpoint|closed_stdout_pipe_ends_quietly)": (
        "runs `evsnn train` in a subprocess until a signal or a closed pipe stops it"
    ),
    r"test_plot\.py::test_import_is_lazy_and_headless_uses_agg": "a fresh process that imports torch and matplotlib",
    r"test_startup\.py::test_info_runs_the_backends_without_importing_dynamo": (
        "runs `evsnn info` in a fresh process: imports torch and loads the numba kernels"
    ),
    r"test_docs\.py::test_built_api_pages_.*": "builds the API pages of the site with mkdocs",
    r"test_docs\.py::test_mathjax_typesets_arithmatex_and_notebook_markdown_only": (
        "converts a notebook with nbconvert, as mkdocs-jupyter does"
    ),
}
_SLOW_TEST_PATTERNS = [re.compile(pattern) for pattern in SLOW_TESTS]


def _is_slow(item: pytest.Item) -> bool:
    module = item.path.name
    if module in SLOW_MODULES:
        return True
    key = f"{module}::{item.name}"
    return any(pattern.fullmatch(key) for pattern in _SLOW_TEST_PATTERNS)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _is_slow(item):
            item.add_marker(pytest.mark.slow)
    reason = _gpu_skip_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def reference_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests that compare layers with the reference math must not be redirected by a user's
    ``EVSNN_BACKEND`` (e.g. ``cupy`` on a GPU box): unset it for the test."""
    monkeypatch.delenv("EVSNN_BACKEND", raising=False)


@pytest.fixture
def single_thread():
    """Run a test with one intra-op thread, then restore the previous setting.

    The reference scans issue thousands of tiny ops; on a loaded 2-core machine the thread pool's
    hand-offs make them 10-20x slower than one thread (measured: a T=1000 DeltaGRU scan, 10.4 s
    with 2 threads vs 0.6 s with 1 under load). Opt-in, so other modules' timings are untouched.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def recording_backend():
    """A ``torch.compile`` backend that runs ``aot_eager`` and records, in ``backend.targets``, the
    call targets of every graph it is given (to check which op a compiled model really calls)."""
    targets: list[str] = []

    def backend(gm, example_inputs):
        targets.extend(str(node.target) for node in gm.graph.nodes if node.op == "call_function")
        return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)

    backend.targets = targets
    return backend


@pytest.fixture(scope="session")
def load_example():
    """``load_example(name)`` imports ``examples/<name>.py`` as a module (the scripts put examples/
    on ``sys.path`` themselves for their shared ``reproduce_common`` import)."""

    def load(name: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
