"""Shared fixtures of the reliability probes: ONE tiny trained workdir per session (checkpoints 2 and 4), copied
per test before it is damaged, and helpers to damage checkpoints the way a crash or a full disk would."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys

import pytest

from dsv3_jax.experiment_config import experiment_config
from tests.conftest import REPO, tiny_config

QUIET = lambda *a: None  # noqa: E731


def micro(steps=4, **train):
    """The probes' experiment: one MoE layer + MTP on synthetic bytes (test_infer_cli's model: shared compiles)."""
    model = tiny_config(vocab_size=259, init_std=0.02, n_layers=1, n_dense_layers=0).to_dict()
    cd = experiment_config(model)
    cd.data.update(dict(source="synthetic", synthetic_bytes=40_000, val_fraction=0.1))
    cd.train.update(dict(steps=steps, batch_size=4, seq_len=16, lr=3e-3, warmup_steps=1, log_every=1,
                         eval_every=steps, eval_batches=1, checkpoint_every=2, sample_tokens=0))
    cd.train.update(train)
    return cd


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A workdir trained 4 steps: checkpoints/2, checkpoints/4, config.json, metrics.jsonl. Never modify it."""
    from dsv3_jax.train.loop import train

    path = str(tmp_path_factory.mktemp("trained") / "run")
    train(micro(), path, log=QUIET)
    return path


@pytest.fixture
def workdir(trained, tmp_path):
    """A private copy of the trained workdir."""
    path = str(tmp_path / "run")
    shutil.copytree(trained, path)
    return path


def step_dir(workdir, step):
    return os.path.join(workdir, "checkpoints", str(step))


def truncate_data_files(workdir, step, size=1000):
    """Cut the array-data files of checkpoint `step` larger than `size` bytes to `size` (writes the disk lost).
    Every large file, not only the largest: orbax spreads the arrays over several files in an order that varies
    from run to run, so the largest alone may hold only the optimizer state, which loading the params never
    reads."""
    files = [f for f in glob.glob(os.path.join(step_dir(workdir, step), "state", "**", "d", "*"), recursive=True)]
    cut = [f for f in files if os.path.getsize(f) > size]
    assert cut, f"no data file of checkpoint {step} is larger than {size} bytes"
    for path in cut:
        with open(path, "r+b") as f:
            f.truncate(size)


def delete_arrays(workdir, step, prefix: bytes):
    """Delete every array whose orbax name starts with `prefix` (e.g. b"opt_state") from checkpoint `step`'s
    OCDBT store: its data and its zarr metadata are gone, as if never written."""
    import tensorstore as ts

    kv = ts.KvStore.open({"driver": "ocdbt", "base": "file://" + os.path.join(step_dir(workdir, step), "state/")})
    kv = kv.result()
    kv.delete_range(ts.KvStore.KeyRange(prefix, prefix + b"\xff")).result()
    assert not [k for k in kv.list().result() if k.startswith(prefix)]


def write_nonfinite_checkpoint(workdir, step, collection="params"):
    """Add checkpoint `step`: checkpoint 4 with every float of `collection` NaN, written with orbax directly
    (as an older version of the loop did; Checkpointer.save refuses it)."""
    import jax
    import jax.numpy as jnp
    import orbax.checkpoint as ocp

    from dsv3_jax.train import checkpoint, restore

    _, _, state = restore.load_workdir(workdir)
    poisoned = jax.tree.map(lambda x: jnp.full_like(x, jnp.nan) if jnp.issubdtype(x.dtype, jnp.floating) else x,
                            getattr(state, collection))
    state = state.replace(step=jnp.asarray(step, jnp.int32), **{collection: poisoned})
    with open(os.path.join(step_dir(workdir, 4), "data", "metadata"), encoding="utf-8") as f:
        data = json.load(f)
    manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), item_names=("state", "data"))
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(checkpoint._fields(state)),
                                               data=ocp.args.JsonSave(data)))
    manager.wait_until_finished()
    manager.close()


def read_rows(workdir):
    """metrics.jsonl as strict JSON (a bare NaN/Infinity is an error)."""
    def refuse(name):
        raise ValueError(f"non-JSON constant {name} in metrics.jsonl")
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(line, parse_constant=refuse) for line in f]


def train_steps(workdir, kind="train"):
    return [r["step"] for r in read_rows(workdir) if r["kind"] == kind]


def run_cli(module, *args, timeout=300, env=None):
    """`python -m module args`: (returncode, stdout, stderr)."""
    full_env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", **(env or {}))
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=full_env,
                          cwd=REPO, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


CONFIG_FILE = '''
from tests.reliability.conftest import micro


def get_config(arg=None):
    return micro()
'''


@pytest.fixture(scope="session")
def config_file(tmp_path_factory):
    """A config file for the CLI probes: get_config() -> micro()."""
    path = tmp_path_factory.mktemp("cfg") / "micro.py"
    path.write_text(CONFIG_FILE)
    return str(path)
