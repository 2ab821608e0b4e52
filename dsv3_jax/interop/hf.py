"""Load and save Hugging Face DeepSeek-V2/V3 checkpoints (config.json + safetensors shards, FP8 blocks).

    cfg, variables = load_hf_checkpoint(path)           # variables = {'params': ..., 'router': ...}, host numpy
    out = DeepSeekV3(cfg).apply(variables, tokens)
    save_hf_checkpoint(cfg, variables, out_dir)         # the same files back (round trip exact)

`load_hf_checkpoint` returns the FULL variables dict — the trainable 'params' and the 'router' collection
(e_score_correction_bias, V3 only) — because the model needs both. Its leaves are host numpy arrays: the
converter's path (dsv3-convert --from-hf). To put a checkpoint on devices without a whole-model host copy,
use `dsv3_jax.from_pretrained(path, mesh=...)` (interop/pretrained.py), which reads each device's shard
straight from the files. Both read through interop/streaming.py after interop/hf_checkpoint.py has validated
every name, shape, dtype and FP8 scale (a bad checkpoint fails before any data is read, with a ValueError
naming the tensor, the expected and the found shape). Router biases stay float32 whatever `dtype` is.

Hugging Face transformers, checked against 5.23.0 (tests/interop/test_interop_hf_parity.py):
  * on disk, experts stay per expert (mlp.experts.{e}.gate_proj.weight ...) although 5.x fuses them in memory;
  * the router fills dropped expert groups with -inf in 5.x (as the official code and dsv3_jax); 4.x filled
    0.0, which differs only when a biased score can be negative;
  * DeepseekV3 always routes with sigmoid + noaux_tc + top-2 group sums, whatever scoring_func/topk_method
    say, and DeepseekV2 never normalizes the top-k weights: hf_config rejects configs these would misread;
  * no MTP: the layer num_hidden_layers is neither built nor saved by save_pretrained (its checkpoints say
    num_nextn_predict_layers=0, or load with mtp=False); it loads our exports and lists the MTP tensors
    as unexpected;
  * its FP8 dequantization (`Fp8Dequantize`) derives the block size from weight_shape // scale_shape, which
    is wrong or fails on partial edge blocks (e.g. 576 rows: 5 scale rows); we always use 128 (fp8_blocks).
"""

from __future__ import annotations

import functools
import json
import os

import flax
import numpy as np

from dsv3_jax import param_tree as pt
from dsv3_jax.config import ModelConfig
from dsv3_jax.data.hf_tokenizer import copy_tokenizer_files
from dsv3_jax.interop import fp8_blocks, hf_names, safetensors_io as st, streaming
from dsv3_jax.interop.fp8_blocks import FP8Weight
from dsv3_jax.interop.hf_checkpoint import (HFCheckpoint, Leaf, as_numpy_dtype, open_checkpoint,  # noqa: F401
                                            read_hf_config, scale_name)
from dsv3_jax.interop.hf_config import config_to_hf
from dsv3_jax.interop.hf_names import Slot


def leaf_views(leaf: Leaf, dtype: np.dtype, keep_fp8: bool) -> list[streaming.View]:
    """How `leaf` is read: one float view, or (value, scale) views for an FP8 kernel kept FP8."""
    if keep_fp8 and leaf.keepable_fp8:
        return [streaming.View(leaf, "value", fp8_blocks.E4M3), streaming.View(leaf, "scale", np.dtype(np.float32))]
    return [streaming.View(leaf, "float", np.dtype(np.float32) if leaf.path[0] == pt.ROUTER else dtype)]


def file_order(ckpt: HFCheckpoint) -> list[Leaf]:
    """The variables in the order of their first tensor in the shards (sequential reads)."""
    first = lambda leaf: (ckpt.tensors[leaf.slots[0].hf_name].file, ckpt.tensors[leaf.slots[0].hf_name].start)
    return sorted(ckpt.leaves.values(), key=first)


def load_hf_checkpoint(path: str, *, keep_fp8: bool = False, dtype=np.float32,
                       mtp: bool = True) -> tuple[ModelConfig, dict]:
    """(cfg, variables) from a Hugging Face DeepSeek-V2/V3 directory, as host numpy arrays.

    keep_fp8: FP8 Linear kernels stay FP8 as `FP8Weight(value, scale_inv)` leaves in our [in, out] layout (see
      quant/fp8_weight.py; `dequantize_variables` turns them into kernels); otherwise, and for any other FP8
      tensor, they are dequantized per 128x128 block. dtype: the numpy dtype of the other parameters (float32,
      or ml_dtypes.bfloat16). mtp: False loads the main model only (mtp_depth=0; the MTP layers' tensors are
      skipped on purpose).
    """
    dtype = as_numpy_dtype(dtype)
    ckpt = open_checkpoint(path, mtp=mtp)
    reader = st.Reader()
    flat = {}
    try:
        for leaf in file_order(ckpt):
            arrays = [streaming.read_host(reader, ckpt, v) for v in leaf_views(leaf, dtype, keep_fp8)]
            flat[leaf.path] = FP8Weight(*arrays) if len(arrays) == 2 else arrays[0]
    finally:
        reader.close()
    return ckpt.cfg, flax.traverse_util.unflatten_dict(flat)


