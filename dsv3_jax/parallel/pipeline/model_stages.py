"""DeepSeek-V3 as pipeline stages: the executor's first_fn, stage_fn and loss_fn (V3 report §2, §3.2.1).

    first_fn   embedding of the micro-batch's tokens                         (first stage)
    stage_fn   a contiguous group of blocks (dense then MoE), the model's own Block module under lax.scan;
               returns the sequence-wise balance loss α Σ f_i P_i (eq. 17-20) and the expert counts
               (the load signal of the aux-loss-free bias update, eq. 16) of its MoE layers
    loss_fn    final norm, head, cross-entropy, the D MTP modules and their loss (eq. 21-25) and the MTP
               blocks' balance loss and counts                                (last stage)

With moe_impl="ep" the MoE layers run on this rank's routed experts and exchange tokens over the expert
axis (model_experts.py); their stats["comm_bytes"] are DROPPED here (only counts and the balance terms leave a
stage), so the pipelined step reports no comm metrics.

Micro-batches (`micro_batches`): a batch [B, T] becomes chunks micro-batches of B/chunks sequences, sequence
j·chunks + m in micro-batch m, so a data shard's contiguous rows split into micro-batches without moving data.
Targets carry what the last stage needs: the input tokens (MTP embeds t_{i+k}), the next tokens, and
per-token loss weights [b, 1+D, T] that fold in the padding mask, the global token counts, λ/D and the
micro-batch count, so that summing every micro-batch's Σ nll·w over micro-batches (× 1/chunks, the executor's
mean) and over data shards reproduces losses.cross_entropy + losses.mtp_loss exactly.
Legend: B batch, b micro-batch rows, T positions, D model dim (MTP depth for weights), E routed experts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dsv3_jax.data.tokenizer import PAD_ID
from dsv3_jax.layers.attention_core import causal_mask
from dsv3_jax.layers.block import Block
from dsv3_jax.layers.linear import Embed, Head
from dsv3_jax.layers.mtp import MTPModule, tokens_ahead
from dsv3_jax.layers.norms import RMSNorm
from dsv3_jax.parallel.pipeline.model_layout import StageLayout
from dsv3_jax.parallel.pipeline.varying import like


def _positions_mask(x):
    b, t = x.shape[:2]
    index = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    return index, causal_mask(index, index)


def _balance(stats, rows: int):
    """Σ_b Σ_i f_i P_i / rows for one MoE layer (rows: the micro-batch's sequences over all data shards)."""
    return jnp.sum(stats["balance_f"] * stats["balance_p"]) / rows


def _layers(cfg, moe: bool, uniform: bool, shards: int):
    """scan over a stage's slots of one kind; slot j runs iff j < n_active (padding slots are skipped)."""
    block = Block(cfg, moe)

    def run(x, p, bias, positions, mask):
        variables = {"params": p} if bias is None else {"params": p, "router": {"moe": {"bias": bias}}}
        y, st = block.apply(variables, x, positions, mask)
        if not moe:
            return y, ()
        return y, (st["counts"], _balance(st, x.shape[0] * shards))

    def apply(x, params, router, n_active):
        positions, mask = _positions_mask(x)
        biases = None if router is None else router["moe"]["bias"]

        def body(x, inp):
            j, p, bias = inp
            go = lambda x: run(x, p, bias, positions, mask)
            if uniform:
                return go(x)
            skip = lambda x: (x, () if not moe else (like(jnp.zeros((cfg.n_routed_experts,), jnp.int32), x),
                                                     like(jnp.zeros((), jnp.float32), x)))
            return jax.lax.cond(j < n_active, go, skip, x)
        slots = jax.tree.leaves(params)[0].shape[0]
        return jax.lax.scan(body, x, (jnp.arange(slots), params, biases))
    return apply


def make_stage_fn(cfg, layout: StageLayout, alpha: float, shards: int = 1):
    """stage_fn(params, consts, x) -> (x, α Σ_layers balance, {"counts": [Lm, E]}) (model_layout.py trees)."""
    dense = _layers(cfg, False, layout.uniform, shards)
    moe = _layers(cfg, True, layout.uniform, shards)

    def stage_fn(params, consts, x):
        if "dense" in params:
            x, _ = dense(x, params["dense"], None, consts["n_dense"])
        if "moe" not in params:
            return x, jnp.zeros((), jnp.float32), {}
        x, (counts, bal) = moe(x, params["moe"], consts.get("router"), consts["n_moe"])
        return x, alpha * jnp.sum(bal), {"counts": counts}
    return jax.jit(stage_fn)   # traced once per signature, not once per executor branch


def make_first_fn(cfg):
    """Token embedding of one micro-batch (V3 keeps it in high precision, §3.3)."""
    embed = Embed(cfg.vocab_size, cfg.dim, cfg.init_std, jnp.dtype(cfg.dtype))
    return lambda shared, tokens: embed.apply({"params": shared["embed"]}, tokens)


def _weighted_nll(logits, targets, weights):
    """Σ -log p(target) · weight over all positions (fp32, DESIGN.md principle 6)."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return jnp.sum(nll * weights)


def make_loss_fn(cfg, alpha: float, shards: int = 1):
    """loss_fn(shared, mtp_router, y, targets) -> (loss, {ce, mtp, balance}, MTP expert counts tree)."""
    dt = jnp.dtype(cfg.dtype)
    embed, head = Embed(cfg.vocab_size, cfg.dim, cfg.init_std, dt), Head(cfg.vocab_size, cfg.init_std, dt)
    norm, mtp = RMSNorm(cfg.norm_eps), MTPModule(cfg)

    def loss_fn(shared, router, y, t):
        tokens, nxt, w = t["inputs"], t["targets"], t["weights"]
        logits_of = lambda h: head.apply({"params": shared["head"]}, h)
        ce = _weighted_nll(logits_of(norm.apply({"params": shared["norm"]}, y)), nxt, w[:, 0])
        positions, mask = _positions_mask(y)
        h, mtp_loss, bal, counts = y, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32), {}
        for k in range(1, cfg.mtp_depth + 1):
            name = f"mtp_{k - 1}"
            emb = embed.apply({"params": shared["embed"]}, tokens_ahead(tokens, k))
            variables = {"params": shared[name], **({"router": router[name]} if name in router else {})}
            h, h_normed, st = mtp.apply(variables, h, emb, positions, mask)
            mtp_loss += _weighted_nll(logits_of(h_normed), tokens_ahead(nxt, k), w[:, k])
            if st:
                bal += alpha * _balance(st, y.shape[0] * shards)
                counts[name] = {"block": {"moe": {"bias": st["counts"]}}}
        return ce + mtp_loss + bal, {"ce": ce, "mtp": mtp_loss, "balance": bal}, counts
    return jax.jit(loss_fn)


def micro_batches(batch, chunks: int, mtp_depth: int, lam):
    """(inputs [chunks, B/chunks, T], targets) from {"inputs", "targets"} [B, T] (see module docstring)."""
    tokens, nxt = batch["inputs"], batch["targets"]
    b = tokens.shape[0]
    if b % chunks:
        raise ValueError(f"batch size {b} is not divisible by the {chunks} pipeline micro-batches "
                         f"(train.pipeline_chunks)")
    mask = (nxt != PAD_ID).astype(jnp.float32)
    weights = [mask * (chunks / jnp.maximum(jnp.sum(mask), 1.0))]
    for k in range(1, mtp_depth + 1):
        ahead = tokens_ahead(mask, k)      # mask of t_{i+k+1}; 0 past the end
        weights.append(ahead * (lam / mtp_depth * chunks / jnp.maximum(jnp.sum(ahead), 1.0)))
    split = lambda a: a.reshape((b // chunks, chunks) + a.shape[1:]).swapaxes(0, 1)
    targets = {"inputs": split(tokens), "targets": split(nxt), "weights": split(jnp.stack(weights, axis=1))}
    return split(tokens), targets
