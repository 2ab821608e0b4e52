"""Load what a training run left in its workdir: the experiment config and the latest train state."""

from __future__ import annotations

import json
import os

import jax
import ml_collections

from dsv3_jax.experiment_config import model_config
from dsv3_jax.train import checkpoint, optim
from dsv3_jax.train.state import init_state


def load_workdir(workdir: str):
    """(experiment ConfigDict, ModelConfig, TrainState) of the newest checkpoint in `workdir`."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise ValueError(f"{path}: missing; is {workdir!r} a dsv3-train workdir?")
    with open(path, encoding="utf-8") as f:
        cd = ml_collections.ConfigDict(json.load(f))
    cfg = model_config(cd)
    optimizer = optim.make_optimizer(cd.train)
    abstract = jax.eval_shape(lambda: init_state(cfg, optimizer, cd.train.seed, cd.train.seq_len))
    ckpt = checkpoint.Checkpointer(workdir)
    try:
        state, _ = ckpt.restore_latest(abstract)
    finally:
        ckpt.close()
    if state is None:
        raise ValueError(f"{ckpt.directory}: no checkpoint found")
    return cd, cfg, state
