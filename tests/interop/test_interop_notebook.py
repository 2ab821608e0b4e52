"""notebooks/hf_checkpoint.ipynb executes top to bottom: a tiny DeepSeek-V3 made with transformers plus a BPE
tokenizer trained in the notebook; from_pretrained, logits vs transformers, generation, 20 fine-tuning steps,
export and reload in transformers (each cell asserts its own check)."""

import os

import pytest

from tests.conftest import REPO


def test_hf_checkpoint_notebook_executes(monkeypatch):
    for mod in ("nbclient", "nbformat", "ipykernel", "torch", "transformers", "tokenizers"):
        pytest.importorskip(mod, reason=f"{mod} missing: pip install -e '.[test,notebook,hf]'")
    import nbclient
    import nbformat

    # The kernel imports this checkout (also when another copy of dsv3_jax is installed).
    monkeypatch.setenv("PYTHONPATH", REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    nb = nbformat.read(os.path.join(REPO, "notebooks", "hf_checkpoint.ipynb"), as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": os.path.join(REPO, "notebooks")}}).execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    for line in ("dsv3_jax ready", "max abs difference", "loss ", "exported model: max abs logit difference"):
        assert line in text, line
