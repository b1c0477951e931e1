"""docs/tutorial.ipynb is committed without outputs and runs from top to bottom in a fresh Jupyter kernel; the runs
it makes appear in the command line's run list like any other."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[2] / "docs" / "tutorial.ipynb"


def test_the_tutorial_is_committed_without_outputs():
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    code = [cell for cell in cells if cell["cell_type"] == "code"]
    assert len(code) >= 8
    assert all(cell["outputs"] == [] and cell["execution_count"] is None for cell in code), \
        "strip the outputs before committing (Kernel > Restart & Clear Output)"


@pytest.mark.slow
def test_the_tutorial_runs_top_to_bottom_and_its_runs_are_listed(tmp_path, monkeypatch, demo_with_velocity):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("ST_RUNS_DIR", str(tmp_path / "runs"))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
                   ).execute()  # raises CellExecutionError, naming the cell, if any cell fails
    errors = [out for cell in notebook.cells for out in cell.get("outputs", []) if out.get("output_type") == "error"]
    assert not errors
    listed = subprocess.run([sys.executable, "-m", "core", "runs", "list"], capture_output=True, text=True,
                            env=dict(os.environ), check=True).stdout
    assert "tutorial-st-lora" in listed and "tutorial-st-lora-mhc" in listed
