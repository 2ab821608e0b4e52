"""The transformer block and the scanned stack of blocks (REFERENCE §2 "Block").

    x += attn(attn_norm(x));  x += ffn(ffn_norm(x))      ffn = SwiGLU MLP (dense layers) or DeepSeekMoE

Layers of one kind run under `nn.scan` (params stacked on a leading `layers` axis) so the 61-layer model
compiles once per kind; `cfg.remat` picks what the backward pass recomputes.
Legend: B batch, T positions, D model dim.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from dsv3_jax.layers.baseline_attention import GQA
from dsv3_jax.layers.linear import FP8_META_COLLECTION
from dsv3_jax.layers.mla import MLA
from dsv3_jax.layers.mlp import MLP
from dsv3_jax.layers.moe.layer import ROUTER_COLLECTION, MoE
from dsv3_jax.layers.norms import RMSNorm

REMAT_POLICIES = {
    "full": None,  # save nothing: recompute the whole block in backward
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Block(nn.Module):
    """Pre-norm residual block. Returns (x [B,T,D], stats) where stats are the MoE statistics ({} if dense)."""

    cfg: "object"
    moe: bool

    @nn.compact
    def __call__(self, x, positions, mask):
        c = self.cfg
        attn = MLA(c, name="attn") if c.attention == "mla" else GQA(c, name="attn")
        x = x + attn(RMSNorm(c.norm_eps, name="attn_norm")(x), positions, mask)
        h = RMSNorm(c.norm_eps, name="ffn_norm")(x)
        if self.moe:
            y, stats = MoE(c, name="moe")(h)
        else:
            y, stats = MLP(c, c.inter_dim, name="mlp")(h), {}
        return x + y, stats


def block_stack(cfg, moe: bool, length: int, name: str) -> nn.Module:
    """`length` Blocks of one kind under nn.scan; call as stack(x, positions, mask) -> (x, stacked stats)."""
    cls = Block
    if cfg.remat != "none":
        cls = nn.remat(Block, policy=REMAT_POLICIES[cfg.remat], prevent_cse=False)
    scanned = nn.scan(cls, variable_axes={"params": 0, ROUTER_COLLECTION: 0, FP8_META_COLLECTION: 0}, split_rngs={"params": True},
                      in_axes=(nn.broadcast, nn.broadcast), length=length,
                      metadata_params={nn.PARTITION_NAME: "layers"})
    return scanned(cfg, moe, name=name)
