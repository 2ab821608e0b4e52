"""A small numpy reader/writer for the safetensors format, and atomic output directories.

Why our own: the `safetensors` package's numpy backend cannot load float8_e4m3fn (numpy has no FP8 dtype;
ml_dtypes does), and the torch backend would make torch a dependency of loading. The format is small
(github huggingface/safetensors README): an 8-byte little-endian header length N, N bytes of JSON
{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}, then the raw little-endian,
row-major tensor bytes; offsets count from the end of the header. Tensors, or rectangular regions of them (a
device's shard), are read with plain ranged reads of exactly their bytes (interop/streaming.py).

Checkpoint directories follow Hugging Face: `model.safetensors`, or shards listed by
`model.safetensors.index.json` ({"metadata": {"total_size"}, "weight_map": {tensor: file}}).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import struct
import tempfile
import uuid
from typing import Any, Callable, Iterable, Sequence

import ml_dtypes
import numpy as np

DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16), "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2), "I64": np.dtype("<i8"), "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"), "I8": np.dtype("i1"), "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
CODES = {v: k for k, v in DTYPES.items()}
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
MAX_HEADER = 100 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: file, dtype code ('F32', 'F8_E4M3', ...), shape, absolute byte range."""

    name: str
    file: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


def dtype_code(dtype) -> str:
    """numpy dtype -> safetensors dtype code (ValueError for dtypes the format has no code for)."""
    try:
        return CODES[np.dtype(dtype)]
    except KeyError:
        raise ValueError(f"safetensors: no dtype code for numpy dtype {np.dtype(dtype)}") from None


