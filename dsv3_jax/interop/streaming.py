"""Read a validated Hugging Face checkpoint (hf_checkpoint.py) straight into arrays, one tensor chunk at a time.

    arr = build_array(reader, ckpt, view, sharding)   # a jax.Array laid out by `sharding`: each addressable
                                                      # device's shard is read from its own byte ranges only
    host = read_host(reader, ckpt, view, region)      # a numpy region of a variable (the host loader: whole)

A variable (a `Leaf`) is filled by many HF tensors: a scanned stack holds one per layer, an expert stack one per
(layer, expert), and torch's [out, in] weights are transposed into our [in, out] kernels. For a device's region
of the variable, `_pieces` finds the tensors that intersect it and reads exactly the rectangle of each that
falls in the region (safetensors_io.Reader.read_region: one ranged read per contiguous run of bytes), in chunks
of at most CHUNK_BYTES rows, then dequantizes FP8 chunks with the 128x128 block scales covering them and
casts. A shard larger than HOST_ASSEMBLY_BYTES is assembled ON ITS DEVICE (a zeroed buffer; each chunk goes
over as read and is transposed, cast and placed there by one donated dynamic_update_slice), so the host never
holds more than one chunk of it; smaller ones are assembled on the host and placed once. Identical regions (replicated axes) are read once per process and
copied device to device. So a process reads each byte its devices need once, and nothing else, and its peak
host memory is its arrays plus a few chunks (benchmarks/load_memory.py measures it).

A `View` says how a leaf is read: "float" (FP8 dequantized, then cast to the load dtype), or, for FP8 kernels
kept FP8 (keep_fp8), "value" (the e4m3 values) and "scale" (weight_scale_inv, float32), both transposed
into the layout of quant.fp8_weight.FP8Weight.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from dsv3_jax.interop import fp8_blocks, safetensors_io as st
from dsv3_jax.interop.hf_checkpoint import FP8_CODE, HFCheckpoint, Leaf, scale_name
from dsv3_jax.interop.hf_names import Slot

Region = tuple[tuple[int, int], ...]
CHUNK_BYTES = 16 << 20  # rows of one tensor read (and placed) at once
HOST_ASSEMBLY_BYTES = 16 << 20  # shards up to this size are assembled on the host, larger ones on the device


@dataclasses.dataclass(frozen=True)
class View:
    """How to read `leaf`: kind "float" (dequantized, cast to dtype), "value" (FP8 as stored) or "scale"."""

    leaf: Leaf
    kind: str
    dtype: np.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return fp8_blocks.scale_shape(self.leaf.shape) if self.kind == "scale" else self.leaf.shape

    def tensor(self, slot: Slot) -> str:
        return scale_name(slot.hf_name) if self.kind == "scale" else slot.hf_name

    @property
    def name(self) -> str:
        return "/".join(self.leaf.path) + ("" if self.kind == "float" else f".{self.kind}")


def full_region(shape) -> Region:
    return tuple((0, n) for n in shape)


def _region(index, shape) -> Region:
    """A device's index (a tuple of slices) as ((start, stop), ...)."""
    return tuple(s.indices(n)[:2] for s, n in zip(index, shape))


