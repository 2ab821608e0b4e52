"""benchmarks/gpu_suite.py: its CPU dry run (tiny shapes; the GPU kernels in Pallas interpret mode, the Mosaic
kernel and the train step lowered for CUDA, transformers side by side) passes every step and writes its
results; the model configs it carries (it runs where ml-collections is missing) equal configs/small.py."""

import importlib.util
import json
import os

from tests.conftest import REPO, run_with_devices


def test_small_model_literal_equals_configs_small():
    from benchmarks.gpu_steps import SMALL
    spec = importlib.util.spec_from_file_location("_small", os.path.join(REPO, "configs", "small.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    repo = module.get_config().model.to_dict()
    assert {k: repo[k] for k in SMALL} == SMALL


def test_dry_run_passes_every_step(tmp_path):
    out = run_with_devices(f"""
import sys
from benchmarks import gpu_suite
sys.exit(gpu_suite.main(["--out", {str(tmp_path)!r}, "--dry-run"]))
""", n_devices=1, timeout=900)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["dry_run"] and list(results["steps"]) == list(__import__("benchmarks.gpu_suite").gpu_suite.STEPS)
    for name, step in results["steps"].items():
        assert step["ok"], (name, step.get("error", step.get("rows")))
    rows = {r["case"]: r for s in results["steps"].values() for r in s["rows"]}
    assert rows["mosaic_gpu lowers for CUDA 256x256x1024"]["status"] == "PASS"
    assert rows["train step (bf16, fp8=blockwise) lowers for CUDA"]["status"] == "PASS"
    assert "# GPU suite" in (tmp_path / "results.md").read_text() and "[gpu_suite] decode: ok" in out
