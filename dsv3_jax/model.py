"""DeepSeekV3: embed -> dense blocks -> MoE blocks -> norm -> head, plus D MTP modules (V3 report §2).

Public API:
    model = DeepSeekV3(cfg)                      # parallel=ExpertParallel(...) for expert parallelism
    variables = model.init(rng, tokens)          # {'params': ..., 'router': {... 'bias' [E]}}
    out = model.apply(variables, tokens)         # out.logits [B,T,V], out.mtp_logits [D,B,T,V], out.aux

ONE forward for every mode (docs/architecture.md). `__call__` (training, eval) is a composition of the
methods below, and the other modes call the same methods on the same modules through `model.apply(...,
method=...)`:
    embed_tokens(tokens)                               the embedding (first pipeline stage)
    run_blocks(x, positions, mask, cache, ...)         the block stacks, or a range of them (pipeline stages)
    final_logits(h)                                    final norm + output head (last stage)
    mtp_module(k, h, tokens_ahead, positions, mask, cache)   MTP module k (training, last stage, drafting)
    extend(tokens, cache)                              the cached forward of prefill / decode / verification
Parameter tree: param_tree.py ('embed', 'dense_layers' and 'moe_layers' with a leading layer axis, 'norm',
'head', 'mtp_0' … 'mtp_{D-1}'); the `router` collection holds the aux-loss-free biases where MoE layers sit,
and `out.aux['expert_counts']` has exactly that tree structure, so the bias update is a tree map.
Legend: B batch, T positions, S cache slots, D model dim, V vocab, E routed experts, L stacked MoE layers.
"""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from dsv3_jax import param_tree as pt
from dsv3_jax import sharding
from dsv3_jax.config import ModelConfig
from dsv3_jax.layers.attention_core import causal_mask
from dsv3_jax.layers.block import Block, run_stack
from dsv3_jax.layers.kv_cache import CacheSlot, KVCache, cache_mask
from dsv3_jax.layers.linear import Embed, Head, checked_tokens
from dsv3_jax.layers.moe.ep import ExpertParallel, activation_mesh
from dsv3_jax.layers.mtp import MTPModule, tokens_ahead
from dsv3_jax.layers.norms import RMSNorm
from dsv3_jax.layers.resolve import resolve_config


@flax.struct.dataclass
class ModelOutput:
    logits: jnp.ndarray  # [B, T, V] fp32
    mtp_logits: jnp.ndarray  # [D, B, T, V] fp32; position i of depth k predicts t_{i+k+1}
    aux: dict[str, Any]  # expert_counts (router-tree), balance_f / balance_p [L, B, E], comm_bytes [L, 6]
    hidden: jnp.ndarray  # [B, T, D] final hidden state before the output norm


def training_positions(tokens, positions=None, segment_ids=None):
    """(positions [B,T], mask [B,T,T]) of a full-sequence forward: positions default to 0..T-1; attention is
    causal in the token index and stays inside a segment (packed documents)."""
    b, t = tokens.shape
    index = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    return (index if positions is None else positions), causal_mask(index, index, segment_ids, segment_ids)


