"""notebooks/quickstart.ipynb executes top to bottom (it trains the tiny model for a few steps), and the committed
file carries its outputs (the plots show when the repository is browsed)."""

import os

import pytest

from tests.conftest import REPO


def test_quickstart_notebook_executes():
    for mod in ("nbclient", "nbformat", "ipykernel", "matplotlib"):
        pytest.importorskip(mod, reason=f"{mod} missing: pip install -e '.[notebook]'")
    import nbclient
    import nbformat

    nb = nbformat.read(os.path.join(REPO, "notebooks", "quickstart.ipynb"), as_version=4)
    assert _pngs(nb) == 2, "commit the notebook with its outputs (loss curve, expert-load heatmap)"
    assert "REPO_URL" in nb.cells[1].source and "load_config(\"configs/tiny.py\"" in nb.cells[3].source
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": os.path.join(REPO, "notebooks")}}).execute()  # raises CellExecutionError on any failing cell
    assert _pngs(nb) == 2  # loss curve, expert-load heatmap


def _pngs(nb) -> int:
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    return sum("image/png" in o.get("data", {}) for o in outputs)
