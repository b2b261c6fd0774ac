"""notebooks/quickstart.ipynb runs from top to bottom in a kernel of this environment (nbclient), so it cannot rot:
the tiny pipeline, its runs' metrics.jsonl as DataFrames, one plot, the report."""

from __future__ import annotations

import nbformat
from nbclient import NotebookClient

from tests.conftest import ROOT


def test_the_quickstart_notebook_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the kernel's tempfile puts the notebook's runs folder here
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as run_stage: the tiny models gain nothing from more threads
    notebook = nbformat.read(ROOT / "notebooks" / "quickstart.ipynb", as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    (runs,) = tmp_path.glob("barrierlab_quickstart_*")
    assert {p.name for p in runs.iterdir()} == {"base", "outcome", "process", "eval"}
    table = next(o for o in outputs if o.output_type == "execute_result" and "text/html" in o.data)["data"]["text/html"]
    assert table.count("</tr>") == 1 + 2 * 4  # header, then outcome and process at steps 0, 4, 8, 12 (eval_every 4)
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the plot
    assert any(o.get("text", "").startswith("# Evaluation report") for o in outputs)  # the last cell's report.md
