"""The transformer block and the scanned stack of blocks (V3 report §2; docs/paper.md §2 "Block").

    x += attn(attn_norm(x));  x += ffn(ffn_norm(x))      ffn = SwiGLU MLP (dense layers) or DeepSeekMoE

A stack of blocks of one kind runs under a lifted `nn.scan` over ONE Block module (params stacked on a leading
`layers` axis), so the 61-layer model compiles once per kind. The same `run_stack` serves training (no cache),
prefill / decoding (a KV-cache group carried through the scan: layer i writes slot i of the stacked cache)
and pipeline stages (a range of layers, with padded slots skipped: `n_active`). ModelConfig.remat picks what
the backward recomputes (REMAT_POLICIES).
Legend: B batch, T positions, D model dim, L layers of a stack.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from dsv3_jax import param_tree as pt
from dsv3_jax import sharding
from dsv3_jax.layers.attention import attention_module
from dsv3_jax.layers.kv_cache import CacheSlot
from dsv3_jax.layers.mlp import MLP
from dsv3_jax.layers.moe import node_routing
from dsv3_jax.layers.moe.ep import ExpertParallel, activation_mesh
from dsv3_jax.layers.moe.layer import MoE
from dsv3_jax.layers.norms import RMSNorm
from dsv3_jax.layers.recompute import PAPER
from dsv3_jax.registry import Registry



class Remat(NamedTuple):
    policy: Callable | None  # jax.checkpoint policy: what the backward may keep (None = nothing)


# ModelConfig.remat: whether and how each block is rematerialized in the backward pass ("none": not at all).
# "paper" (V3 report §3.2.3): the block is not rematerialized as a whole; every RMSNorm output and the MLA
# up-projections (with the q, k, v they feed the attention core) are recomputed from inside the block, through
# recompute regions (layers/recompute.py, registered as None here: no nn.remat around the block).
REMAT_POLICIES = Registry("remat", "rematerialization policy")
REMAT_POLICIES.register("none", None)
REMAT_POLICIES.register(PAPER, None)
REMAT_POLICIES.register("full", Remat(None))
REMAT_POLICIES.register("dots", Remat(jax.checkpoint_policies.checkpoint_dots))
REMAT_POLICIES.register("dots_no_batch", Remat(jax.checkpoint_policies.dots_with_no_batch_dims_saveable))


class Block(nn.Module):
    """Pre-norm residual block: (x [B,T,D], stats, cache) from x, positions [B,T], mask [B,T,T|S] and an
    optional CacheSlot. stats are the MoE statistics ({} for a dense block)."""

    cfg: "object"
    moe: bool
    parallel: ExpertParallel | None = None

    @nn.compact
    def __call__(self, x, positions, mask, cache: CacheSlot | None = None):
        c = self.cfg
        # The residual stream keeps the batch layout at every sub-layer boundary (sharding.BATCH_SEQ_EMBED).
        mesh = activation_mesh(self.parallel)
        act = lambda v: sharding.constrain(v, sharding.BATCH_SEQ_EMBED, mesh)
        x = act(x)
        # The norms are applied by their consumers, so that under remat="paper" each shares a recompute region
        # with the matmuls that read its output (layers/recompute.py); the same numbers under every policy.
        with jax.named_scope("attention"):  # profiler trace names (V3 report Figure 2)
            a, cache = attention_module(c, mesh)(x, positions, mask, cache,
                                                 norm=RMSNorm(c.norm_eps, name=pt.ATTN_NORM))
        x = act(x + a)
        norm = RMSNorm(c.norm_eps, name=pt.FFN_NORM)
        if self.moe:
            y, stats = MoE(c, self.parallel, name=pt.MOE_FFN)(x, norm=norm)
        else:
            y, stats = MLP(c, c.inter_dim, mesh, name=pt.MLP)(x, norm=norm), {}
        return act(x + y), stats, cache


def _zero_stats(cfg, moe: bool, x):
    """Stats of a skipped (padding) slot: zeros shaped like a real block's."""
    if not moe:
        return {}
    e, b = cfg.n_routed_experts, x.shape[0]
    stats = {"counts": jnp.zeros((e,), jnp.int32), "balance_f": jnp.zeros((b, e), jnp.float32),
             "balance_p": jnp.zeros((b, e), jnp.float32)}
    if cfg.moe_impl == "ep":
        stats["comm_bytes"] = jnp.zeros((len(node_routing.COMM_FIELDS),), jnp.float32)
    return stats


SCAN_UNROLL_AUTO_LAYERS = 4  # ModelConfig.scan_unroll=0 unrolls stacks of at most this many layers


def scan_unroll(unroll: int, length: int) -> int:
    """Layers per scan iteration for ModelConfig.scan_unroll (0 = auto) on a stack of `length` layers."""
    if unroll == 0:
        return length if length <= SCAN_UNROLL_AUTO_LAYERS else 1
    return min(unroll, length)


def run_stack(block: Block, x, positions, mask, length: int, cache: dict | None = None, n_active=None):
    """Run `block` (a Block whose variables are stacked [length, ...]) over its layers with lax.scan.

    cache: the stack's KV entries {name: [length, B, S, ...]} (layer i reads and writes slot i), or None.
    n_active: run only layers i < n_active (a traced int: a pipeline stage's padded slots are skipped).
    Returns (x, stats stacked [length, ...], cache)."""
    cfg, moe = block.cfg, block.moe
    ctx = block.parallel
    ep_axes = (ctx.axis,) if ctx is not None and ctx.manual and ctx.exchange != "local" else ()

    def body(blk, carry, i):
        x, entries = carry
        slot = None if entries is None else CacheSlot(entries, i)

        def go(blk, x, slot):
            return blk(x, positions, mask, slot)

        def skip(blk, x, slot):  # zeros vary over the shard_map axes x varies over (pipeline stages)
            x, stats = x, sharding.vary_like(_zero_stats(cfg, moe, x), x)
            if moe and ep_axes:  # and over the expert axis, as an exchanging block's output and bytes do
                x = sharding.vary(x, ep_axes)
                stats = dict(stats, comm_bytes=sharding.vary(stats["comm_bytes"], ep_axes))
            return x, stats, slot

        if n_active is None:
            y, stats, slot = go(blk, x, slot)
        else:
            y, stats, slot = nn.cond(i < n_active, go, skip, blk, x, slot)
        return (y, None if slot is None else slot.entries), stats

    remat = REMAT_POLICIES.get(cfg.remat)
    if remat is not None:
        body = nn.remat(body, policy=remat.policy, prevent_cse=False)
    scan = nn.scan(body, variable_axes={"params": 0, pt.ROUTER: 0, pt.FP8_META: 0},
                   split_rngs={"params": True}, in_axes=0, out_axes=0, length=length,
                   unroll=scan_unroll(cfg.scan_unroll, length),
                   metadata_params={nn.PARTITION_NAME: "layers"})
    (x, cache), stats = scan(block, (x, cache), jnp.arange(length, dtype=jnp.int32))
    return x, stats, cache