class DeepSeekV3(nn.Module):
    cfg: ModelConfig
    parallel: ExpertParallel | None = None  # expert-parallel context (layers/moe/ep.py); None = one device

    def setup(self):
        c = resolve_config(self.cfg)  # "auto" choices -> concrete, once per config (layers/resolve.py)
        self.rcfg = c
        dt = jnp.dtype(c.dtype)
        # Attribute names are the parameter tree's group names (param_tree.EMBED, DENSE, MOE, NORM, HEAD,
        # mtp_name(k)); tests/test_param_tree.py checks that they agree.
        mesh = activation_mesh(self.parallel)  # activations constrained, weights gathered at use (sharding.py)
        self.embed = Embed(c.vocab_size, c.dim, c.init_std, dt, mesh)
        self.dense_layers = Block(c, False, self.parallel) if c.n_dense_layers else None
        self.moe_layers = Block(c, True, self.parallel) if c.n_moe_layers else None
        self.norm = RMSNorm(c.norm_eps)
        self.head = Head(c.vocab_size, c.init_std, dt, mesh)
        self.mtp = [MTPModule(c, self.parallel) for _ in range(c.mtp_depth)]

    def __call__(self, tokens, positions=None, segment_ids=None) -> ModelOutput:
        """tokens int [B,T]; positions [B,T] (default 0..T-1); segment_ids [B,T] for packed documents."""
        c = self.rcfg
        tokens = checked_tokens(tokens)
        if tokens.shape[1] > c.max_seq_len:
            raise ValueError(f"tokens: sequence length {tokens.shape[1]} exceeds ModelConfig.max_seq_len="
                             f"{c.max_seq_len}")
        positions, mask = training_positions(tokens, positions, segment_ids)
        x = self.embed_tokens(tokens)
        x, stats, _ = self.run_blocks(x, positions, mask)
        logits = self.final_logits(x)
        h, mtp_logits, mtp_stats = x, [], []
        for k in range(c.mtp_depth):
            h, lk, st, _ = self.mtp_module(k, h, tokens_ahead(tokens, k + 1), positions, mask)
            mtp_logits.append(lk)
            mtp_stats.append(st)
        b, t = tokens.shape
        mtp = jnp.stack(mtp_logits) if mtp_logits else jnp.zeros((0, b, t, c.vocab_size), jnp.float32)
        return ModelOutput(logits=logits, mtp_logits=mtp, aux=model_aux(stats, mtp_stats), hidden=x)

    def _act(self, x, names=sharding.BATCH_SEQ_EMBED):
        """x constrained to the activation layout `names` (batch over the batch axes; sharding.py)."""
        return sharding.constrain(x, names, activation_mesh(self.parallel))

    def embed_tokens(self, tokens):
        """Emb(tokens) [B,T,D] in the compute dtype (kept out of FP8, V3 report §3.3)."""
        return self._act(self.embed(checked_tokens(tokens)))

    def run_blocks(self, x, positions, mask, cache: dict | None = None, lengths: dict | None = None,
                   n_active: dict | None = None):
        """The main model's block stacks over x [B,T,D] -> (x, {stack: stats [L, ...]}, {stack: cache}).

        cache: {stack: KV entries [L,B,S,...]} (extend), or None. lengths: {stack: layers held} — by default the
        model's stack sizes; a pipeline stage passes its slots (its params hold that range of layers) and
        `n_active` {stack: traced count} to skip its padding slots."""
        lengths = pt.stack_sizes(self.rcfg) if lengths is None else lengths
        stats, new_cache = {}, {}
        for name in pt.STACKS:
            if not lengths.get(name):
                continue
            block = self.dense_layers if name == pt.DENSE else self.moe_layers
            x, stats[name], entries = run_stack(block, x, positions, mask, lengths[name],
                                                None if cache is None else cache[name],
                                                None if n_active is None else n_active[name])
            if entries is not None:
                new_cache[name] = entries
        return x, stats, new_cache

    def final_logits(self, h):
        """fp32 logits [..., V] = Head(norm(h)) (the head stays in high precision, V3 report §3.3)."""
        return self._act(self.head(self.norm(self._act(h))), sharding.BATCH_SEQ_VOCAB)

    def mtp_module(self, k: int, h, tokens_ahead_k, positions, mask, cache: CacheSlot | None = None):
        """MTP module k (0-based) on the previous depth's hidden h [B,T,D] and tokens t_{i+k+1} [B,T] ->
        (h^{k+1}, logits [B,T,V] predicting t_{i+k+2}, MoE stats, cache)."""
        with jax.named_scope("mtp"):  # profiler trace names (V3 report Figure 3)
            h, h_normed, stats, cache = self.mtp[k](h, self.embed(tokens_ahead_k), positions, mask, cache)
            return h, self._act(self.head(h_normed), sharding.BATCH_SEQ_VOCAB), stats, cache

    def extend(self, tokens, cache: KVCache, window: int | None = None):
        """The cached forward: tokens [B,T] at positions cache.lengths[b] + t, their KV entries written into
        the cache. Returns (logits [B,T,V] fp32, hidden [B,T,D] before the final norm, cache with the SAME
        lengths: the caller sets the new ones, all T after a step, fewer to roll back rejected drafts).

        window (static): every position is below it, so attention reads only the first `window` slots of each
        layer (a prefill from an empty cache passes T; None = all cache.max_len slots)."""
        tokens = checked_tokens(tokens)
        if window is not None and not tokens.shape[1] <= window <= cache.max_len:
            raise ValueError(f"extend: window must be in [T={tokens.shape[1]}, max_len={cache.max_len}] "
                             f"(every new position below it), got {window}")
        positions = cache.lengths[:, None] + jnp.arange(tokens.shape[1], dtype=jnp.int32)[None, :]
        mask = cache_mask(positions, cache.max_len if window is None else window)
        main = {name: cache.groups[name] for name in pt.stack_sizes(self.rcfg)}
        x, _, groups = self.run_blocks(self.embed(tokens), positions, mask, cache=main)
        return self.final_logits(x), x, cache.replace(groups={**cache.groups, **groups})


def expert_counts_tree(stats: dict, mtp_stats: list) -> dict:
    """Per-layer expert counts in the router collection's tree (param_tree.router_bias_paths)."""
    trees = [pt.nest((name, pt.MOE_FFN, pt.BIAS), st["counts"]) for name, st in stats.items() if st]
    trees += [pt.nest(pt.mtp_block_path(k) + (pt.MOE_FFN, pt.BIAS), st["counts"])
              for k, st in enumerate(mtp_stats) if st]
    return pt.merge(*trees)


def model_aux(stats: dict, mtp_stats: list) -> dict:
    """ModelOutput.aux from the stacks' stats [L, ...] and the MTP modules' stats: expert counts (router
    tree), balance_f / balance_p [L, B, E] and, with expert parallelism, comm_bytes [L, 6] (main, then MTP)."""
    layers = [st for st in stats.values() if st] + [{k: v[None] for k, v in st.items()} for st in mtp_stats if st]
    aux = {"expert_counts": expert_counts_tree(stats, mtp_stats)}
    for key in ("balance_f", "balance_p", "comm_bytes"):
        if layers and key in layers[0]:
            aux[key] = jnp.concatenate([st[key] for st in layers])
    return aux
