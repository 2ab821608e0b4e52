"""Independent bookkeeping for the sharded-load tests: where every element of a variable lives in the checkpoint
files (from the header offsets and row-major order, not from interop/streaming.py), so that the byte ranges a
process read can be compared with the ones its devices' shards need."""

from __future__ import annotations

import math

import numpy as np

ITEMSIZE = {"F32": 4, "BF16": 2, "F16": 2, "F8_E4M3": 1}


def _file_ids(ckpt) -> dict[str, int]:
    return {f: i for i, f in enumerate(sorted({t.file for t in ckpt.tensors.values()}))}


def element_keys(ckpt, leaf, slots=None) -> np.ndarray:
    """int64 [leaf.shape]: file id << 40 | byte offset of each element of the variable (filled slot by slot)."""
    files, out = _file_ids(ckpt), np.empty(leaf.shape, np.int64)
    for slot in slots or leaf.slots:
        info = ckpt.tensors[slot.hf_name]
        offsets = info.start + ITEMSIZE[info.dtype] * np.arange(math.prod(info.shape)).reshape(info.shape)
        keys = (files[info.file] << 40) + offsets
        out[slot.index] = keys.T if slot.transpose else keys
    return out


def expected_keys(ckpt, leaf, region) -> set[int]:
    """The element keys a device holding `region` of the variable must read (the MTP copies it checks too)."""
    index = tuple(slice(a, b) for a, b in region)
    keys = set(element_keys(ckpt, leaf)[index].ravel().tolist())
    for copy in leaf.copies:  # the same region of each copy of the shared embedding / head
        keys |= set(element_keys(ckpt, leaf, [copy])[index].ravel().tolist())
    return keys


def recorded_keys(ckpt, records, itemsize: int = 4) -> dict:
    """{reader tag: set of element keys} from a Reader's (tag, file, offset, length) records."""
    files, out = _file_ids(ckpt), {}
    for tag, file, offset, length in records:
        out.setdefault(tag, set()).update((files[file] << 40) + o for o in range(offset, offset + length, itemsize))
    return out


def check_reads(ckpt, variables, records) -> tuple[int, int]:
    """Assert that every distinct addressable shard of every variable was read from exactly its own byte ranges
    and nothing else was read; returns (bytes read, bytes of the process's distinct shards)."""
    import flax

    got = recorded_keys(ckpt, records)
    seen, expected_bytes = set(), 0
    for path, arr in flax.traverse_util.flatten_dict(variables).items():
        leaf = ckpt.leaves[path]
        for shard in arr.addressable_shards:
            region = tuple(s.indices(n)[:2] for s, n in zip(shard.index, arr.shape))
            tag = ("/".join(path), region)
            if tag in seen:
                continue
            seen.add(tag)
            want = expected_keys(ckpt, leaf, region)
            assert got.get(tag) == want, (tag, len(got.get(tag, ())), len(want))
            expected_bytes += 4 * len(want)
    assert set(got) <= seen, sorted(set(got) - seen)[:3]
    return sum(r[3] for r in records), expected_bytes
