"""Shared pieces of the tests/infer tests: tiny models with non-zero router biases, prompts of mixed lengths,
and a "bigram-dominated" model whose MTP drafts are often right (to exercise accepted drafts and rollback)."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import dsv3_jax


NORM_NAMES = ("scale", "kv_norm", "q_norm")


@functools.lru_cache(maxsize=None)
def init_variables(cfg, seed=0, bias_scale=0.3):
    """Random variables with DeepSeekV3(cfg)'s tree: weights ~ N(0, init_std), norm scales ~ 1 + N(0, 0.1),
    router biases ~ N(0, bias_scale) (partly negative), per-tensor delayed FP8 amax histories (fp8_meta) ~
    U(0.5, 4) as after some training (non-empty histories fix the scales). Shapes come from
    jax.eval_shape(init), so nothing is compiled (compiling init would dominate these tests)."""
    shapes = jax.eval_shape(dsv3_jax.DeepSeekV3(cfg).init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    shapes = nn.unbox(shapes)
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = getattr(path[-1], "key", "")
        if path[0].key == "router":
            x = rng.normal(size=leaf.shape) * bias_scale
        elif path[0].key == "fp8_meta":
            x = rng.uniform(0.5, 4.0, size=leaf.shape)
        elif name in NORM_NAMES:
            x = 1.0 + 0.1 * rng.normal(size=leaf.shape)
        else:
            x = rng.normal(size=leaf.shape) * cfg.init_std
        return jnp.asarray(x, jnp.float32)

    v = jax.tree_util.tree_map_with_path(fill, shapes)
    return {k: v[k] for k in ("params", "router", "fp8_meta") if k in v}


def bigram_variables(cfg, seed=0, block_scale=0.35):
    """Variables where embedding -> head dominates (the next token is mostly a function of the current one)
    and MTP module k passes Emb(t_{i+k}) through eh_proj = [I; 0]: its drafts then mostly agree with the main
    model, with the shrunken blocks still flipping some of them."""
    v = init_variables(cfg, seed)
    p = dict(v["params"])
    shrink = lambda t: jax.tree.map(lambda x: x * block_scale if x.ndim >= 2 else x, t)
    for name in list(p):
        if name in ("dense_layers", "moe_layers"):
            p[name] = shrink(p[name])
        elif name.startswith("mtp_"):
            eye = np.concatenate([np.eye(cfg.dim), np.zeros((cfg.dim, cfg.dim))]).astype(np.float32)
            p[name] = {**p[name], "block": shrink(p[name]["block"]), "eh_proj": {"kernel": jnp.asarray(eye)}}
    return {"params": p, "router": v["router"]}


def prompts(cfg, lengths=(5, 1, 9), seed=0):
    rng = np.random.default_rng(seed)
    return [[int(x) for x in rng.integers(0, cfg.vocab_size, n)] for n in lengths]


@functools.lru_cache(maxsize=None)
def jitted_apply(cfg):
    return jax.jit(dsv3_jax.DeepSeekV3(cfg).apply)


def full_forward(cfg, variables, seqs, width=None):
    """DeepSeekV3.apply on sequences right-padded to one width (the model is causal, so padding changes no
    earlier position) -> list of (logits [T,V], mtp_logits [D,T,V]) per sequence, numpy."""
    width = width or max(len(s) for s in seqs)
    batch = np.zeros((len(seqs), width), np.int32)
    for b, s in enumerate(seqs):
        batch[b, :len(s)] = s
    out = jitted_apply(cfg)(variables, jnp.asarray(batch))
    logits, mtp = np.asarray(out.logits), np.asarray(out.mtp_logits)
    return [(logits[b, :len(s)], mtp[:, b, :len(s)]) for b, s in enumerate(seqs)]
