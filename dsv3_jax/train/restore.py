"""Load what a training run left in its workdir (dsv3_jax/train/loop.py layout):

    workdir/config.json        the experiment config the loop saved (ConfigDict JSON)
    workdir/checkpoints/<step> orbax checkpoints of TrainState(step, params, opt_state, router, rng)

The abstract TrainState is built as the loop builds it (optim.make_optimizer + state.init_state) under
jax.eval_shape, so nothing is initialized; orbax restores the latest step into it.
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections

from dsv3_jax.experiment_config import model_config
from dsv3_jax.train import checkpoint, optim
from dsv3_jax.train.state import init_state


def workdir_config(workdir: str, fallback: ml_collections.ConfigDict | None = None) -> ml_collections.ConfigDict:
    """The experiment config saved in workdir/config.json, else `fallback` (e.g. --config=configs/tiny.py)."""
    path = os.path.join(workdir, "config.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            try:
                return ml_collections.ConfigDict(json.load(f))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not valid JSON ({e}); expected the config saved by dsv3-train") from e
    if fallback is None:
        raise ValueError(f"{path} not found: pass the experiment config the run was trained with "
                         "(--config=configs/<name>.py)")
    return fallback


def load_workdir(workdir: str, fallback: ml_collections.ConfigDict | None = None):
    """(experiment ConfigDict, ModelConfig, TrainState) of the newest checkpoint in `workdir`."""
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(ckpt_dir):
        raise ValueError(f"{ckpt_dir}: no checkpoints directory; train first (dsv3-train --workdir={workdir})")
    cd = workdir_config(workdir, fallback)
    cfg = model_config(cd)
    optimizer = optim.make_optimizer(cd.train)
    abstract = jax.eval_shape(lambda: init_state(cfg, optimizer, cd.train.seed, cd.train.seq_len))
    ckpt = checkpoint.Checkpointer(workdir)
    try:
        state, _ = ckpt.restore_latest(abstract)
    finally:
        ckpt.close()
    if state is None:
        raise ValueError(f"{ckpt_dir}: no complete checkpoint found")
    return cd, cfg, state
