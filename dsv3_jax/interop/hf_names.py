"""Hugging Face tensor names <-> dsv3_jax variable paths (DeepSeek-V3's released-weights layout; transformers
`deepseek_v3`). Our side of every path comes from param_tree.py.

    model.embed_tokens.weight [V,D]          params/embed/embedding [V,D]
    model.norm.weight, lm_head.weight [V,D]  params/norm/scale, params/head/kernel [D,V]
    model.layers.{i}.*                       params/dense_layers (i < n_dense_layers) or params/moe_layers,
                                             at slot i (resp. i - n_dense_layers) of the leading layer axis
    model.layers.{n_layers + k}.*            params/mtp_{k}: enorm, hnorm, eh_proj, shared_head.norm -> norm,
                                             and the decoder-layer tensors -> mtp_{k}/block
    mlp.gate.e_score_correction_bias         router/<same place>/moe/bias (the non-trainable collection)
    mlp.experts.{e}.{gate,up,down}_proj      moe/routed_experts/{w1,w3,w2} at expert slot e

Torch Linear weights are [out, in], our kernels [in, out]: those are transposed. RoPE needs no permutation:
the official code and HF (rope_interleave=True) both rotate interleaved pairs of the same weights.
The MTP layers' own `embed_tokens` and `shared_head.head` are copies of the main model's (docs/paper.md §2: shared
with the main model): they are checked on load and written on export, never stored twice.
"""

from __future__ import annotations

import dataclasses
import functools

import flax
import jax
import jax.numpy as jnp

from dsv3_jax import param_tree as pt
from dsv3_jax.config import ModelConfig

# HF suffix (after model.layers.{i}.) -> (our MLA parameter, transposed?)
ATTN = {
    "self_attn.q_a_proj.weight": ("wq_a", True),
    "self_attn.q_a_layernorm.weight": ("q_norm", False),
    "self_attn.q_b_proj.weight": ("wq_b", True),
    "self_attn.q_proj.weight": ("wq", True),
    "self_attn.kv_a_proj_with_mqa.weight": ("wkv_a", True),
    "self_attn.kv_a_layernorm.weight": ("kv_norm", False),
    "self_attn.kv_b_proj.weight": ("wkv_b", True),
    "self_attn.o_proj.weight": ("wo", True),
}
Q_LORA = ("wq_a", "q_norm", "wq_b")
MLP = {"gate_proj": "w1", "up_proj": "w3", "down_proj": "w2"}  # docs/paper.md §2
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # derived RoPE buffers some older checkpoints contain


@dataclasses.dataclass(frozen=True)
class Slot:
    """One HF tensor and where it goes: variables[path][index] (index = leading layer / expert slots)."""

    hf_name: str
    path: tuple[str, ...]
    index: tuple[int, ...] = ()
    transpose: bool = False


def _has_attn_param(cfg: ModelConfig, ours: str) -> bool:
    """wq_a/q_norm/wq_b with query compression (q_lora_rank > 0), wq without; the rest always."""
    if ours in Q_LORA:
        return bool(cfg.q_lora_rank)
    return ours != "wq" or not cfg.q_lora_rank


