"""The native ragged_all_to_all EP path: lowered for CUDA on 8 fake CPU devices (any machine), and run
against the all_to_all and local paths on a GPU (skipped without one). Script: benchmarks/gpu_check.py."""

import jax
import pytest

from tests.conftest import run_with_devices
from tests.layers.moe.ep_helpers import FAST_XLA

EXPORT = FAST_XLA + """
from benchmarks import gpu_check
raise SystemExit(gpu_check.main(["--export", "--batch", "8", "--seq", "16"]))
"""


def test_ragged_path_lowers_for_cuda_with_eight_expert_ranks():
    out = run_with_devices(EXPORT, 8)
    assert "expert axis 8, compute payload: 8 ragged_all_to_all" in out  # 2 MoE layers x (2 fwd + 2 bwd)
    assert out.strip().endswith("PASS")


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU (native ragged_all_to_all)")
def test_ragged_path_on_gpu_matches_cpu_path():
    from benchmarks import gpu_check
    assert gpu_check.main(["--batch", "4", "--seq", "64"]) == 0
