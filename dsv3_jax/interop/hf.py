"""Load and save Hugging Face DeepSeek-V2/V3 checkpoints (config.json + safetensors shards, FP8 blocks).

    cfg, variables = load_hf_checkpoint(path)           # variables = {'params': ..., 'router': ...}
    out = DeepSeekV3(cfg).apply(variables, tokens)
    save_hf_checkpoint(cfg, variables, out_dir)         # the same files back (round trip exact)

`load_hf_checkpoint` returns the FULL variables dict — the trainable 'params' and the 'router' collection
(e_score_correction_bias, V3 only) — because the model needs both; DESIGN's `cfg, params =
dsv3_jax.load_hf_checkpoint(path)` names that dict `params`. Leaves are host numpy arrays (one copy, no device
memory); `jax.device_put(variables, shardings)` places them. Router biases stay float32 whatever `dtype` is.

Streaming: shapes come from `jax.eval_shape` of the model, every destination (including the scanned layer
stacks and expert stacks) is preallocated once, then each checkpoint tensor is read from its shard (in file
order), dequantized if FP8, transposed and written into its slot; peak memory is about one copy of the
parameters plus a few copies of the largest single tensor (measured: +532 MiB RSS for 452 MiB of params).
Everything is validated (names, shapes, dtypes, FP8 scales, leftover tensors) before any data is read, so a
bad checkpoint fails fast with a ValueError naming the tensor, the expected and the found shape.

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
from typing import Any

import flax
import ml_dtypes
import numpy as np

from dsv3_jax import param_tree as pt
from dsv3_jax.config import ModelConfig
from dsv3_jax.interop import fp8_blocks, hf_names, safetensors_io as st
from dsv3_jax.interop.fp8_blocks import FP8Weight
from dsv3_jax.interop.hf_config import config_from_hf, config_to_hf
from dsv3_jax.interop.hf_names import Slot

FLOAT_CODES = ("F32", "BF16", "F16", "F64", "F8_E4M3")
NAMED_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16),
                "float16": np.dtype(np.float16)}
CHUNK_ROWS = 4096  # rows per comparison step when checking the MTP layers' shared-tensor copies


def read_hf_config(path: str) -> dict[str, Any]:
    """The parsed config.json of a checkpoint directory (ValueError naming the file if absent/invalid)."""
    file = os.path.join(path, "config.json")
    if not os.path.isfile(file):
        raise ValueError(f"{path}: no config.json (not a Hugging Face checkpoint directory)")
    try:
        with open(file, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: invalid JSON ({e})") from None


def load_hf_checkpoint(path: str, *, keep_fp8: bool = False, dtype=np.float32,
                       mtp: bool = True) -> tuple[ModelConfig, dict]:
    """(cfg, variables) from a Hugging Face DeepSeek-V2/V3 directory.

    keep_fp8: FP8 weights stay FP8 as `FP8Weight(value, scale_inv)` leaves in our [in, out] layout (see
      fp8_blocks; `dequantize_variables` turns them into kernels); otherwise they are dequantized per 128x128
      block. dtype: the numpy dtype of the other parameters (float32, or ml_dtypes.bfloat16).
    mtp: False loads the main model only (mtp_depth=0; the MTP layers' tensors are skipped on purpose).
    """
    dtype = as_numpy_dtype(dtype)
    cfg, _ = config_from_hf(read_hf_config(path), mtp=mtp)
    tensors = st.checkpoint_tensors(path)
    slots, copies = hf_names.model_slots(cfg), hf_names.shared_copy_slots(cfg)
    shapes = hf_names.variable_shapes(cfg)
    _check_coverage(slots, shapes)
    fp8_paths = _validate(path, cfg, tensors, slots + copies, shapes, mtp)
    dests = _allocate(shapes, fp8_paths if keep_fp8 else set(), dtype)
    reader = st.Reader()
    try:
        for slot in sorted(slots, key=lambda s: (tensors[s.hf_name].file, tensors[s.hf_name].start)):
            _fill(dests, slot, tensors, reader)
        for slot in copies:
            _check_copy(dests, slot, tensors, reader)
    finally:
        reader.close()
    return cfg, flax.traverse_util.unflatten_dict(dests)


def as_numpy_dtype(dtype) -> np.dtype:
    """np.dtype from a dtype object or a name ('float32', 'bfloat16', 'float16')."""
    if isinstance(dtype, str) and dtype in NAMED_DTYPES:
        return NAMED_DTYPES[dtype]
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt not in NAMED_DTYPES.values():
        raise ValueError(f"dtype: expected one of {sorted(NAMED_DTYPES)}, got {dtype!r}")
    return dt


def _scale_name(name: str) -> str:
    return name + "_scale_inv"  # model.layers.0.mlp.down_proj.weight -> ...down_proj.weight_scale_inv


def _check_coverage(slots: list[Slot], shapes: dict) -> None:
    """Internal consistency: the name map fills every element of every model variable exactly once."""
    seen: dict[tuple, set] = {}
    for s in slots:
        seen.setdefault(s.path, set()).add(s.index)
    for path, shape in shapes.items():
        n = len(next(iter(seen.get(path, {()}))))
        if len(seen.get(path, ())) != int(np.prod(shape[:n])):
            raise RuntimeError(f"interop name map does not cover variable {'/'.join(path)} {shape}")
    if set(seen) - set(shapes):
        raise RuntimeError(f"interop name map targets unknown variables {sorted(set(seen) - set(shapes))}")


def _validate(path, cfg, tensors, slots, shapes, mtp: bool) -> set:
    """Check every expected tensor (name, shape, dtype, FP8 scale) and that none is left over. Returns the
    variable paths whose tensors are all FP8."""
    used, fp8_of = set(), {}
    for slot in slots:
        info = _expect(path, cfg, tensors, slot, hf_names.slot_shape(slot, shapes[slot.path]))
        used.add(slot.hf_name)
        is_fp8 = info.dtype == "F8_E4M3"
        if is_fp8:
            _expect_scale(tensors, slot, info)
            used.add(_scale_name(slot.hf_name))
        fp8_of.setdefault(slot.path, set()).add(is_fp8)
    for name, info in tensors.items():
        layer = hf_names.hf_layer_of(name)
        if name in used or name.endswith(hf_names.IGNORED_SUFFIXES) or (
                not mtp and layer is not None and layer >= cfg.n_layers):
            continue
        raise ValueError(f"unexpected tensor {name!r} {info.shape} in {info.file}: not part of the DeepSeek model "
                         f"its config.json describes (nothing is dropped silently)")
    return {p for p, kinds in fp8_of.items() if kinds == {True}}


def _expect(path, cfg, tensors, slot: Slot, want: tuple) -> st.TensorInfo:
    info = tensors.get(slot.hf_name)
    if info is None:
        hint = ""
        if (hf_names.hf_layer_of(slot.hf_name) or 0) >= cfg.n_layers and "layers" in slot.hf_name:
            hint = " (an MTP layer: pass mtp=False to load the main model without it)"
        raise ValueError(f"{path}: missing tensor {slot.hf_name!r}, expected shape {want}{hint}")
    if info.shape != want:
        raise ValueError(f"tensor {slot.hf_name!r} in {info.file}: expected shape {want}, found {info.shape}")
    if info.dtype not in FLOAT_CODES or (info.dtype == "F8_E4M3" and len(want) != 2):
        raise ValueError(f"tensor {slot.hf_name!r} in {info.file}: unsupported dtype {info.dtype} "
                         f"(expected one of {FLOAT_CODES}; FP8 only for 2-D weights)")
    return info


def _expect_scale(tensors, slot: Slot, info: st.TensorInfo) -> None:
    name = _scale_name(slot.hf_name)
    scale = tensors.get(name)
    if scale is None:
        raise ValueError(f"tensor {slot.hf_name!r} in {info.file} is FP8 but {name!r} is missing, expected shape "
                         f"{fp8_blocks.scale_shape(info.shape)}")
    fp8_blocks.check_scale_shape(info.shape, scale.shape, f"tensor {name!r} in {scale.file}")
    if scale.dtype not in ("F32", "BF16", "F16"):
        raise ValueError(f"tensor {name!r} in {scale.file}: expected a float dtype, found {scale.dtype}")


def _allocate(shapes: dict, fp8_paths: set, dtype: np.dtype) -> dict:
    out = {}
    for path, shape in shapes.items():
        if path in fp8_paths:
            out[path] = FP8Weight(np.empty(shape, fp8_blocks.E4M3), np.empty(fp8_blocks.scale_shape(shape), np.float32))
        else:
            out[path] = np.empty(shape, np.float32 if path[0] == pt.ROUTER else dtype)
    return out


def _read_float(tensors, reader: st.Reader, name: str) -> np.ndarray:
    """A tensor as stored, FP8 dequantized to float32 with its 128x128 block scales."""
    info = tensors[name]
    arr = reader.read(info)
    if info.dtype == "F8_E4M3":
        arr = fp8_blocks.dequantize(arr, reader.read(tensors[_scale_name(name)]), np.float32, name)
    return arr


def _fill(dests: dict, slot: Slot, tensors, reader: st.Reader) -> None:
    dest = dests[slot.path]
    if isinstance(dest, FP8Weight):  # keep_fp8: copy values and scales, both transposed to [in, out]
        value, scale = reader.read(tensors[slot.hf_name]), reader.read(tensors[_scale_name(slot.hf_name)])
        dest.value[slot.index] = value.T if slot.transpose else value
        dest.scale_inv[slot.index] = scale.T if slot.transpose else scale
        return
    arr = _read_float(tensors, reader, slot.hf_name)
    dest[slot.index] = arr.T if slot.transpose else arr  # numpy casts to the destination dtype


def _check_copy(dests: dict, slot: Slot, tensors, reader: st.Reader) -> None:
    """An MTP layer's embed_tokens / shared_head.head must equal the shared main-model tensor."""
    ref = dests[slot.path]
    ref = ref.dequantize() if isinstance(ref, FP8Weight) else ref
    arr = _read_float(tensors, reader, slot.hf_name)
    for r0 in range(0, arr.shape[0], CHUNK_ROWS):  # chunked: no second full copy of a [V, D] tensor
        got = arr[r0:r0 + CHUNK_ROWS].astype(ref.dtype)
        want = ref[:, r0:r0 + CHUNK_ROWS].T if slot.transpose else ref[r0:r0 + CHUNK_ROWS]
        if not np.array_equal(got, want):
            raise ValueError(f"tensor {slot.hf_name!r} in {tensors[slot.hf_name].file} differs from the main model's "
                             f"{'lm_head.weight' if slot.transpose else 'model.embed_tokens.weight'!r} (max abs diff "
                             f"{np.max(np.abs(got.astype(np.float32) - want.astype(np.float32))):.3g}); dsv3_jax "
                             "shares the embedding and output head with the MTP modules (docs/paper.md §2)")


def save_hf_checkpoint(cfg: ModelConfig, variables, path: str, *, shard_size="5GB", dtype=None,
                       overwrite: bool = False) -> str:
    """Write `variables` ({'params', 'router'}, numpy or jax leaves, boxed or not; FP8Weight leaves are written
    as FP8 + weight_scale_inv) as a Hugging Face checkpoint directory. dtype: output dtype of the non-FP8
    parameters (default: as stored). Written into a temporary sibling directory and renamed at the end: a failure
    leaves nothing behind. Returns the absolute path."""
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
                (_scale_name(slot.hf_name), "F32", fp8_blocks.scale_shape(shape),
                 functools.partial(_slot_array, leaf.scale_inv, slot, np.float32))]
    out = np.dtype(np.float32 if slot.path[0] == pt.ROUTER else (dtype or leaf.dtype))
    return [(slot.hf_name, st.dtype_code(out), hf_names.slot_shape(slot, tuple(leaf.shape)),
             functools.partial(_slot_array, leaf, slot, out))]
