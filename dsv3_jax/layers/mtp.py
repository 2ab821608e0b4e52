"""Multi-Token Prediction module k (V3 report §2.2, eq. 21-25; the released weights' layout, docs/paper.md §2).

    h'_i = eh_proj([enorm(Emb(t_{i+k})); hnorm(h^{k-1}_i)])     EMBEDDING FIRST, as the released weights
    h^k  = Block(h')                                             one full transformer block
    logits^k = Head(shared_head.norm(h^k))                       embedding and head shared with the model

Position i of module k predicts token t_{i+k+1}. The same module trains (no cache) and drafts for speculative
decoding (with its own KV-cache slot: its block attends over earlier positions).
Legend: B batch, T positions, D model dim.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from dsv3_jax import param_tree as pt
from dsv3_jax import sharding
from dsv3_jax.layers.block import Block
from dsv3_jax.layers.kv_cache import CacheSlot
from dsv3_jax.layers.linear import Linear
from dsv3_jax.layers.moe.ep import ExpertParallel, activation_mesh
from dsv3_jax.layers.norms import RMSNorm


class MTPModule(nn.Module):
    """Holds enorm, hnorm, eh_proj (2D -> D), the block and the shared-head norm of one MTP depth."""

    cfg: "object"
    parallel: ExpertParallel | None = None

    @nn.compact
    def __call__(self, h, emb_ahead, positions, mask, cache: CacheSlot | None = None):
        """h [B,T,D] (previous depth's hidden), emb_ahead [B,T,D] = Emb(t_{i+k}) -> (h^k, norm(h^k), stats,
        cache)."""
        c = self.cfg
        mesh = activation_mesh(self.parallel)
        act = lambda v: sharding.constrain(v, sharding.BATCH_SEQ_EMBED, mesh)
        x = jnp.concatenate([RMSNorm(c.norm_eps, name=pt.ENORM)(act(emb_ahead)),
                             RMSNorm(c.norm_eps, name=pt.HNORM)(act(h))], axis=-1)
        x = act(Linear(c.dim, (None, "embed"), c.init_std, jnp.dtype(c.dtype), mesh, name=pt.EH_PROJ)(x))
        x, stats, cache = Block(c, c.n_moe_layers > 0, self.parallel, name=pt.MTP_BLOCK)(x, positions, mask, cache)
        return x, RMSNorm(c.norm_eps, name=pt.MTP_NORM)(x), stats, cache


def tokens_ahead(tokens, k: int, fill: int = 0):
    """t_{i+k} for every position i of tokens [B, T]; positions past the end get `fill` (their MTP outputs
    are masked out of the loss and, by causality, never reach earlier positions)."""
    pad = jnp.full((tokens.shape[0], k), fill, tokens.dtype)
    return jnp.concatenate([tokens[:, k:], pad], axis=1)
