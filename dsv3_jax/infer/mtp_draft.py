"""Drafting with the MTP modules (V3 report §2.2 eq. 21-25; §5.4.3 uses them for speculative decoding): the
training forward's own modules, through DeepSeekV3.mtp_module with a KV-cache slot.

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

from dsv3_jax.infer.decode import model_variables
from dsv3_jax.infer.sampling import sample, token_probs
from dsv3_jax.layers.kv_cache import CacheSlot, cache_mask
from dsv3_jax.model import DeepSeekV3


def draft(cfg, variables, kv, h0, ahead, positions, last, rng, sp):
    """Draft D tokens per row with the model's MTP modules (DeepSeekV3.mtp_module, the training modules) over
    a window.

    h0 [B,W,D] main hidden states at window positions [B,W]; ahead [B,W+D] with ahead[:, i] = t_{j0+i+1}
    (j0 the row's first window position) filled up to the pending token at index `last` [B] (window index of
    position n-1); the drafts are written after it. kv: the MTP cache group {name: [D, B, S, ...]} (module k
    uses layer k). Returns (drafts [B,D], q [B,D,V] the distributions they were drawn from, kv)."""
    model, variables = DeepSeekV3(cfg), model_variables(cfg, variables)
    b, w = positions.shape
    rows = jnp.arange(b)
    mask = cache_mask(positions, jax.tree.leaves(kv)[0].shape[2])
    h, drafts, qs = h0, [], []
    for k in range(cfg.mtp_depth):
        h, logits, _, slot = model.apply(variables, k, h, ahead[:, k:k + w], positions, mask,
                                         CacheSlot(kv, jnp.asarray(k, jnp.int32)), method=DeepSeekV3.mtp_module)
        kv = slot.entries
        logits = logits[rows, last]  # [B, V]
        rng, key = jax.random.split(rng)
        d = sample(key, logits, sp)
        ahead = ahead.at[rows, last + k + 1].set(d)
        drafts.append(d)
        qs.append(token_probs(logits, sp))
    return jnp.stack(drafts, axis=1), jnp.stack(qs, axis=1), kv
