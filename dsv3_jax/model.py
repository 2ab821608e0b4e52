"""DeepSeekV3: embed -> dense blocks -> MoE blocks -> norm -> head, plus D MTP modules (V3 report §2).

Public API (DESIGN.md):
    model = DeepSeekV3(cfg)
    variables = model.init(rng, tokens)          # {'params': ..., 'router': {... 'bias' [E]}}
    out = model.apply(variables, tokens)         # out.logits [B,T,V], out.mtp_logits [D,B,T,V], out.aux

Parameter tree: 'embed', 'dense_layers' and 'moe_layers' (scanned: a leading layer axis), 'norm', 'head',
'mtp_0' … 'mtp_{D-1}'. The `router` collection mirrors where MoE layers sit and holds the aux-loss-free
biases; `out.aux['expert_counts']` has exactly that tree structure, with each bias replaced by the token
counts per expert, so the bias update is a tree map.
Legend: B batch, T positions, D model dim, V vocab, E routed experts, L stacked MoE layers (main + MTP).
"""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax.numpy as jnp

from dsv3_jax.config import ModelConfig
from dsv3_jax.layers.attention_core import causal_mask
from dsv3_jax.layers.block import block_stack
from dsv3_jax.layers.linear import Embed, Head, checked_tokens
from dsv3_jax.layers.mtp import MTPModule, tokens_ahead
from dsv3_jax.layers.norms import RMSNorm


@flax.struct.dataclass
class ModelOutput:
    logits: jnp.ndarray  # [B, T, V] fp32
    mtp_logits: jnp.ndarray  # [D, B, T, V] fp32; position i of depth k predicts t_{i+k+1}
    aux: dict[str, Any]  # expert_counts (router-tree), balance_f / balance_p [L, B, E]
    hidden: jnp.ndarray  # [B, T, D] final hidden state before the output norm


class DeepSeekV3(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, tokens, positions=None, segment_ids=None) -> ModelOutput:
        """tokens int [B,T]; positions [B,T] (default 0..T-1); segment_ids [B,T] for packed documents
        (attention stays inside a segment)."""
        c = self.cfg
        tokens = checked_tokens(tokens)
        b, t = tokens.shape
        if t > c.max_seq_len:
            raise ValueError(f"tokens: sequence length {t} exceeds ModelConfig.max_seq_len={c.max_seq_len}")
        index = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        positions = index if positions is None else positions
        mask = causal_mask(index, index, segment_ids, segment_ids)

        embed = Embed(c.vocab_size, c.dim, c.init_std, jnp.dtype(c.dtype), name="embed")
        head = Head(c.vocab_size, c.init_std, jnp.dtype(c.dtype), name="head")
        x = embed(tokens)
        counts, stats = {}, []
        if c.n_dense_layers:
            x, _ = block_stack(c, False, c.n_dense_layers, "dense_layers")(x, positions, mask)
        if c.n_moe_layers:
            x, st = block_stack(c, True, c.n_moe_layers, "moe_layers")(x, positions, mask)
            counts["moe_layers"] = {"moe": {"bias": st["counts"]}}
            stats.append(st)
        logits = head(RMSNorm(c.norm_eps, name="norm")(x))

        mtp_logits, h = [], x
        for k in range(1, c.mtp_depth + 1):
            h, h_normed, st = MTPModule(c, name=f"mtp_{k - 1}")(h, embed(tokens_ahead(tokens, k)), positions, mask)
            mtp_logits.append(head(h_normed))
            if st:
                counts[f"mtp_{k - 1}"] = {"block": {"moe": {"bias": st["counts"]}}}
                stats.append({key: v[None] for key, v in st.items()})
        mtp = jnp.stack(mtp_logits) if mtp_logits else jnp.zeros((0, b, t, c.vocab_size), jnp.float32)
        return ModelOutput(logits=logits, mtp_logits=mtp, aux=_aux(counts, stats), hidden=x)


def _aux(counts, stats):
    aux = {"expert_counts": counts}
    if stats:
        aux["balance_f"] = jnp.concatenate([s["balance_f"] for s in stats])
        aux["balance_p"] = jnp.concatenate([s["balance_p"] for s in stats])
    if stats and "comm_bytes" in stats[0]:  # moe_impl="ep": [L, 6] dispatch/combine bytes (parallel/)
        aux["comm_bytes"] = jnp.concatenate([s["comm_bytes"] for s in stats])
    return aux
