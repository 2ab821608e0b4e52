"""The one place that knows DeepSeekV3's variable tree: group names, per-layer paths, router-bias paths.

    params/embed/embedding                         [V, D]
    params/dense_layers/<Block>/...                [n_dense_layers, ...]   first n_dense_layers blocks (scanned)
    params/moe_layers/<Block>/...                  [n_moe_layers, ...]     the MoE blocks (scanned)
    params/norm/scale, params/head/kernel          final RMSNorm, output head [D, V]
    params/mtp_{k}/{enorm,hnorm,eh_proj,norm,block/<Block>}                MTP module k+1 (V3 report §2.2)
    router/moe_layers/moe/bias                     [n_moe_layers, E]  aux-loss-free biases (V3 report eq. 16)
    router/mtp_{k}/block/moe/bias                  [E]
    fp8_meta/...                                   per-tensor delayed FP8 amax histories (same paths as kernels)

Inside a Block: attn_norm, attn (MLA: wq_a, q_norm, wq_b | wq, wkv_a, kv_norm, wkv_b, wo; MHA/GQA: wq, wk, wv,
wo), ffn_norm, then `mlp` (w1, w2, w3) in dense blocks or `moe` (gate, routed_experts/{w1,w2,w3},
shared_experts/{w1,w2,w3}) in MoE blocks. The model (model.py, layers/) names its modules with these
constants; decoding, pipelining, interop, the optimizer's masks and the analysis read paths through the
functions here, so renaming a module is a change to this file.
"""

from __future__ import annotations

from typing import Sequence

# Collections.
PARAMS, ROUTER, FP8_META = "params", "router", "fp8_meta"
# Top-level groups of the params tree.
EMBED, NORM, HEAD = "embed", "norm", "head"
DENSE, MOE = "dense_layers", "moe_layers"
STACKS = (DENSE, MOE)  # scanned block stacks, in model order
MTP_PREFIX = "mtp_"
# Inside a Block / an MTP module.
ATTN, ATTN_NORM, FFN_NORM, MLP, MOE_FFN = "attn", "attn_norm", "ffn_norm", "mlp", "moe"
GATE, ROUTED, SHARED, BIAS = "gate", "routed_experts", "shared_experts", "bias"
MTP_BLOCK, ENORM, HNORM, EH_PROJ, MTP_NORM = "block", "enorm", "hnorm", "eh_proj", "norm"
EXPERT_WEIGHTS = ("w1", "w2", "w3")
FUSED_UP = "w13"  # w1 | w3 [E, D, 2F], the inference form of the routed experts (layer_split.py)
# {"0": {w13 [D, 2F], w2 [F, D]}, "1": ...}: each routed expert's weights as separate arrays, beside the stacked
# ones in inference variables of unrolled stacks (layer_split.py; layers/moe/block_switch.py).
PER_EXPERT = "per_expert"
# W_UK [H, N, C] and W_UV [H, C, V] cut from wkv_b, heads-major: the inference form of MLA's absorbed attention
# (layer_split.py, layers/mla.py:absorbed_weights).
ABSORBED_UK, ABSORBED_UV = "w_uk", "w_uv"


def mtp_name(k: int) -> str:
    """Name of MTP module k (0-based; module k predicts the token k+2 ahead)."""
    return f"{MTP_PREFIX}{k}"


def is_mtp(name: str) -> bool:
    return name.startswith(MTP_PREFIX) and name[len(MTP_PREFIX):].isdigit()


def stack_sizes(cfg) -> dict[str, int]:
    """{stack name: layers} of the main model's non-empty scanned stacks, in model order."""
    sizes = {DENSE: cfg.n_dense_layers, MOE: cfg.n_moe_layers}
    return {name: n for name, n in sizes.items() if n}


def stack_is_moe(name: str) -> bool:
    return name == MOE


def layer_slot(cfg, layer: int) -> tuple[str, int]:
    """(stack, index in the stack) of main-model layer `layer` (0-based, model.layers.{layer} in HF names)."""
    if not 0 <= layer < cfg.n_layers:
        raise ValueError(f"layer {layer} is not a main-model layer (n_layers={cfg.n_layers})")
    if layer < cfg.n_dense_layers:
        return DENSE, layer
    return MOE, layer - cfg.n_dense_layers


def mtp_block_path(k: int) -> tuple[str, ...]:
    """Path of MTP module k's Block inside the params (or router) collection."""
    return (mtp_name(k), MTP_BLOCK)


def router_bias_paths(cfg) -> list[tuple[str, ...]]:
    """Paths (inside the router collection) of every aux-loss-free bias: the MoE stack's [L, E], then one [E]
    per MTP module whose block is an MoE block. Empty without router biases."""
    if not (cfg.router_bias and cfg.n_moe_layers):
        return []
    return [(MOE, MOE_FFN, BIAS)] + [mtp_block_path(k) + (MOE_FFN, BIAS) for k in range(cfg.mtp_depth)]


def nest(path: Sequence[str], leaf) -> dict:
    """{path[0]: {path[1]: ... leaf}}."""
    for key in reversed(tuple(path)):
        leaf = {key: leaf}
    return leaf


def merge(*trees: dict) -> dict:
    """Deep merge of nested dicts with disjoint leaves."""
    out: dict = {}
    for tree in trees:
        for k, v in tree.items():
            out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def key_names(path) -> list[str]:
    """Plain names of a jax tree path (DictKey / GetAttrKey / str entries)."""
    return [str(getattr(k, "key", getattr(k, "name", k))) for k in path]


def is_stacked(names: Sequence[str]) -> bool:
    """True for a leaf of a scanned stack (its first axis is the layer axis)."""
    return any(n in STACKS for n in names)


def is_routed_expert(names: Sequence[str]) -> bool:
    """True for a routed-expert weight [.., E, ...] (its expert axis follows the layer axis, if any)."""
    return ROUTED in names


def group_of(names: Sequence[str]) -> str:
    """The top-level group of a params path: 'embed', 'head', 'norm', a stack name or an MTP module name."""
    return names[0]