def read_header(path: str) -> dict[str, TensorInfo]:
    """Parse one .safetensors file's header; every error names the file (and tensor)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        n = struct.unpack("<Q", raw)[0] if len(raw) == 8 else -1
        if not 0 < n <= min(MAX_HEADER, size - 8):
            raise ValueError(f"{path}: not a safetensors file (header length {n}, file size {size})")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: unreadable safetensors header ({e})") from None
    out = {}
    for name, meta in header.items():
        if name != "__metadata__":
            out[name] = _tensor_info(path, name, meta, 8 + n, size)
    return out


def _tensor_info(path, name, meta, base, size) -> TensorInfo:
    code, shape, (begin, end) = meta.get("dtype"), tuple(meta.get("shape", ())), meta.get("data_offsets", (0, -1))
    if code not in DTYPES:
        raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {code!r}; known: {sorted(DTYPES)}")
    nbytes = math.prod(shape) * DTYPES[code].itemsize
    if end - begin != nbytes or base + end > size or begin < 0:
        raise ValueError(f"{path}: tensor {name!r} of shape {shape} {code} needs {nbytes} bytes, header gives "
                         f"offsets [{begin}, {end}] in a file of {size} bytes")
    return TensorInfo(name, path, code, shape, base + begin, base + end)


def checkpoint_tensors(directory: str) -> dict[str, TensorInfo]:
    """Every tensor of a Hugging Face safetensors checkpoint directory (single file or index + shards)."""
    index_path = os.path.join(directory, INDEX_FILE)
    if os.path.isfile(index_path):
        with open(index_path, encoding="utf-8") as f:
            weight_map = json.load(f).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index_path}: expected a 'weight_map' object of tensor name -> shard file")
        files = sorted(set(weight_map.values()))
    elif os.path.isfile(os.path.join(directory, SINGLE_FILE)):
        weight_map, files = None, [SINGLE_FILE]
    else:
        raise ValueError(f"{directory}: no {SINGLE_FILE} or {INDEX_FILE} (not a safetensors checkpoint)")
    tensors: dict[str, TensorInfo] = {}
    for file in files:
        path = os.path.join(directory, file)
        if not os.path.isfile(path):
            raise ValueError(f"{index_path}: lists shard {file!r}, which does not exist")
        for name, info in read_header(path).items():
            if name in tensors:
                raise ValueError(f"tensor {name!r} is stored twice: in {tensors[name].file} and {path}")
            if weight_map is not None and weight_map.get(name) != file:
                raise ValueError(f"{path}: holds tensor {name!r}, which {INDEX_FILE} maps to "
                                 f"{weight_map.get(name)!r}")
            tensors[name] = info
    missing = sorted(set(weight_map or ()) - set(tensors))
    if missing:
        raise ValueError(f"{index_path}: tensor {missing[0]!r} (and {len(missing) - 1} more) listed in the "
                         f"index but absent from its shard {weight_map[missing[0]]!r}")
    return tensors


class Reader:
    """Reads tensors, or rectangular regions of them, into fresh numpy arrays with plain ranged reads (no memory
    map, so the process holds nothing of a shard beyond what it asked for). Keeps one open handle per shard,
    counts the bytes it read (`bytes_read`) and, given a `record` list, appends (tag, file, offset, length) for
    every read (`tag`: what the caller is reading, e.g. a variable and a device's region), which is how the
    tests check that a process read only its shards' byte ranges."""

    def __init__(self, record: list | None = None):
        self._files: dict[str, Any] = {}
        self.bytes_read = 0
        self.record = record
        self.tag: Any = None

    def _fd(self, file: str) -> int:
        f = self._files.get(file)
        if f is None:
            f = self._files[file] = open(file, "rb")
        return f.fileno()

    def read(self, info: TensorInfo) -> np.ndarray:
        """The whole tensor."""
        return self.read_region(info, [(0, n) for n in info.shape])

    def read_region(self, info: TensorInfo, region: Sequence[tuple[int, int]]) -> np.ndarray:
        """tensor[r0:r1, c0:c1, ...] for region [(r0, r1), (c0, c1), ...]: one read per contiguous run of the
        row-major data (a run spans the innermost partial axis and every full axis after it)."""
        dtype, shape = DTYPES[info.dtype], info.shape
        if len(region) != len(shape) or any(not 0 <= a <= b <= n for (a, b), n in zip(region, shape)):
            raise ValueError(f"{info.file}: region {list(region)} is outside tensor {info.name!r} {shape}")
        out = np.empty([b - a for a, b in region], dtype)
        if out.size == 0:
            return out
        j = max([0] + [a for a, ((lo, hi), n) in enumerate(zip(region, shape)) if (lo, hi) != (0, n)])
        strides = [math.prod(shape[a + 1:]) for a in range(len(shape))]
        run = (region[j][1] - region[j][0]) * strides[j] if shape else 1
        flat = out.reshape(-1).view(np.uint8)
        fd = self._fd(info.file)
        for k, outer in enumerate(np.ndindex(*[b - a for a, b in region[:j]])):
            elem = sum((region[a][0] + i) * strides[a] for a, i in enumerate(outer)) + (
                region[j][0] * strides[j] if shape else 0)
            self._pread(fd, info, flat[k * run * dtype.itemsize:(k + 1) * run * dtype.itemsize],
                        info.start + elem * dtype.itemsize)
        return out

    def _pread(self, fd, info: TensorInfo, buf, offset: int) -> None:
        got = os.preadv(fd, [buf], offset)
        if got != len(buf):
            raise ValueError(f"{info.file}: tensor {info.name!r} is truncated (expected {len(buf)} bytes at "
                             f"offset {offset}, read {got})")
        self.bytes_read += got
        if self.record is not None:
            self.record.append((self.tag, info.file, offset, got))

    def close(self):
        for f in self._files.values():
            f.close()
        self._files.clear()


def write_file(path: str, entries: Sequence[tuple[str, str, tuple[int, ...], Callable[[], np.ndarray]]],
               metadata: dict[str, str] | None = None):
    """Write a .safetensors file; entries are (name, dtype code, shape, produce) and `produce()` is called
    one tensor at a time while writing, so only one tensor is in memory at once."""
    header, offset = {}, 0
    for name, code, shape, _ in entries:
        nbytes = math.prod(shape) * DTYPES[code].itemsize
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header["__metadata__"] = dict(metadata or {"format": "pt"})
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the reference writer aligns the data to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, code, shape, produce in entries:
            arr = np.ascontiguousarray(produce())
            if arr.dtype != DTYPES[code] or arr.shape != tuple(shape):
                raise ValueError(f"{path}: tensor {name!r} was planned as {code} {tuple(shape)} but is "
                                 f"{arr.dtype} {arr.shape}")
            f.write(arr.reshape(-1).view(np.uint8).data)


def plan_shards(sizes: Iterable[int], shard_size: int) -> list[list[int]]:
    """Split tensor indices (in order) into shards of at most shard_size bytes (a larger tensor goes alone)."""
    shards, cur, total = [], [], 0
    for i, n in enumerate(sizes):
        if cur and total + n > shard_size:
            shards.append(cur)
            cur, total = [], 0
        cur.append(i)
        total += n
    return shards + [cur] if cur else shards


def shard_file_names(n: int) -> list[str]:
    """Hugging Face shard names: model.safetensors, or model-00001-of-0000n.safetensors."""
    return [SINGLE_FILE] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]


def parse_size(size) -> int:
    """Bytes from an int or a string like '5GB', '500MB', '2GiB'."""
    if isinstance(size, int):
        return size
    units = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "KB": 10**3, "MB": 10**6, "GB": 10**9, "B": 1}
    s = str(size).strip().upper()
    for unit, mult in units.items():
        if s.endswith(unit) and s[:-len(unit)].strip().replace(".", "", 1).isdigit():
            return int(float(s[:-len(unit)]) * mult)
    if s.isdigit():
        return int(s)
    raise ValueError(f"shard_size: expected bytes as an int or a string like '5GB', got {size!r}")


@contextlib.contextmanager
def atomic_directory(path: str, overwrite: bool = False):
    """Yield a temporary directory next to `path`; on success rename it to `path`, on any error remove it,
    so no partial output directory is ever left behind."""
    path = os.path.abspath(path)
    if os.path.exists(path) and not overwrite:
        raise ValueError(f"{path}: output directory already exists (pass --overwrite, or overwrite=True from "
                         "Python, to replace it)")
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    # os.mkdir honours the umask (tempfile.mkdtemp would make the output 0700); the random name keeps it unique
    tmp = os.path.join(parent, f".{os.path.basename(path)}.{uuid.uuid4().hex[:12]}.tmp")
    os.mkdir(tmp)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if os.path.exists(path):
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".old", dir=parent)
        os.rename(path, os.path.join(old, "x"))
    os.rename(tmp, path)
    if old:
        shutil.rmtree(old, ignore_errors=True)
