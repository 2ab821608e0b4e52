"""Restore what a training run left in its workdir (dsv3_jax/train/loop.py layout):

    workdir/config.json        the experiment config of the checkpoints (written only after a successful
                               restore or a fresh init, so it always describes them)
    workdir/checkpoints/<step> orbax checkpoints of TrainState(step, params, opt_state, router, rng, fp8_meta)

`restore_newest` is the training resume: newest checkpoint first (or exactly train.restore_step), each one
validated, restored and checked finite (train/checkpoint.py); an unusable one is reported as ONE warning line
(step, file, cause) and the previous one is tried. `load_variables` is the inference restore: only the model
variables (params, router, FP8 histories) by orbax's partial restore, never the optimizer state (at 671B the
Adam moments are twice the params). `load_workdir` restores the whole TrainState (notebooks, analysis).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Callable

import jax
import ml_collections
import numpy as np
import optax

from dsv3_jax.experiment_config import ExperimentConfig, model_config
from dsv3_jax.train import checkpoint, optim
from dsv3_jax.train.checkpoint import CheckpointError
from dsv3_jax.train.state import init_state


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


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


def _agree(ok: bool) -> bool:
    """True only when every process succeeded (each reads its own shards, so one may fail alone)."""
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils
    return bool(np.all(multihost_utils.process_allgather(np.asarray(int(ok), np.int32))))


def _candidates(ckpt: checkpoint.Checkpointer, step: int | None) -> list[int]:
    steps = ckpt.steps()
    if step is None or step < 0:
        return steps[::-1]
    if step not in steps:
        raise ValueError(f"{ckpt.directory}: no checkpoint {step} (train.restore_step / --step); the checkpoints "
                         f"are {steps or 'none'}")
    return [step]


def _try_each(ckpt, candidates, restore_one: Callable[[int], object], warn):
    """(step, result) of the first candidate that restores; the CheckpointErrors of those that did not."""
    failures = []
    for i, step in enumerate(candidates):
        try:
            result, error = restore_one(step), None
        except CheckpointError as e:
            result, error = None, e
        if _agree(error is None):
            return step, result, failures
        error = error or CheckpointError(step, "state/", "another process could not read its part")
        failures.append(error)
        later = candidates[i + 1:]
        warn(f"checkpoint {step} in {ckpt.directory} is unusable: {error.where}: {error.cause}; "
             + (f"falling back to checkpoint {later[0]}" if later else "no older checkpoint to fall back to"))
    if failures:
        raise ValueError(f"no usable checkpoint in {ckpt.directory}: " + "; ".join(map(str, failures))
                         + ". Move the unusable ones away (or use a new --workdir) to start afresh")
    return None, None, failures


def restore_newest(ckpt: checkpoint.Checkpointer, abstract_state, restore_step: int = -1, warn=_warn):
    """(step, (state, data_state), {rejected step: why}) of the newest usable checkpoint, or (None, None, {})
    when there is none; restore_step >= 0 takes exactly that one. CheckpointMismatch (another model) propagates."""
    step, result, failures = _try_each(ckpt, _candidates(ckpt, restore_step),
                                       lambda s: ckpt.restore(s, abstract_state), warn)
    return step, result, {e.step: str(e) for e in failures}


def abstract_variables(cfg) -> dict:
    """The model variables' shapes {'params', 'router'[, 'fp8_meta']} as the train state holds them."""
    return jax.eval_shape(lambda: init_state(cfg, optax.identity(), 0, min(cfg.max_seq_len, 8))).variables()


def _require_checkpoints_dir(workdir: str) -> None:
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(ckpt_dir):
        raise ValueError(f"{ckpt_dir}: no checkpoints directory; train first (dsv3-train --workdir={workdir})")


def _open_read_only(workdir: str) -> checkpoint.Checkpointer:
    ckpt_dir = os.path.join(workdir, "checkpoints")
    ckpt = checkpoint.Checkpointer(workdir, read_only=True)
    if not ckpt.steps():
        ckpt.close()
        raise ValueError(f"{ckpt_dir}: no complete checkpoint found")
    return ckpt


def load_variables(workdir: str, step: int | None = None, fallback: ml_collections.ConfigDict | None = None,
                   warn=_warn):
    """(experiment ConfigDict, ModelConfig, variables, step): the model variables of the newest usable checkpoint
    (or exactly `step`) of a training workdir, by partial restore; the optimizer state is never read."""
    _require_checkpoints_dir(workdir)
    cd = workdir_config(workdir, fallback)
    cfg = model_config(cd)
    abstract = abstract_variables(cfg)
    ckpt = _open_read_only(workdir)
    try:
        got, variables, _ = _try_each(ckpt, _candidates(ckpt, step),
                                      lambda s: ckpt.restore_variables(s, abstract), warn)
    finally:
        ckpt.close()
    return cd, cfg, variables, got


def load_workdir(workdir: str, fallback: ml_collections.ConfigDict | None = None, warn=_warn):
    """(experiment ConfigDict, ModelConfig, TrainState) of the newest usable checkpoint in `workdir` (the whole
    state, optimizer included; for the model alone use load_variables)."""
    _require_checkpoints_dir(workdir)
    cd = workdir_config(workdir, fallback)
    exp = ExperimentConfig.from_dict(cd)
    optimizer = optim.make_optimizer(exp.train)
    abstract = jax.eval_shape(lambda: init_state(exp.model, optimizer, exp.train.seed, exp.train.seq_len))
    ckpt = _open_read_only(workdir)
    try:
        _, (state, _), _ = restore_newest(ckpt, abstract, warn=warn)
    finally:
        ckpt.close()
    return cd, exp.model, state
