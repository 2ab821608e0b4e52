"""The JAX side of `dsv3-convert`: a params directory, and the train state of a training workdir.

Params directory (written by `save_params_dir`, e.g. from a Hugging Face checkpoint):
    PATH/model_config.json     ModelConfig.to_dict()
    PATH/variables/            orbax StandardCheckpointer: {'params': ..., 'router': ...}; FP8Weight leaves
                               are stored as {'value', 'scale_inv'} and revived on load
    PATH/tokenizer/            the source checkpoint's tokenizer files, when it had them (data/hf_tokenizer.py)
`load_params_dir` gives host numpy (the converter); `restore_params_dir` restores onto given shardings, each
process reading only its shards (from_pretrained, train.init_from).
Training workdir (written by dsv3-train): `config.json` (the experiment config) and `checkpoints/` (orbax, via
dsv3_jax.train.checkpoint.Checkpointer); the newest usable step's params and router biases are read by partial
restore (dsv3_jax.train.restore.load_variables), never the optimizer state.
"""

from __future__ import annotations

import json
import os

import flax
import jax
import numpy as np

from dsv3_jax import param_tree as pt
from dsv3_jax.config import ModelConfig
from dsv3_jax.data.hf_tokenizer import SUBDIR as TOKENIZER_SUBDIR, copy_tokenizer_files
from dsv3_jax.interop import fp8_blocks, hf_names, streaming
from dsv3_jax.interop.fp8_blocks import FP8Weight, is_fp8_weight
from dsv3_jax.interop.hf_checkpoint import keepable_fp8
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


def save_params_dir(cfg: ModelConfig, variables, path: str, overwrite: bool = False,
                    tokenizer_from: str | None = None) -> str:
    """Write cfg + variables (+ the tokenizer files of checkpoint directory `tokenizer_from`) as a params
    directory (atomically: nothing is left behind on failure)."""
    import orbax.checkpoint as ocp

    with atomic_directory(path, overwrite) as tmp:
        if tokenizer_from:
            copy_tokenizer_files(tokenizer_from, os.path.join(tmp, TOKENIZER_SUBDIR))
        with open(os.path.join(tmp, MODEL_CONFIG), "w", encoding="utf-8") as f:
            json.dump(cfg.to_dict(), f, indent=1, sort_keys=True)
        ckpt = ocp.StandardCheckpointer()
        ckpt.save(os.path.join(tmp, VARIABLES), _to_storable(variables))
        ckpt.wait_until_finished()
        ckpt.close()
    return os.path.abspath(path)


def read_params_config(path: str, mtp: bool = True) -> ModelConfig:
    """The ModelConfig of a params directory (mtp=False: without its MTP modules)."""
    file = os.path.join(path, MODEL_CONFIG)
    if not os.path.isfile(file) or not os.path.isdir(os.path.join(path, VARIABLES)):
        raise ValueError(f"{path}: not a params directory (expected {MODEL_CONFIG} and {VARIABLES}/)")
    try:
        with open(file, encoding="utf-8") as f:
            cfg = ModelConfig.from_dict(json.load(f))
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: invalid JSON ({e})") from None
    return cfg if mtp else cfg.replace(mtp_depth=0)


def load_params_dir(path: str) -> tuple[ModelConfig, dict]:
    """(cfg, variables) of a params directory; leaves are host numpy arrays."""
    import orbax.checkpoint as ocp

    cfg = read_params_config(path)
    ckpt = ocp.StandardCheckpointer()
    try:
        variables = ckpt.restore(os.path.abspath(os.path.join(path, VARIABLES)))
    finally:
        ckpt.close()
    return cfg, _revive_fp8(jax.tree.map(np.asarray, dict(variables)))


def _restore_target(vdir: str, cfg: ModelConfig, shardings: dict, dtype) -> tuple[dict, set]:
    """The orbax target {stored path: ShapeDtypeStruct with its sharding} for the variables of `cfg`, checked
    against what is stored; and the paths stored as FP8 ({'value', 'scale_inv'})."""
    import orbax.checkpoint as ocp

    meta_reader = ocp.StandardCheckpointer()
    try:
        meta = meta_reader.metadata(vdir).item_metadata
    finally:
        meta_reader.close()
    stored = flax.traverse_util.flatten_dict(dict(getattr(meta, "tree", meta)))
    target, fp8 = {}, set()
    for path, shape in hf_names.variable_shapes(cfg).items():
        if path + ("value",) in stored:
            fp8.add(path)
            parts = {"value": (shape, fp8_blocks.E4M3, shardings[path]),
                     "scale_inv": (fp8_blocks.scale_shape(shape), np.float32,
                                   streaming.scale_sharding(shardings[path], shape))}
        else:
            parts = {None: (shape, np.float32 if path[0] == pt.ROUTER else dtype, shardings[path])}
        for part, (want, dt, sh) in parts.items():
            key = path if part is None else path + (part,)
            got = tuple(stored[key].shape) if key in stored else None
            if got != tuple(want):
                raise ValueError(f"{vdir}: variable {'/'.join(key)}: expected shape {tuple(want)}, found "
                                 f"{'nothing' if got is None else got}")
            target[key] = jax.ShapeDtypeStruct(want, dt, sharding=sh)
    extra = sorted(k for k in stored if k not in target and not (cfg.mtp_depth == 0 and pt.is_mtp(k[1])))
    if extra:
        raise ValueError(f"{vdir}: stores {'/'.join(extra[0])}, which is not a variable of its "
                         f"{MODEL_CONFIG}'s model (nothing is dropped silently)")
    return target, fp8


def restore_params_dir(path: str, cfg: ModelConfig, shardings: dict, dtype, keep_fp8: bool = False) -> dict:
    """The variables of params directory `path` (of model `cfg`, possibly without its MTP modules) restored
    onto `shardings` ({path: sharding}) in `dtype`, each process reading only its shards. FP8 kernels stay
    FP8Weight leaves with keep_fp8 (Linear kernels only), else they are dequantized on their devices."""
    import orbax.checkpoint as ocp

    vdir = os.path.abspath(os.path.join(path, VARIABLES))
    target, fp8 = _restore_target(vdir, cfg, shardings, dtype)
    tree = flax.traverse_util.unflatten_dict(target)
    reader = ocp.PyTreeCheckpointer()
    try:
        flat = flax.traverse_util.flatten_dict(reader.restore(vdir, args=ocp.args.PyTreeRestore(
            item=tree, restore_args=ocp.checkpoint_utils.construct_restore_args(tree), partial_restore=True)))
    finally:
        reader.close()
    for p in fp8:
        w = FP8Weight(flat.pop(p + ("value",)), flat.pop(p + ("scale_inv",)))
        flat[p] = w if keep_fp8 and keepable_fp8(p) else jax.jit(
            lambda w: w.dequantize(dtype), out_shardings=shardings[p])(w)
    return flax.traverse_util.unflatten_dict(flat)


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
