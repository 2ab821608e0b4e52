"""Helpers for the interop tests: tiny configs, random variables, and an independent safetensors writer and
FP8 quantizer (written from the format spec and docs/paper.md §3, not from dsv3_jax.interop)."""

from __future__ import annotations

import json
import os
import struct

import ml_dtypes
import numpy as np
import pytest

from dsv3_jax.config import ModelConfig

NP_CODES = {np.dtype(np.float32): "F32", np.dtype(ml_dtypes.bfloat16): "BF16",
            np.dtype(ml_dtypes.float8_e4m3fn): "F8_E4M3", np.dtype(np.float16): "F16"}
CODE_DTYPES = {v: k for k, v in NP_CODES.items()}


def tiny_v3(**overrides) -> ModelConfig:
    """2 dense + 2 MoE layers, 4 groups keep 2, shared expert, q_lora, YaRN, one MTP module."""
    base = dict(vocab_size=67, dim=32, inter_dim=48, moe_inter_dim=16, n_layers=4, n_dense_layers=2, n_heads=2,
                n_routed_experts=8, n_shared_experts=1, n_activated_experts=3, n_expert_groups=4,
                n_limited_groups=2, score_func="sigmoid", route_scale=2.5, router_bias=True, q_lora_rank=16,
                kv_lora_rank=12, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8, max_seq_len=64,
                original_seq_len=16, rope_factor=4.0, mscale=1.0, mtp_depth=1, dtype="float32")
    base.update(overrides)
    return ModelConfig(**base)


def tiny_v2(**overrides) -> ModelConfig:
    """V2 flavour: softmax routing without bias, group-limited, no q compression, mscale 0.707."""
    return tiny_v3(score_func="softmax", router_bias=False, route_scale=16.0, q_lora_rank=0, mscale=0.707,
                   mtp_depth=0, **overrides)


def random_variables(cfg: ModelConfig, seed: int = 0, std: float = 0.3) -> dict:
    """Random numpy variables with the model's tree: kernels ~ N(0, std), norms ~ 1 + N(0, 0.1), router biases
    positive in [0.05, 0.3]."""
    from flax import traverse_util

    from dsv3_jax.interop.hf_names import variable_shapes

    rng = np.random.default_rng(seed)
    flat = {}
    for path, shape in sorted(variable_shapes(cfg).items()):
        if path[0] == "router":
            flat[path] = rng.uniform(0.05, 0.3, shape).astype(np.float32)
        elif path[-1] in ("scale", "q_norm", "kv_norm"):
            flat[path] = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            flat[path] = (std * rng.standard_normal(shape)).astype(np.float32)
    return traverse_util.unflatten_dict(flat)


def write_safetensors(path: str, tensors: dict[str, np.ndarray]):
    """Minimal safetensors writer from the format spec (8-byte header length, JSON header, raw bytes)."""
    header, offset, blobs = {}, 0, []
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        header[name] = {"dtype": NP_CODES[arr.dtype], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
        blobs.append(arr.tobytes())
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """Minimal reader from the format spec (copies every tensor)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, meta in header.items():
        if name != "__metadata__":
            b, e = meta["data_offsets"]
            out[name] = np.frombuffer(data[b:e], CODE_DTYPES[meta["dtype"]]).reshape(meta["shape"]).copy()
    return out


def read_checkpoint(directory: str) -> dict[str, np.ndarray]:
    """Every tensor of a checkpoint directory (any number of .safetensors files)."""
    out = {}
    for file in sorted(os.listdir(directory)):
        if file.endswith(".safetensors"):
            out.update(read_safetensors(os.path.join(directory, file)))
    return out


def write_checkpoint(directory: str, config: dict, tensors: dict[str, np.ndarray], n_shards: int = 1):
    """config.json + tensors as one model.safetensors or n shards with an index."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f)
    names = list(tensors)
    if n_shards == 1:
        write_safetensors(os.path.join(directory, "model.safetensors"), tensors)
        return
    weight_map = {}
    for i in range(n_shards):
        file = f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors"
        part = names[i::n_shards]
        write_safetensors(os.path.join(directory, file), {k: tensors[k] for k in part})
        weight_map.update({k: file for k in part})
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)


def quantize_deepseek_fp8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FP8 e4m3 + weight_scale_inv per 128x128 block as DeepSeek's checkpoints store them (docs/paper.md §3):
    zero-pad the edges to whole blocks, scale = amax/448 per block, q = e4m3(w/scale), slice the padding off."""
    m, n = w.shape
    mb, nb = -(-m // 128), -(-n // 128)
    padded = np.zeros((mb * 128, nb * 128), np.float32)
    padded[:m, :n] = w
    blocks = padded.reshape(mb, 128, nb, 128)
    scale = np.abs(blocks).max(axis=(1, 3)) / 448.0
    q = np.clip(blocks / scale[:, None, :, None], -448, 448).astype(ml_dtypes.float8_e4m3fn)
    return q.reshape(mb * 128, nb * 128)[:m, :n], scale.astype(np.float32)


def dequantize_reference(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """docs/paper.md §3 rule, block by block: y[i, j] = q[i, j] · scale[i // 128, j // 128]."""
    out = np.empty(q.shape, np.float32)
    for bi in range(scale.shape[0]):
        for bj in range(scale.shape[1]):
            rows, cols = slice(bi * 128, (bi + 1) * 128), slice(bj * 128, (bj + 1) * 128)
            out[rows, cols] = q[rows, cols].astype(np.float32) * scale[bi, bj]
    return out


@pytest.fixture
def v3_cfg():
    return tiny_v3()
