"""The checkpoint readers train.init_from uses (train/init_from.py), registered when `import dsv3_jax` imports
interop: a Hugging Face directory (the streaming loader, interop/pretrained.py) or a params directory (orbax).
Both load float32 master weights straight into the train state's shardings, each process its own shards."""

from __future__ import annotations

from dsv3_jax.interop import jax_dirs
from dsv3_jax.interop.hf_checkpoint import open_checkpoint, read_hf_config
from dsv3_jax.interop.hf_config import config_from_hf
from dsv3_jax.interop.pretrained import checkpoint_kind, load_hf_variables
from dsv3_jax.train.init_from import Source, register_source


def _kind(path: str) -> str | None:
    try:
        return checkpoint_kind(path)
    except ValueError:
        return None


def _load_hf(path, cfg, shardings):
    ckpt = open_checkpoint(path, mtp=cfg.mtp_depth > 0)  # validated before any data is read
    return load_hf_variables(ckpt, shardings, dtype="float32")


def _load_params(path, cfg, shardings):
    return jax_dirs.restore_params_dir(path, cfg.replace(fp8="none"), shardings, "float32")


register_source(Source(
    "hf", "a Hugging Face checkpoint (config.json + model.safetensors or model.safetensors.index.json)",
    lambda p: _kind(p) == "hf", lambda p, mtp: config_from_hf(read_hf_config(p), mtp=mtp)[0], _load_hf))
register_source(Source(
    "params", f"a params directory from dsv3-convert ({jax_dirs.MODEL_CONFIG} + {jax_dirs.VARIABLES}/)",
    lambda p: _kind(p) == "params", jax_dirs.read_params_config, _load_params))
