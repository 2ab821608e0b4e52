"""Hugging Face checkpoint import/export: config.json mapping, safetensors shards, FP8 128x128 blocks, and
`from_pretrained` (sharded streaming load onto devices, with the checkpoint's tokenizer)."""

from dsv3_jax.interop.fp8_blocks import FP8Weight, dequantize_variables
from dsv3_jax.interop.hf import load_hf_checkpoint, read_hf_config, save_hf_checkpoint
from dsv3_jax.interop.hf_config import config_from_hf, config_to_hf
from dsv3_jax.interop.pretrained import from_pretrained
from dsv3_jax.interop import sources  # noqa: F401  (registers the train.init_from readers)

__all__ = ["from_pretrained", "load_hf_checkpoint", "save_hf_checkpoint", "read_hf_config", "config_from_hf",
           "config_to_hf", "FP8Weight", "dequantize_variables"]
