"""Hugging Face checkpoint import/export: config.json mapping, safetensors shards, FP8 128x128 blocks."""

from dsv3_jax.interop.fp8_blocks import FP8Weight, dequantize_variables
from dsv3_jax.interop.hf import load_hf_checkpoint, read_hf_config, save_hf_checkpoint
from dsv3_jax.interop.hf_config import config_from_hf, config_to_hf

__all__ = ["load_hf_checkpoint", "save_hf_checkpoint", "read_hf_config", "config_from_hf", "config_to_hf",
           "FP8Weight", "dequantize_variables"]
