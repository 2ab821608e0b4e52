"""A Hugging Face DeepSeek-V2/V3 checkpoint directory, validated before any tensor data is read.

    ckpt = open_checkpoint(path, mtp=True)   # config.json -> ModelConfig; every shard's header; names, shapes,
                                             # dtypes, FP8 scales and leftovers checked
    ckpt.leaves[path]                        # what fills one variable: its shape and its HF tensors (Slots)

The name map is interop/hf_names.py; reading the data (whole, or only some byte ranges of it) is
interop/streaming.py. A bad checkpoint fails here with a ValueError naming the tensor and the file, the
expected and the found shape, so nothing is loaded from it (and nothing is dropped silently: a tensor that is
not part of the model config.json describes is an error).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import ml_dtypes
import numpy as np

from dsv3_jax import param_tree as pt
from dsv3_jax.config import ModelConfig
from dsv3_jax.interop import fp8_blocks, hf_names, safetensors_io as st
from dsv3_jax.interop.hf_config import config_from_hf
from dsv3_jax.interop.hf_names import Slot

FLOAT_CODES = ("F32", "BF16", "F16", "F64", "F8_E4M3")
FP8_CODE = "F8_E4M3"
NAMED_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16),
                "float16": np.dtype(np.float16)}
# Kernels the layers multiply through layers/linear.py: the only ones that may stay FP8 (keep_fp8). An FP8
# embedding, output head or router gate would be dequantized on load.
FP8_KERNELS = frozenset({"wq", "wq_a", "wq_b", "wkv_a", "wkv_b", "wo", "w1", "w2", "w3", "kernel"})


def keepable_fp8(path: tuple[str, ...]) -> bool:
    """A variable the weight-only FP8 matmul takes: a Linear kernel, not the output head (it stays float)."""
    return path[-1] in FP8_KERNELS and pt.HEAD not in path


@dataclasses.dataclass(frozen=True)
class Leaf:
    """One model variable: its path and shape, the HF tensors that fill it, the MTP copies that must equal
    them (embedding and head only), and whether all its tensors are FP8 (with weight_scale_inv)."""

    path: tuple[str, ...]
    shape: tuple[int, ...]
    slots: tuple[Slot, ...]
    copies: tuple[Slot, ...] = ()
    fp8: bool = False

    @property
    def keepable_fp8(self) -> bool:
        """FP8 in the checkpoint and a Linear kernel the FP8 matmul can take."""
        return self.fp8 and keepable_fp8(self.path)


@dataclasses.dataclass(frozen=True)
class HFCheckpoint:
    path: str
    cfg: ModelConfig
    tensors: dict[str, st.TensorInfo]
    leaves: dict[tuple[str, ...], Leaf]

    def nbytes(self) -> int:
        """Bytes of tensor data the model reads from the shards (MTP copies and FP8 scales included)."""
        used = {s.hf_name for leaf in self.leaves.values() for s in leaf.slots + leaf.copies}
        used |= {scale_name(n) for n in used if scale_name(n) in self.tensors}
        return sum(self.tensors[n].end - self.tensors[n].start for n in used)

    def largest_tensor(self) -> st.TensorInfo:
        return max(self.tensors.values(), key=lambda t: t.end - t.start)


def scale_name(name: str) -> str:
    return name + "_scale_inv"  # model.layers.0.mlp.down_proj.weight -> ...down_proj.weight_scale_inv


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


def open_checkpoint(path: str, *, mtp: bool = True) -> HFCheckpoint:
    """Validate a checkpoint directory against the model its config.json describes (see the module docstring).
    mtp=False: the main model only (mtp_depth=0; the MTP layers' tensors are skipped on purpose)."""
    cfg, _ = config_from_hf(read_hf_config(path), mtp=mtp)
    tensors = st.checkpoint_tensors(path)
    slots, copies = hf_names.model_slots(cfg), hf_names.shared_copy_slots(cfg)
    shapes = hf_names.variable_shapes(cfg)
    _check_coverage(slots, shapes)
    fp8_paths = _validate(path, cfg, tensors, slots + copies, shapes, mtp)
    by_path: dict[tuple, list] = {p: [] for p in shapes}
    for s in slots:
        by_path[s.path].append(s)
    copies_of: dict[tuple, list] = {}
    for s in copies:
        copies_of.setdefault(s.path, []).append(s)
    leaves = {p: Leaf(p, shape, tuple(by_path[p]), tuple(copies_of.get(p, ())), p in fp8_paths)
              for p, shape in shapes.items()}
    return HFCheckpoint(os.path.abspath(path), cfg, tensors, leaves)


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
        is_fp8 = info.dtype == FP8_CODE
        if is_fp8:
            _expect_scale(tensors, slot, info)
            used.add(scale_name(slot.hf_name))
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
    if info.dtype not in FLOAT_CODES or (info.dtype == FP8_CODE and len(want) != 2):
        raise ValueError(f"tensor {slot.hf_name!r} in {info.file}: unsupported dtype {info.dtype} "
                         f"(expected one of {FLOAT_CODES}; FP8 only for 2-D weights)")
    return info


def _expect_scale(tensors, slot: Slot, info: st.TensorInfo) -> None:
    name = scale_name(slot.hf_name)
    scale = tensors.get(name)
    if scale is None:
        raise ValueError(f"tensor {slot.hf_name!r} in {info.file} is FP8 but {name!r} is missing, expected shape "
                         f"{fp8_blocks.scale_shape(info.shape)}")
    fp8_blocks.check_scale_shape(info.shape, scale.shape, f"tensor {name!r} in {scale.file}")
    if scale.dtype not in ("F32", "BF16", "F16"):
        raise ValueError(f"tensor {name!r} in {scale.file}: expected a float dtype, found {scale.dtype}")
