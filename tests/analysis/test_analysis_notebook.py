"""notebooks/paper_numbers.ipynb executes top to bottom with nbclient (< 1 min on a CPU); the committed file
carries its outputs.

Needs the `notebook` extra (nbclient, nbformat, ipykernel, matplotlib); skips only when one is not installed.
"""

from __future__ import annotations

import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOTEBOOK = os.path.join(REPO, "notebooks", "paper_numbers.ipynb")


def test_paper_numbers_notebook_executes():
    for mod in ("nbclient", "nbformat", "ipykernel", "matplotlib"):
        pytest.importorskip(mod, reason=f"{mod} missing: pip install -e '.[notebook]'")
    import nbclient
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert _pngs(nb) == 3, "commit the notebook with its outputs (KV, FLOPs, memory plots)"
    assert "REPO_URL" in nb.cells[1].source  # the install cell (Colab)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": REPO}}).execute()  # raises CellExecutionError on any failing cell
    assert _pngs(nb) == 3  # KV, FLOPs, memory plots


def _pngs(nb) -> int:
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    return sum("image/png" in o.get("data", {}) for o in outputs)