def _block_slots(cfg: ModelConfig, layer: int, base: tuple[str, ...], index: tuple[int, ...], moe: bool):
    p = f"model.layers.{layer}."
    out = [Slot(p + "input_layernorm.weight", base + (pt.ATTN_NORM, "scale"), index),
           Slot(p + "post_attention_layernorm.weight", base + (pt.FFN_NORM, "scale"), index)]
    for suffix, (ours, t) in ATTN.items():
        if _has_attn_param(cfg, ours):
            out.append(Slot(p + suffix, base + (pt.ATTN, ours), index, t))
    if not moe:
        return out + [Slot(p + f"mlp.{hf}.weight", base + (pt.MLP, ours), index, True) for hf, ours in MLP.items()]
    out.append(Slot(p + "mlp.gate.weight", base + (pt.MOE_FFN, pt.GATE), index, True))
    if cfg.router_bias:
        out.append(Slot(p + "mlp.gate.e_score_correction_bias", (pt.ROUTER,) + base[1:] + (pt.MOE_FFN, pt.BIAS),
                        index))
    for e in range(cfg.n_routed_experts):
        out += [Slot(p + f"mlp.experts.{e}.{hf}.weight", base + (pt.MOE_FFN, pt.ROUTED, ours), index + (e,), True)
                for hf, ours in MLP.items()]
    if cfg.n_shared_experts:
        out += [Slot(p + f"mlp.shared_experts.{hf}.weight", base + (pt.MOE_FFN, pt.SHARED, ours), index, True)
                for hf, ours in MLP.items()]
    return out


def model_slots(cfg: ModelConfig) -> list[Slot]:
    """Every HF tensor of the model described by cfg, in checkpoint order."""
    out = [Slot("model.embed_tokens.weight", (pt.PARAMS, pt.EMBED, "embedding"))]
    for i in range(cfg.n_layers):
        stack, index = pt.layer_slot(cfg, i)
        out += _block_slots(cfg, i, (pt.PARAMS, stack), (index,), pt.stack_is_moe(stack))
    for k in range(cfg.mtp_depth):
        layer, base = cfg.n_layers + k, (pt.PARAMS, pt.mtp_name(k))
        p = f"model.layers.{layer}."
        out += [Slot(p + "enorm.weight", base + (pt.ENORM, "scale")),
                Slot(p + "hnorm.weight", base + (pt.HNORM, "scale")),
                Slot(p + "eh_proj.weight", base + (pt.EH_PROJ, "kernel"), (), True),
                Slot(p + "shared_head.norm.weight", base + (pt.MTP_NORM, "scale"))]
        out += _block_slots(cfg, layer, (pt.PARAMS,) + pt.mtp_block_path(k), (), cfg.n_moe_layers > 0)
    out += [Slot("model.norm.weight", (pt.PARAMS, pt.NORM, "scale")),
            Slot("lm_head.weight", (pt.PARAMS, pt.HEAD, "kernel"), (), True)]
    return out


def shared_copy_slots(cfg: ModelConfig) -> list[Slot]:
    """The MTP layers' copies of the shared embedding and output head (same destination as the originals)."""
    out = []
    for k in range(cfg.mtp_depth):
        p = f"model.layers.{cfg.n_layers + k}."
        out += [Slot(p + "embed_tokens.weight", (pt.PARAMS, pt.EMBED, "embedding")),
                Slot(p + "shared_head.head.weight", (pt.PARAMS, pt.HEAD, "kernel"), (), True)]
    return out


def variable_shapes(cfg: ModelConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
    """{path: shape} of every leaf of DeepSeekV3(cfg).init's variables, without allocating them."""
    return dict(_variable_shapes(cfg))


@functools.lru_cache(maxsize=16)
def _variable_shapes(cfg: ModelConfig) -> tuple:
    from dsv3_jax.model import DeepSeekV3  # local: model imports are heavy and only needed here

    tokens = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    abstract = flax.linen.unbox(jax.eval_shape(DeepSeekV3(cfg).init, jax.random.PRNGKey(0), tokens))
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(abstract))
    return tuple((path, tuple(x.shape)) for path, x in flat.items())


def slot_shape(slot: Slot, leaf_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The HF tensor's shape for `slot` (our leaf minus the indexed axes, reversed when transposed)."""
    shape = leaf_shape[len(slot.index):]
    return shape[::-1] if slot.transpose else shape


def hf_layer_of(name: str) -> int | None:
    """The decoder-layer index of a tensor name (None outside model.layers)."""
    parts = name.split(".")
    if len(parts) > 2 and parts[0] == "model" and parts[1] == "layers" and parts[2].isdigit():
        return int(parts[2])
    return None
