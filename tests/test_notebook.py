"""The example notebook runs as a user runs it (a Jupyter kernel, nbclient), on tiny generated data."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "explain_your_model.ipynb"


@pytest.mark.slow
def test_the_example_notebook_builds_fits_explains_shows_saves_and_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONWARNINGS", "ignore")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=300, resources={"metadata": {"path": str(tmp_path)}}).execute()
    printed = "".join(
        output.get("text", "") for cell in notebook.cells for output in cell.get("outputs", [])
    )
    assert "relative head error" in printed and "reloaded (4, 3," in printed
    assert (tmp_path / "nb_prototypes.png").stat().st_size > 1000
    assert (tmp_path / "nb_posthoc.pt").is_file()
