"""remat="paper" (layers/recompute.py, V3 report §3.2.3): the same gradients as "none", and the backward keeps
no RMSNorm output and no MLA up-projection output (nor the q / k / v the attention core derives from them)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src.ad_checkpoint import saved_residuals

from dsv3_jax.layers.attention_core import causal_mask
from dsv3_jax.layers.block import Block, run_stack
from dsv3_jax.layers.moe import dispatch
from tests.conftest import tiny_config

# Distinct sizes, so that a kept array's shape says what it is: D 40, Q 20, C 12 (+R 4 = 16), H 3, N 8, V 6.
SIZES = dict(dim=40, inter_dim=56, moe_inter_dim=24, q_lora_rank=20, kv_lora_rank=12, n_heads=3,
             qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=6)
B, T = 2, 16


def _stack(remat: str, moe: bool, **kw):
    """A one-layer stack (run_stack applies the policy) and its loss over params and x."""
    cfg = tiny_config(remat=remat, **SIZES, **kw)
    pos = jnp.broadcast_to(jnp.arange(T), (B, T))
    mask = causal_mask(pos, pos)

    class Stack(nn.Module):
        @nn.compact
        def __call__(self, x):
            return run_stack(Block(cfg, moe, name="block"), x, pos, mask, 1)[0]

    x = jax.random.normal(jax.random.key(0), (B, T, cfg.dim))
    model = Stack()
    variables = model.init(jax.random.key(1), x)
    loss = lambda p, x: jnp.sum(model.apply({**variables, "params": p}, x) ** 2)  # noqa: E731
    return cfg, loss, variables["params"], x


def _kept(remat: str, moe: bool, **kw):
    """The activations the block's backward keeps (stacked [1, ...] by the scan; no parameters, no inputs, not
    the loss's own): [(shape, bytes)]."""
    cfg, loss, params, x = _stack(remat, moe, **kw)
    kept = [(tuple(a.shape), a.size * a.dtype.itemsize) for a, src in saved_residuals(loss, params, x)
            if "from the argument" not in src and "from a constant" not in src]
    return cfg, [(s, n) for s, n in kept if len(s) >= 3 and s[0] == 1]


@pytest.mark.parametrize("moe", [False, True])
@pytest.mark.parametrize("attention", ["mla", "gqa"])
def test_paper_gradients_equal_none(moe, attention):
    kw = dict(attention=attention, n_kv_heads=1) if attention == "gqa" else {}
    grads = []
    for remat in ("none", "paper"):
        _, loss, params, x = _stack(remat, moe, **kw)
        grads.append(jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x))
    for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):  # float32 rounding of a reordering
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * max(1.0, float(np.abs(a).max())))


@pytest.mark.parametrize("moe", [False, True])
def test_paper_keeps_no_norm_or_up_projection_output(moe):
    cfg, paper = _kept("paper", moe)
    _, none = _kept("none", moe)
    _, full = _kept("full", moe)
    d, h = cfg.dim, cfg.n_heads
    residual_stream = [s for s, _ in paper if s[-1] == d and np.prod(s) == B * T * d]
    # Only the block input and the stream after attention (x + attn) are kept at [.., D]; "none" also keeps each
    # norm's output and its float32 intermediates there. The one exception is what the routed experts keep for
    # their own backward: the blocks keep the dispatched rows [N·k, D], the capacity batch (this size on CPU,
    # layers/moe/block_capacity.py) the tokens it gathers them from, [N, D], k times fewer bytes.
    capacity = moe and dispatch.capacity_beats_blocks(B * T, cfg.n_activated_experts, cfg.n_routed_experts,
                                                      cfg.dim, cfg.moe_inter_dim)
    assert len(residual_stream) == 2 + capacity, paper
    assert len([s for s, _ in none if s[-1] == d and np.prod(s) == B * T * d]) > 2
    up = {h * cfg.qk_head_dim, h * (cfg.qk_nope_head_dim + cfg.v_head_dim)}  # wq_b, wkv_b outputs
    per_head = {cfg.qk_head_dim, cfg.v_head_dim, cfg.qk_nope_head_dim + cfg.v_head_dim}  # q / k / v per head
    assert not [s for s in (s for s, _ in paper) if s[-1] in up or (s[-1] in per_head and h in s)], paper
    # Of MLA it keeps wq_a(x) [.., Q] once (q_norm's input; not q_norm's output) and wkv_a(x) [.., C+R]: never the
    # normalized latent [.., C].
    q_lora = [s for s, _ in paper if s[-1] == cfg.q_lora_rank]
    assert len(q_lora) == 1 and len([s for s, _ in none if s[-1] == cfg.q_lora_rank]) > 1, paper
    assert [s for s, _ in paper if s[-1] == cfg.kv_lora_rank + cfg.qk_rope_head_dim]
    assert not [s for s, _ in paper if s[-1] == cfg.kv_lora_rank], paper
    total = lambda kept: sum(n for _, n in kept)  # noqa: E731
    assert total(full) < total(paper) < total(none)
