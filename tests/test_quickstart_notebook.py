"""examples/quickstart.ipynb runs top to bottom on the built-in model (what a new user does first)."""

import os
import shutil
from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "examples" / "quickstart.ipynb"


def test_quickstart_notebook_runs_and_shows_the_preview_and_the_video(tmp_path, monkeypatch):
    shutil.copy(NOTEBOOK, tmp_path / NOTEBOOK.name)  # the notebook writes its GIF beside itself
    notebook = nbformat.read(tmp_path / NOTEBOOK.name, as_version=4)
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))  # the kernel inherits it
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()

    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.get("outputs", [])]
    assert not [out for out in outputs if out.output_type == "error"]
    images = [out for out in outputs if out.output_type == "display_data" and "image/png" in out.get("data", {})]
    gifs = [out for out in outputs if out.output_type == "display_data" and "image/gif" in out.get("data", {})]
    assert images, "the preview (a PIL image) is shown inline"
    assert gifs, "the video (a GIF) is shown inline"
    assert (tmp_path / "quickstart.gif").stat().st_size > 0
    text = "".join(out.get("text", "") for out in outputs if out.output_type == "stream")
    assert "relation accuracy" in text  # the conformance report printed in the last cell