def save_hf_checkpoint(cfg: ModelConfig, variables, path: str, *, shard_size="5GB", dtype=None,
                       overwrite: bool = False, tokenizer_from: str | None = None) -> str:
    """Write `variables` ({'params', 'router'}, numpy or jax leaves, boxed or not; FP8Weight leaves are written
    as FP8 + weight_scale_inv) as a Hugging Face checkpoint directory, with the tokenizer files of checkpoint
    directory `tokenizer_from` when it has them. dtype: output dtype of the non-FP8 parameters (default: as
    stored). Written into a temporary sibling directory and renamed at the end: a failure leaves nothing
    behind. Returns the absolute path."""
    dtype = None if dtype is None else as_numpy_dtype(dtype)
    flat = _flatten_variables(variables)
    _check_tree(flat, hf_names.variable_shapes(cfg))
    entries = []
    for slot in hf_names.model_slots(cfg) + hf_names.shared_copy_slots(cfg):
        entries += _entries(slot, flat[slot.path], dtype)
    fp8 = any(code == "F8_E4M3" for _, code, _, _ in entries)
    emb = flat[(pt.PARAMS, pt.EMBED, "embedding")]
    hf_cfg = config_to_hf(cfg, fp8=fp8, dtype=np.dtype(dtype or emb.dtype).name)
    sizes = [int(np.prod(shape)) * st.DTYPES[code].itemsize for _, code, shape, _ in entries]
    shards = st.plan_shards(sizes, st.parse_size(shard_size))
    files = st.shard_file_names(len(shards))
    with st.atomic_directory(path, overwrite) as tmp:
        if tokenizer_from:
            copy_tokenizer_files(tokenizer_from, tmp)
        with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
            json.dump(hf_cfg, f, indent=2, sort_keys=True)
        for file, idx in zip(files, shards):
            st.write_file(os.path.join(tmp, file), [entries[i] for i in idx])
        if len(files) > 1:
            weight_map = {entries[i][0]: file for file, idx in zip(files, shards) for i in idx}
            with open(os.path.join(tmp, st.INDEX_FILE), "w", encoding="utf-8") as f:
                json.dump({"metadata": {"total_size": sum(sizes)}, "weight_map": weight_map}, f, indent=2)
    return os.path.abspath(path)


def _flatten_variables(variables) -> dict:
    variables = flax.linen.unbox(flax.core.unfreeze(variables))
    if not isinstance(variables, dict) or "params" not in variables:
        raise ValueError("variables: expected a dict with a 'params' collection (and 'router' for V3), got "
                         f"{type(variables).__name__} with keys {list(variables) if isinstance(variables, dict) else '-'}")
    return flax.traverse_util.flatten_dict(variables)


def _check_tree(flat: dict, shapes: dict) -> None:
    for p, shape in shapes.items():
        if p not in flat:
            raise ValueError(f"variables: missing {'/'.join(p)}, expected shape {shape}")
        if tuple(flat[p].shape) != shape:
            raise ValueError(f"variables: {'/'.join(p)}: expected shape {shape}, found {tuple(flat[p].shape)}")
    extra = sorted(set(flat) - set(shapes))
    if extra:
        raise ValueError(f"variables: {'/'.join(extra[0])} is not a variable of this ModelConfig's model "
                         "(it would be dropped)")


def _slot_array(leaf, slot: Slot, dtype=None) -> np.ndarray:
    a = np.asarray(leaf[slot.index] if slot.index else leaf)  # a jax leaf transfers only this slice
    a = a.T if slot.transpose else a
    return a if dtype is None else a.astype(dtype, copy=False)


def _entries(slot: Slot, leaf, dtype) -> list[tuple]:
    """(name, dtype code, shape, produce) for write_file: one tensor, or an FP8 weight and its scales."""
    if isinstance(leaf, FP8Weight):
        shape = hf_names.slot_shape(slot, leaf.value.shape)
        return [(slot.hf_name, "F8_E4M3", shape, functools.partial(_slot_array, leaf.value, slot)),
                (scale_name(slot.hf_name), "F32", fp8_blocks.scale_shape(shape),
                 functools.partial(_slot_array, leaf.scale_inv, slot, np.float32))]
    out = np.dtype(np.float32 if slot.path[0] == pt.ROUTER else (dtype or leaf.dtype))
    return [(slot.hf_name, st.dtype_code(out), hf_names.slot_shape(slot, tuple(leaf.shape)),
             functools.partial(_slot_array, leaf, slot, out))]
