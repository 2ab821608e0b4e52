"""Shared test fixtures: tiny float32 configs and helpers to run code on fake CPU devices."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import tempfile
import textwrap

# Many tests (and their subprocesses, which inherit the environment) compile the same micro models: a
# persistent XLA compilation cache shared by all of them roughly halves the suite's time on 2 CPU cores.
# Entries are keyed by the computation, so a stale entry can't be picked up; set the variable to override.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "dsv3_jax_test_xla_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import jax  # noqa: E402  (after the cache settings, which jax reads at import)
import pytest  # noqa: E402

from dsv3_jax.config import ModelConfig  # noqa: E402

jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])  # if imported earlier
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Every compiled XLA:CPU executable keeps its JIT-compiled code in memory maps of its own (one tiny model's forward
# and backward: about 1,000), and jax's caches keep every executable of the process alive. An xdist worker that
# runs half the suite reached Linux's limit of 65,530 maps per process (vm.max_map_count): mmap then fails inside
# XLA and the worker dies (SIGSEGV or SIGABRT in a compile or a cache write; the core dump had 65,202 maps).
# Past MAX_MAPS, the caches are cleared after the test, which unmaps the executables no test holds any more.
MAX_MAPS = 20_000


def _map_count() -> int:
    try:
        with open("/proc/self/maps", "rb") as f:
            return sum(1 for _ in f)
    except OSError:  # not Linux: no such limit to watch
        return 0


@pytest.fixture(autouse=True)
def _bounded_memory_maps():
    yield
    if _map_count() > MAX_MAPS:
        jax.clear_caches()
        gc.collect()


def tiny_config(**overrides) -> ModelConfig:
    """A very small model with every mechanism: 1 dense + 2 MoE layers, 4 groups, shared expert, YaRN, MTP."""
    base = dict(vocab_size=61, dim=32, inter_dim=48, moe_inter_dim=16, n_layers=3, n_dense_layers=1, n_heads=2,
                n_routed_experts=8, n_shared_experts=1, n_activated_experts=3, n_expert_groups=4,
                n_limited_groups=2, score_func="sigmoid", route_scale=2.5, router_bias=True,
                q_lora_rank=16, kv_lora_rank=12, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8,
                max_seq_len=64, original_seq_len=16, rope_factor=4.0, mtp_depth=1, dtype="float32",
                init_std=0.2)
    base.update(overrides)
    return ModelConfig(**base)


@pytest.fixture
def tiny_cfg():
    return tiny_config()


def run_with_devices(code: str, n_devices: int = 8, timeout: int = 300) -> str:
    """Run `code` in a fresh Python with n fake CPU devices (XLA_FLAGS must precede the jax import)."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n_devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=REPO)
    if proc.returncode != 0:
        raise AssertionError(f"subprocess failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout
