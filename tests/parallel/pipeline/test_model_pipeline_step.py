"""The pipelined train step (train/pipeline_step.py) equals train/step.make_train_step.

One optimizer step of the tiny DeepSeek-V3 (4 layers, batch 16) from the same state, run as train/loop.py
runs it (state shardings of parallel/layout.py, inside jax.set_mesh): 1F1B on a mesh pipe=4, and DualPipeV on
pipe=2 × data=2 × fsdp=2 (the batch sharded over data × fsdp inside the same shard_map; params and AdamW
moments sharded over fsdp outside it, ZeRO, where the optimizer update runs under GSPMD).
Loss, CE/MTP/balance, grad norm and expert loads agree; the router biases (updated from the expert counts)
are identical; the moments after the step ((1-β1)·g and (1-β2)·g²) agree to 1e-5 of each leaf's largest entry
(measured ~2e-6) and stay split over fsdp; the updated parameters agree to a small fraction of the learning
rate. AdamW's first step moves each weight by ≈ lr·g/(|g|+ε), so a weight whose gradient is within float32
noise of ε = 1e-8 can move by a visibly different amount: 1.3e-5 at lr 5e-4 here, far from the 2·lr of a sign
flip.
"""

import pytest

from tests.parallel.pipeline.model_checks import moment_split, run_rows

CASES = [("1f1b", {"pipe": 4}, 8), ("dualpipev", {"pipe": 2, "data": 2, "fsdp": 2}, 4)]


@pytest.fixture(scope="module")
def rows():
    return run_rows(f"step_cases({CASES!r}, batch_size=16)")


def test_pipelined_train_step_equals_unpipelined(rows):
    assert [(r["name"], r["mesh"], r["chunks"]) for r in rows] == [tuple(c) for c in CASES]
    for r in rows:
        print(r)
        tag = f"{r['name']} {r['mesh']}"
        assert r["step"] == 1 and not r["missing_keys"] and not r["extra_ref_keys"], tag
        for key, rel in r["metric_rel"].items():
            assert rel < 1e-6, (tag, key, rel)
        assert r["load_equal"] and r["router_equal"], tag
        assert r["param_max_abs"] < 0.05 * r["lr"], (tag, r["param_max_abs"])
        assert r["grad_max_rel"] < 1e-5, (tag, r["grad_max_rel"])   # AdamW's moments: (1-β1)·g, (1-β2)·g²
        fsdp = r["mesh"].get("fsdp", 1)   # ZeRO: the AdamW moments stay split over fsdp on their D dim
        for path, split in {**moment_split(r["moment_specs"]), **moment_split(r["embed_specs"])}.items():
            assert split[-1 if "embedding" in path else -2] == fsdp, (tag, path, split)
