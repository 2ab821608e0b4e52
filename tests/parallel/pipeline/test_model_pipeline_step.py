"""Issue 6 item 4: the pipelined train step (train/pipeline_step.py) equals train/step.make_train_step.

One optimizer step of the tiny DeepSeek-V3 (4 layers, batch 8) from the same state, run as train/loop.py
runs it (state shardings of parallel/layout.py, inside jax.set_mesh): 1F1B on a mesh pipe=4, and DualPipeV on
pipe=2 × data=2 (the batch sharded over the data axis inside the same shard_map).
Loss, CE/MTP/balance, grad norm and expert loads agree; the router biases (updated from the expert counts)
are identical; the updated parameters agree to a small fraction of the learning rate. AdamW's first step
moves each weight by ≈ lr·g/(|g|+ε), so a weight whose gradient is within float32 noise of ε = 1e-8 can move
by a visibly different amount: 1.3e-5 at lr 5e-4 here, far from the 2·lr of a sign flip.
"""

import pytest

from tests.parallel.pipeline.model_checks import run_rows

CASES = [("1f1b", 4, 1, 8), ("dualpipev", 2, 2, 4)]


@pytest.fixture(scope="module")
def rows():
    return run_rows(f"step_cases({CASES!r})")


def test_pipelined_train_step_equals_unpipelined(rows):
    assert [(r["name"], r["pipe"], r["data"], r["chunks"]) for r in rows] == CASES
    for r in rows:
        print(r)
        tag = f"{r['name']} pipe={r['pipe']} data={r['data']}"
        assert r["same_keys"] and r["step"] == 1, tag
        for key, rel in r["metric_rel"].items():
            assert rel < 1e-6, (tag, key, rel)
        assert r["load_equal"] and r["router_equal"], tag
        assert r["param_max_abs"] < 0.05 * r["lr"], (tag, r["param_max_abs"])
