"""`dsv3_jax.from_pretrained`: a Hugging Face DeepSeek checkpoint (or a params directory from dsv3-convert) on
devices, with its tokenizer, without a whole-model host copy.

    cfg, variables, tok = dsv3_jax.from_pretrained("DeepSeek-V3/", mesh=mesh, dtype="bfloat16", keep_fp8=True)
    result = dsv3_jax.infer.generate(cfg, variables, [tok.encode("Hello")], max_new_tokens=32,
                                     stop_tokens=tok.eos_ids)

Every variable is created directly in its final layout: with a mesh, by the model's logical axis names
(sharding.LOGICAL_RULES, the layout the training state uses; router biases replicated), else on the first
local device. For a HF directory each process reads, straight from the safetensors files, only the byte ranges
of the shards its devices hold, one tensor chunk at a time (interop/streaming.py); a params directory is
restored by orbax onto the same shardings (each process reads its shards too). FP8 kernels (weight_scale_inv)
are dequantized per shard, or with keep_fp8=True kept as quant.fp8_weight.FP8Weight leaves (e4m3 values + their
128x128 scales) that layers/linear.py multiplies with the weight-only blockwise FP8 matmul. Then the routed
experts need a grouped-GEMM backend: a returned cfg with moe_impl "auto"/"blocked"/"dense" gets "ragged" (the
blocked and dense paths gather bare kernels).
"""

from __future__ import annotations

import os

import flax
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P, SingleDeviceSharding

from dsv3_jax import param_tree as pt, sharding as sharding_lib
from dsv3_jax.config import ModelConfig
from dsv3_jax.data.hf_tokenizer import load_tokenizer
from dsv3_jax.interop import jax_dirs, safetensors_io as st, streaming
from dsv3_jax.interop.hf import file_order, leaf_views
from dsv3_jax.interop.hf_checkpoint import HFCheckpoint, as_numpy_dtype, open_checkpoint
from dsv3_jax.quant.fp8_weight import FP8Weight

GROUPED_BACKENDS = ("ragged", "ep")


def checkpoint_kind(path: str) -> str:
    """"hf" (config.json + safetensors) or "params" (a dsv3-convert params directory); ValueError otherwise."""
    if os.path.isfile(os.path.join(path, jax_dirs.MODEL_CONFIG)):
        return "params"
    if os.path.isfile(os.path.join(path, "config.json")) and (
            os.path.isfile(os.path.join(path, st.SINGLE_FILE)) or os.path.isfile(os.path.join(path, st.INDEX_FILE))):
        return "hf"
    raise ValueError(f"{path}: neither a Hugging Face checkpoint (config.json + {st.SINGLE_FILE} or "
                     f"{st.INDEX_FILE}) nor a params directory ({jax_dirs.MODEL_CONFIG} + {jax_dirs.VARIABLES}/)")


def variable_shardings(cfg: ModelConfig, mesh=None) -> dict[tuple[str, ...], jax.sharding.Sharding]:
    """{path: sharding} of every model variable: the logical-axis layout on `mesh` (router biases replicated,
    as in train/layout.py), or the first local device without one."""
    from dsv3_jax.interop.hf_names import variable_shapes
    from dsv3_jax.model import DeepSeekV3

    if mesh is None:
        one = SingleDeviceSharding(jax.local_devices()[0])
        return {path: one for path in variable_shapes(cfg)}
    boxed = jax.eval_shape(DeepSeekV3(cfg).init, jax.random.key(0), jax.ShapeDtypeStruct((1, 1), jnp.int32))
    params = flax.linen.unbox(sharding_lib.tree_shardings(boxed[pt.PARAMS], mesh))
    out = {(pt.PARAMS,) + k: v for k, v in flax.traverse_util.flatten_dict(params).items()}
    for k in flax.traverse_util.flatten_dict(flax.linen.unbox(boxed.get(pt.ROUTER, {}))):
        out[(pt.ROUTER,) + k] = NamedSharding(mesh, P())
    return out


def runtime_config(cfg: ModelConfig, fp8_experts: bool) -> ModelConfig:
    """cfg with a grouped-GEMM expert backend when the routed experts are kept FP8 (see the module docstring)."""
    if fp8_experts and cfg.moe_impl not in GROUPED_BACKENDS:
        return cfg.replace(moe_impl="ragged")
    return cfg


def load_hf_variables(ckpt: HFCheckpoint, shardings: dict, *, dtype="float32", keep_fp8: bool = False,
                      reader: st.Reader | None = None, host_bytes: int = streaming.HOST_ASSEMBLY_BYTES,
                      chunk_bytes: int = streaming.CHUNK_BYTES) -> dict:
    """The variables of a validated HF checkpoint as jax.Arrays laid out by `shardings` ({path: sharding}),
    each addressable shard read from its own byte ranges (reader.bytes_read counts them)."""
    dtype = as_numpy_dtype(dtype)
    own = reader is None
    reader = reader or st.Reader()
    flat = {}
    try:
        for leaf in file_order(ckpt):
            views = leaf_views(leaf, dtype, keep_fp8)
            kernel = shardings[leaf.path]
            arrays = [streaming.build_array(reader, ckpt, v, streaming.scale_sharding(kernel, leaf.shape)
                                            if v.kind == "scale" else kernel, host_bytes=host_bytes,
                                            chunk_bytes=chunk_bytes) for v in views]
            flat[leaf.path] = FP8Weight(*arrays) if len(arrays) == 2 else arrays[0]
    finally:
        if own:
            reader.close()
    return flax.traverse_util.unflatten_dict(flat)


def _has_fp8_experts(ckpt: HFCheckpoint) -> bool:
    return any(leaf.keepable_fp8 and pt.ROUTED in leaf.path for leaf in ckpt.leaves.values())


def from_pretrained(path: str, mesh=None, *, dtype="float32", keep_fp8: bool = False, mtp: bool = True,
                    tokenizer: bool = True):
    """(cfg, variables {'params', 'router'}, tokenizer) of a HF checkpoint directory or a params directory.

    mesh: lay the variables out over it (else the first local device). dtype: of the parameters ("float32",
    "bfloat16", "float16"; router biases stay float32). keep_fp8: keep FP8 kernels FP8 (inference).
    mtp=False: the main model without its MTP modules. tokenizer=False: skip the tokenizer (returned as None);
    otherwise tokenizer.json + tokenizer_config.json are required, in the directory or its tokenizer/ folder,
    and a vocabulary larger than the model's is an error, both before any weight is read."""
    kind = checkpoint_kind(path)
    ckpt = open_checkpoint(path, mtp=mtp) if kind == "hf" else None
    cfg = ckpt.cfg if ckpt else jax_dirs.read_params_config(path, mtp)
    tok = None
    if tokenizer:
        tok = load_tokenizer(path)
        tok.check_model(cfg.vocab_size)
    shardings = variable_shardings(cfg, mesh)
    if ckpt is not None:
        variables = load_hf_variables(ckpt, shardings, dtype=dtype, keep_fp8=keep_fp8)
        return runtime_config(cfg, keep_fp8 and _has_fp8_experts(ckpt)), variables, tok
    variables = jax_dirs.restore_params_dir(path, cfg, shardings, as_numpy_dtype(dtype), keep_fp8)
    return runtime_config(cfg, _routed_fp8(variables)), variables, tok


def _routed_fp8(variables) -> bool:
    flat = flax.traverse_util.flatten_dict(variables[pt.PARAMS])  # FP8Weight is not a dict: a leaf here
    return any(isinstance(x, FP8Weight) and pt.ROUTED in p for p, x in flat.items())
