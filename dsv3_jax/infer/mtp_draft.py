"""Drafting with the MTP modules (V3 report §2.2 eq. 21-25; §5.4.3 uses them for speculative decoding).

Module k at position j reads h^{k-1}_j (h^0 = the main model's last hidden state, before its final norm) and
Emb(t_{j+k}); h'_j = eh_proj([enorm(Emb(t_{j+k})); hnorm(h^{k-1}_j)]) goes through the module's block
(with its own KV cache, since the block attends over earlier positions), and Head(norm(h^k_j)) predicts
t_{j+k+1}. With tokens confirmed up to t_n and h^0 up to position n-1, module k at position n-1 drafts t_{n+k};
modules k >= 2 read the drafts of the modules before them.

`draft` runs every module over a window of W positions per row (the whole prompt after prefill, the last 2D
positions after a verification), rewriting those positions of the MTP caches, so entries made from
rejected drafts are replaced once the true tokens are known.

Legend: B batch, W window positions, D MTP depth, S cache slots, V vocab.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dsv3_jax.infer.cached_block import block_cached, cache_mask
from dsv3_jax.infer.decode import embed, head
from dsv3_jax.infer.sampling import sample, token_probs
from dsv3_jax.layers.linear import matmul
from dsv3_jax.layers.norms import rms_norm


def mtp_module(cfg, params, router, k: int, h_prev, tok_ahead, positions, mask, kv, absorb: bool):
    """Module k on h_prev [B,W,D] and tokens t_{j+k} [B,W] -> (h^k [B,W,D], norm(h^k), kv); its cache is
    layer k-1 of kv {name: [D, B, S, ...]}."""
    p = params[f"mtp_{k - 1}"]
    x = jnp.concatenate([rms_norm(embed(cfg, params, tok_ahead), p["enorm"]["scale"], cfg.norm_eps),
                         rms_norm(h_prev, p["hnorm"]["scale"], cfg.norm_eps)], axis=-1)
    x = matmul(x, p["eh_proj"]["kernel"], jnp.dtype(cfg.dtype))
    moe = cfg.n_moe_layers > 0
    bias = router[f"mtp_{k - 1}"]["block"]["moe"]["bias"] if moe and cfg.router_bias else None
    x, kv = block_cached(cfg, p["block"], bias, x, positions, mask, kv, k - 1, absorb, moe)
    return x, rms_norm(x, p["norm"]["scale"], cfg.norm_eps), kv


def draft(cfg, params, router, kv, h0, ahead, positions, last, rng, sp, absorb: bool):
    """Draft D tokens per row with modules 1..D over a window.

    h0 [B,W,D] main hidden states at window positions [B,W]; ahead [B,W+D] with ahead[:, i] = t_{j0+i+1}
    (j0 the row's first window position) filled up to the pending token at index `last` [B] (window index of
    position n-1); the drafts are written after it. Returns (drafts [B,D], q [B,D,V] the distributions they
    were drawn from, kv)."""
    b, w = positions.shape
    rows = jnp.arange(b)
    mask = cache_mask(positions, jax.tree.leaves(kv)[0].shape[2])
    h, drafts, qs = h0, [], []
    for k in range(1, cfg.mtp_depth + 1):
        h, h_normed, kv = mtp_module(cfg, params, router, k, h, ahead[:, k - 1:k - 1 + w], positions, mask, kv,
                                     absorb)
        logits = head(cfg, params, h_normed[rows, last])  # [B, V]
        rng, key = jax.random.split(rng)
        d = sample(key, logits, sp)
        ahead = ahead.at[rows, last + k].set(d)
        drafts.append(d)
        qs.append(token_probs(logits, sp))
    return jnp.stack(drafts, axis=1), jnp.stack(qs, axis=1), kv