def _chunk_rows(info: st.TensorInfo, hf_region: Region, chunk_bytes: int, fp8: bool) -> int:
    """Rows of the HF region per chunk (whole 128-row blocks for FP8, so a block's scales are read once)."""
    row = math.prod(b - a for a, b in hf_region[1:]) * 4  # float32 after dequantization: the largest form
    rows = max(1, chunk_bytes // max(row, 1))
    return max(fp8_blocks.BLOCK, rows // fp8_blocks.BLOCK * fp8_blocks.BLOCK) if fp8 else rows


def _dequantize_region(reader, ckpt: HFCheckpoint, name: str, q: np.ndarray, region: Region) -> np.ndarray:
    """FP8 q = tensor[region] times the scales of the 128x128 blocks it overlaps (float32), exactly as the whole
    tensor's dequantization would give these elements."""
    (r0, r1), (c0, c1) = region
    b = fp8_blocks.BLOCK
    scales = reader.read_region(ckpt.tensors[scale_name(name)], [(r0 // b, -(-r1 // b)), (c0 // b, -(-c1 // b))])
    full = np.repeat(np.repeat(scales.astype(np.float32), b, axis=0), b, axis=1)
    out = q.astype(np.float32)
    out *= full[r0 - r0 // b * b: r1 - r0 // b * b, c0 - c0 // b * b: c1 - c0 // b * b]
    return out


def _read(reader, ckpt: HFCheckpoint, view: View, slot: Slot, region: Region) -> np.ndarray:
    """tensor[region] of `slot` in the HF layout: dequantized to float32 for a float view of an FP8 tensor."""
    name = view.tensor(slot)
    arr = reader.read_region(ckpt.tensors[name], region)
    if view.kind == "float" and ckpt.tensors[name].dtype == FP8_CODE:
        arr = _dequantize_region(reader, ckpt, name, arr, region)
    return arr


def _check_copies(reader, ckpt: HFCheckpoint, view: View, arr: np.ndarray, region: Region) -> None:
    """The MTP layers' embed_tokens / shared_head.head must equal the main model's tensor, here on `region`
    (each process checks the part it reads; docs/paper.md §2: shared with the main model)."""
    main = view.leaf.slots[0].hf_name
    for copy in view.leaf.copies:
        other = _read(reader, ckpt, View(view.leaf, "float", view.dtype), copy, region)
        if not np.array_equal(other.astype(np.float32), arr.astype(np.float32)):
            diff = float(np.max(np.abs(other.astype(np.float32) - arr.astype(np.float32))))
            raise ValueError(f"tensor {copy.hf_name!r} in {ckpt.tensors[copy.hf_name].file} differs from the main "
                             f"model's {main!r} (max abs diff {diff:.3g}); dsv3_jax shares the embedding and "
                             "output head with the MTP modules (docs/paper.md §2)")


def _pieces(reader, ckpt: HFCheckpoint, view: View, region: Region,
            chunk_bytes: int) -> Iterator[tuple[list[int], np.ndarray, bool, tuple[int, ...]]]:
    """(start in `region`, chunk as read (HF layout), transpose?, its shape in OUR layout with the slot's indexed
    axes as size-1 axes) covering `region`. The consumer transposes and casts (on the device, for shards)."""
    for slot in view.leaf.slots:
        n = len(slot.index)
        if not all(region[a][0] <= slot.index[a] < region[a][1] for a in range(n)):
            continue
        inner = region[n:]
        hf_region = inner[::-1] if slot.transpose else inner
        info = ckpt.tensors[view.tensor(slot)]
        rows = _chunk_rows(info, hf_region, chunk_bytes, view.kind == "float" and info.dtype == FP8_CODE)
        (lo, hi), rest = hf_region[0], hf_region[1:]
        for r0 in range(lo, hi, rows):
            sub = ((r0, min(r0 + rows, hi)),) + rest
            arr = _read(reader, ckpt, view, slot, sub)
            if view.kind == "float" and view.leaf.copies:
                _check_copies(reader, ckpt, view, arr, sub)
            start = [slot.index[a] - region[a][0] for a in range(n)] + [0] * len(inner)
            start[-1 if slot.transpose else n] += r0 - lo
            yield start, arr, slot.transpose, (1,) * n + (arr.shape[::-1] if slot.transpose else arr.shape)


def read_host(reader, ckpt: HFCheckpoint, view: View, region: Region | None = None,
              chunk_bytes: int = CHUNK_BYTES) -> np.ndarray:
    """`region` (default: all) of the variable as a host numpy array of view.dtype."""
    region = full_region(view.shape) if region is None else region
    out = np.empty([b - a for a, b in region], view.dtype)
    for start, arr, transpose, shape in _pieces(reader, ckpt, view, region, chunk_bytes):
        piece = (arr.T if transpose else arr).reshape(shape)  # a view: the assignment copies and casts once
        out[tuple(slice(s, s + k) for s, k in zip(start, shape))] = piece
    return out


def _update(buf, piece, starts, transpose: bool, shape: tuple[int, ...]):
    piece = (piece.T if transpose else piece).reshape(shape).astype(buf.dtype)
    return jax.lax.dynamic_update_slice(buf, piece, tuple(starts))


# In place (the buffer is donated to its own update); the chunk arrives as read and is transposed and cast here.
_place = jax.jit(_update, donate_argnums=0, static_argnums=(3, 4))


def _on_device(reader, ckpt, view: View, region: Region, device, chunk_bytes: int):
    """The region assembled in a buffer on `device`, chunk by chunk (the host holds one chunk at a time)."""
    buf = jnp.zeros(tuple(b - a for a, b in region), view.dtype, device=device)
    for start, arr, transpose, shape in _pieces(reader, ckpt, view, region, chunk_bytes):
        buf = _place(buf, jax.device_put(arr, device), jax.device_put(np.asarray(start, np.int32), device),
                     transpose, shape)
        buf.block_until_ready()  # dispatch is asynchronous: without this, chunks read ahead pile up in memory
    return buf


def build_array(reader, ckpt: HFCheckpoint, view: View, sharding, *, host_bytes: int = HOST_ASSEMBLY_BYTES,
                chunk_bytes: int = CHUNK_BYTES) -> jax.Array:
    """The variable as one jax.Array laid out by `sharding`, built from this process's device shards only."""
    shape = view.shape
    try:
        index_map = sharding.addressable_devices_indices_map(shape)
    except ValueError as e:
        raise ValueError(f"variable {view.name} {shape}: cannot be laid out as {sharding} ({e})") from None
    built, arrays = {}, []
    for device, index in index_map.items():
        region = _region(index, shape)
        if region in built:  # a replica: copy it device to device instead of reading the bytes again
            arrays.append(jax.device_put(built[region], device))
            continue
        reader.tag = (view.name, region)
        size = math.prod(b - a for a, b in region) * view.dtype.itemsize
        if size <= host_bytes:
            arr = jax.device_put(read_host(reader, ckpt, view, region, chunk_bytes), device)
        else:
            arr = _on_device(reader, ckpt, view, region, device, chunk_bytes)
        built[region] = arr
        arrays.append(arr)
    reader.tag = None
    return jax.make_array_from_single_device_arrays(shape, sharding, arrays)


def scale_sharding(kernel_sharding, kernel_shape):
    """The sharding of an FP8 kernel's block scales [..., Ib, Ob]: the kernel's, except that an axis of the last
    two is replicated unless each of its shards is a whole number of 128-blocks."""
    if not isinstance(kernel_sharding, NamedSharding):
        return kernel_sharding
    spec = list(kernel_sharding.spec) + [None] * (len(kernel_shape) - len(kernel_sharding.spec))
    mesh = kernel_sharding.mesh
    for axis in (len(kernel_shape) - 2, len(kernel_shape) - 1):
        names = spec[axis] if isinstance(spec[axis], tuple) else (spec[axis],) if spec[axis] else ()
        shards = math.prod(mesh.shape[a] for a in names)
        if shards > 1 and (kernel_shape[axis] // shards) % fp8_blocks.BLOCK:
            spec[axis] = None
    return NamedSharding(mesh, P(*spec))
