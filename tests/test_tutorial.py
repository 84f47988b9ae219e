"""experiments/tutorial.ipynb runs top to bottom on the tiny model (nbclient), in under a minute."""

import pathlib
import time

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "tutorial.ipynb"


def test_tutorial_notebook_runs(tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    start = time.time()
    nbclient.NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    ).execute()
    elapsed = time.time() - start
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any(o.output_type == "display_data" and "image/png" in o.data for o in outputs)
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "trainable parameters: 256" in text and "test_sentiment/accuracy" in text
    assert elapsed < 120, f"the tutorial took {elapsed:.0f} s"
