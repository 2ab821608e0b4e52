"""The JAX side of `dsv3-convert`: a params directory, and the train state of a training workdir.

Params directory (written by `save_params_dir`, e.g. from a Hugging Face checkpoint):
    PATH/model_config.json     ModelConfig.to_dict()
    PATH/variables/            orbax StandardCheckpointer: {'params': ..., 'router': ...}; FP8Weight leaves
                               are stored as {'value', 'scale_inv'} and revived on load
Training workdir (written by dsv3-train): `config.json` (the experiment config) and `checkpoints/` (orbax, via
dsv3_jax.train.checkpoint.Checkpointer); the newest usable step's params and router biases are read by partial
restore (dsv3_jax.train.restore.load_variables), never the optimizer state.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np

from dsv3_jax.config import ModelConfig
from dsv3_jax.interop.fp8_blocks import FP8Weight, is_fp8_weight
from dsv3_jax.interop.safetensors_io import atomic_directory

MODEL_CONFIG = "model_config.json"
VARIABLES = "variables"


def _to_storable(variables):
    """FP8Weight leaves -> {'value', 'scale_inv'} dicts (orbax stores plain containers)."""
    return jax.tree.map(lambda x: {"value": x.value, "scale_inv": x.scale_inv} if is_fp8_weight(x) else x,
                        variables, is_leaf=is_fp8_weight)


def _revive_fp8(tree):
    """Inverse of _to_storable."""
    if isinstance(tree, dict):
        if set(tree) == {"value", "scale_inv"}:
            return FP8Weight(np.asarray(tree["value"]), np.asarray(tree["scale_inv"]))
        return {k: _revive_fp8(v) for k, v in tree.items()}
    return tree


def save_params_dir(cfg: ModelConfig, variables, path: str, overwrite: bool = False) -> str:
    """Write cfg + variables as a params directory (atomically: nothing is left behind on failure)."""
    import orbax.checkpoint as ocp

    with atomic_directory(path, overwrite) as tmp:
        with open(os.path.join(tmp, MODEL_CONFIG), "w", encoding="utf-8") as f:
            json.dump(cfg.to_dict(), f, indent=1, sort_keys=True)
        ckpt = ocp.StandardCheckpointer()
        ckpt.save(os.path.join(tmp, VARIABLES), _to_storable(variables))
        ckpt.wait_until_finished()
        ckpt.close()
    return os.path.abspath(path)


def load_params_dir(path: str) -> tuple[ModelConfig, dict]:
    """(cfg, variables) of a params directory; leaves are host numpy arrays."""
    import orbax.checkpoint as ocp

    file = os.path.join(path, MODEL_CONFIG)
    if not os.path.isfile(file) or not os.path.isdir(os.path.join(path, VARIABLES)):
        raise ValueError(f"{path}: not a params directory (expected {MODEL_CONFIG} and {VARIABLES}/)")
    with open(file, encoding="utf-8") as f:
        cfg = ModelConfig.from_dict(json.load(f))
    ckpt = ocp.StandardCheckpointer()
    try:
        variables = ckpt.restore(os.path.abspath(os.path.join(path, VARIABLES)))
    finally:
        ckpt.close()
    return cfg, _revive_fp8(jax.tree.map(np.asarray, dict(variables)))


def load_workdir(workdir: str, step: int | None = None) -> tuple[ModelConfig, dict]:
    """(cfg, {'params', 'router'}) of the newest usable checkpoint (or exactly `step`) of a dsv3-train workdir."""
    from dsv3_jax.train.restore import load_variables

    _, cfg, restored, _ = load_variables(workdir, step)
    variables = {"params": restored["params"]}
    if restored.get("router"):
        variables["router"] = restored["router"]
    return cfg, jax.tree.map(np.asarray, variables)


def load_jax_source(path: str, step: int | None = None) -> tuple[ModelConfig, dict]:
    """A params directory or a training workdir (its newest usable checkpoint, or `step`), whichever `path` is."""
    if os.path.isfile(os.path.join(path, MODEL_CONFIG)):
        if step is not None:
            raise ValueError(f"{path}: a params directory has no steps; --step applies to a training workdir")
        return load_params_dir(path)
    if os.path.isfile(os.path.join(path, "config.json")) and os.path.isdir(os.path.join(path, "checkpoints")):
        return load_workdir(path, step)
    raise ValueError(f"{path}: neither a params directory ({MODEL_CONFIG} + {VARIABLES}/) nor a training "
                     "workdir (config.json + checkpoints/)")
