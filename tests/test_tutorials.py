"""Every tutorial notebook runs top to bottom (on a CPU the GPU cells print why they skip)."""

from __future__ import annotations

from pathlib import Path

import nbclient
import nbformat
import pytest

TUTORIALS = sorted((Path(__file__).resolve().parent.parent / "tutorials").glob("*.ipynb"))


def test_all_eight_tutorials_are_there():
    assert len(TUTORIALS) == 8, [p.name for p in TUTORIALS]


@pytest.mark.slow
@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs(path: Path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    # executing raises CellExecutionError on the first failing cell, with its traceback
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    # committed with outputs, so the plots show on the web
    committed = nbformat.read(path, as_version=4)
    assert all(c.get("outputs") for c in committed.cells if c.cell_type == "code" and ("plot." in c.source or "plt." in c.source))
