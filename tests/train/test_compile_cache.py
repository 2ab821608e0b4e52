"""The persistent compilation cache of user runs (issue 18): dsv3-train writes the compiled train step to
--compile_cache_dir, a second run of the same job loads it from there, and --no_compile_cache writes nothing
even when $JAX_COMPILATION_CACHE_DIR names a directory. Each run is its own process, as for a user."""

from __future__ import annotations

import os
import subprocess
import sys

from dsv3_jax.train import compile_cache
from tests.conftest import REPO

CONFIG = '''
from dsv3_jax.experiment_config import experiment_config


def get_config(arg=None):
    cd = experiment_config(dict(
        vocab_size=259, dim=32, inter_dim=48, moe_inter_dim=16, n_layers=1, n_dense_layers=0, n_heads=2,
        n_routed_experts=8, n_shared_experts=1, n_activated_experts=3, n_expert_groups=4, n_limited_groups=2,
        q_lora_rank=16, kv_lora_rank=12, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8,
        max_seq_len=64, original_seq_len=16, rope_factor=4.0, mtp_depth=1, dtype="float32"))
    cd.data.update(dict(source="synthetic", synthetic_bytes=20_000, val_fraction=0.1))
    cd.train.update(dict(steps=2, batch_size=2, seq_len=16, warmup_steps=1, log_every=1, eval_batches=0,
                         checkpoint_every=2, sample_tokens=0))
    return cd
'''


def _train(tmp_path, name, *flags, env_cache=None):
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    if env_cache:
        env["JAX_COMPILATION_CACHE_DIR"] = env_cache
    proc = subprocess.run([sys.executable, "-m", "dsv3_jax.train", f"--config={tmp_path / 'micro.py'}",
                           f"--workdir={tmp_path / name}", *flags], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ready = [line for line in proc.stdout.splitlines() if line.startswith("train step ready in ")]
    assert len(ready) == 1, proc.stdout
    return ready[0], proc.stderr


def test_second_run_loads_the_train_step_from_the_cache_and_the_flag_turns_it_off(tmp_path):
    (tmp_path / "micro.py").write_text(CONFIG)
    cache = tmp_path / "xla"
    first, err = _train(tmp_path, "run1", f"--compile_cache_dir={cache}")
    assert f"compilation cache: {cache} (--no_compile_cache turns it off)" in err
    assert "written to the compilation cache" in first and os.listdir(cache)
    second, _ = _train(tmp_path, "run2", f"--compile_cache_dir={cache}")  # a new workdir: the same programs
    assert "(loaded from the compilation cache)" in second, second

    unused = tmp_path / "unused"
    third, err = _train(tmp_path, "run3", "--no_compile_cache", env_cache=str(unused))
    assert "compilation cache: off (--no_compile_cache)" in err
    assert "XLA compile" in third and "cache" not in third.split(";")[0]
    assert not unused.exists() or not os.listdir(unused)


def test_default_directory(monkeypatch, tmp_path):
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compile_cache.default_dir() == os.path.join(str(tmp_path), "dsv3_jax", "xla")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert compile_cache.default_dir() == os.path.join(os.path.expanduser("~"), ".cache", "dsv3_jax", "xla")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax"))
    assert compile_cache.default_dir() == str(tmp_path / "jax")
