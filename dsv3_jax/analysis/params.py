"""Parameter counts of any ModelConfig from the real model, via `jax.eval_shape` (no memory allocated).

`param_counts(cfg)` traces `DeepSeekV3(cfg).init` abstractly and classifies each leaf of the parameter tree
by its path (param_tree.py): 'embed', 'head', 'norm', 'dense_layers', 'moe_layers' (leaves under
'routed_experts' are routed), 'mtp_<k>' (same split), anything else counts as non-routed. The convention
for "activated" is in param_types.py. `source="formula"` gives the closed form of param_formula.py instead (the
tests check that both agree with an independent per-tensor count).
"""

from __future__ import annotations

import functools
import math
from typing import Any

from dsv3_jax import param_tree as pt
from dsv3_jax.analysis.param_formula import formula_param_counts
from dsv3_jax.analysis.param_types import ParamCounts
from dsv3_jax.config import ModelConfig


def abstract_variables(cfg: ModelConfig) -> dict[str, Any]:
    """`model.init` variables as ShapeDtypeStructs, unboxed (nn.Partitioned removed)."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from dsv3_jax.model import DeepSeekV3

    tokens = jax.ShapeDtypeStruct((1, min(cfg.mtp_depth + 2, cfg.max_seq_len)), jnp.int32)
    model = DeepSeekV3(cfg)
    return jax.eval_shape(lambda t: nn.unbox(model.init(jax.random.key(0), t)), tokens)


def _leaf_sizes(tree) -> list[tuple[tuple[str, ...], int]]:
    """[(path of dict keys, number of values)] for every array leaf."""
    import jax

    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        keys = tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
        out.append((keys, math.prod(leaf.shape)))
    return out


def _bucket(keys: tuple[str, ...]) -> str:
    """The ParamCounts field a leaf of the 'params' tree belongs to."""
    top, routed = pt.group_of(keys), pt.is_routed_expert(keys)
    if top == pt.EMBED:
        return "embedding"
    if top == pt.HEAD:
        return "head"
    if top == pt.NORM:
        return "final_norm"
    if top == pt.DENSE:
        return "dense_layers"
    if pt.is_mtp(top):
        return "mtp_routed" if routed else "mtp_nonrouted"
    return "routed" if routed else "moe_nonrouted"


def counts_from_variables(cfg: ModelConfig, variables: dict[str, Any]) -> ParamCounts:
    """Classify the leaves of `model.init` variables (abstract or concrete) into a ParamCounts."""
    fields = dict(embedding=0, head=0, final_norm=0, dense_layers=0, moe_nonrouted=0, routed=0,
                  mtp_nonrouted=0, mtp_routed=0)
    for keys, n in _leaf_sizes(variables["params"]):
        fields[_bucket(keys)] += n
    router = sum(n for _, n in _leaf_sizes(variables.get("router", {})))
    return ParamCounts(config=cfg, router_state=router, source="model", **fields)


@functools.lru_cache(maxsize=64)
def model_param_counts(cfg: ModelConfig) -> ParamCounts:
    """ParamCounts from `jax.eval_shape` of DeepSeekV3(cfg).init (cached per config)."""
    return counts_from_variables(cfg, abstract_variables(cfg))


def param_counts(cfg: ModelConfig, source: str = "model") -> ParamCounts:
    """Parameter counts of `cfg`. source: "model" (eval_shape of DeepSeekV3) | "formula" (closed form)."""
    if source == "model":
        return model_param_counts(cfg)
    if source == "formula":
        return formula_param_counts(cfg)
    raise ValueError(f"param_counts: source must be 'model' or 'formula', got {source!r}")
