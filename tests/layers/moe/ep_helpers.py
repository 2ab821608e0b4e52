"""Shared bits of the expert-parallel tests: a fast-compiling XLA prefix and a one-MoE-layer model."""

# Prepended to code run by conftest.run_with_devices: unoptimized XLA:CPU compiles several times faster, and
# these tests check numerics of tiny shapes, not speed. XLA reads the flags when the backend starts.
FAST_XLA = """
import os
os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
"""

# tiny_config overrides: one MoE block plus an MTP block (two MoE layers, one scanned), no q compression.
SMALL_MOE = dict(n_layers=1, n_dense_layers=0, q_lora_rank=0, moe_impl="ep")
