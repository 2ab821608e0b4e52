"""Independent reference for the analysis tests: enumerate every tensor of a checkpoint by its official name
and shape (DeepSeek-V3 inference/model.py, docs/paper.md §2 (MTP); HF Qwen2/Llama layouts), then sum.

Written from docs/paper.md §1-2 without importing dsv3_jax.analysis. A config is read only through its fields.
"""

from __future__ import annotations

import math


def _attn_tensors(c, prefix):
    h, d = c.n_heads, c.dim
    dqk = c.qk_nope_head_dim + c.qk_rope_head_dim
    if c.attention != "mla":
        g = c.n_kv_heads or h
        return [(f"{prefix}.q_proj", (h * dqk, d)), (f"{prefix}.k_proj", (g * dqk, d)),
                (f"{prefix}.v_proj", (g * c.v_head_dim, d)), (f"{prefix}.o_proj", (d, h * c.v_head_dim))]
    t = []
    if c.q_lora_rank:
        t += [(f"{prefix}.wq_a", (c.q_lora_rank, d)), (f"{prefix}.q_norm", (c.q_lora_rank,)),
              (f"{prefix}.wq_b", (h * dqk, c.q_lora_rank))]
    else:
        t += [(f"{prefix}.wq", (h * dqk, d))]
    t += [(f"{prefix}.wkv_a", (c.kv_lora_rank + c.qk_rope_head_dim, d)), (f"{prefix}.kv_norm", (c.kv_lora_rank,)),
          (f"{prefix}.wkv_b", (h * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank)),
          (f"{prefix}.wo", (d, h * c.v_head_dim))]
    return t


def _mlp(prefix, d, f):
    return [(f"{prefix}.w1", (f, d)), (f"{prefix}.w2", (d, f)), (f"{prefix}.w3", (f, d))]


def layer_tensors(c, i, moe):
    """[(name, shape)] of decoder layer i; routed experts are named '...experts.<e>...'."""
    p = f"layers.{i}"
    t = [(f"{p}.attn_norm", (c.dim,)), (f"{p}.ffn_norm", (c.dim,))] + _attn_tensors(c, f"{p}.attn")
    if not moe:
        return t + _mlp(f"{p}.ffn", c.dim, c.inter_dim)
    t.append((f"{p}.ffn.gate.weight", (c.n_routed_experts, c.dim)))
    for e in range(c.n_routed_experts):
        t += _mlp(f"{p}.ffn.experts.{e}", c.dim, c.moe_inter_dim)
    if c.n_shared_experts:
        t += _mlp(f"{p}.ffn.shared_experts", c.dim, c.n_shared_experts * c.moe_inter_dim)
    return t


def reference_counts(c, qkv_bias=False):
    """{'total', 'activated', 'mtp', 'embedding', 'head'}: activated skips the embedding table and every routed
    expert with index >= n_activated_experts (any k experts have the same size)."""
    main = [("embed", (c.vocab_size, c.dim)), ("norm", (c.dim,)), ("head", (c.vocab_size, c.dim))]
    for i in range(c.n_layers):
        main += layer_tensors(c, i, i >= c.n_dense_layers)
    if qkv_bias:
        g = c.n_kv_heads or c.n_heads
        hd = c.qk_nope_head_dim + c.qk_rope_head_dim
        main += [(f"layers.{i}.qkv_bias", ((c.n_heads + 2 * g) * hd,)) for i in range(c.n_layers)]
    mtp = []
    for k in range(c.mtp_depth):
        i = c.n_layers + k
        mtp += [(f"layers.{i}.enorm", (c.dim,)), (f"layers.{i}.hnorm", (c.dim,)),
                (f"layers.{i}.eh_proj", (c.dim, 2 * c.dim)), (f"layers.{i}.shared_head.norm", (c.dim,))]
        mtp += layer_tensors(c, i, c.n_layers > c.n_dense_layers)
    size = {n: math.prod(s) for n, s in main + mtp}
    return {"total": sum(math.prod(s) for _, s in main),
            "activated": sum(size[n] for n, _ in main if n != "embed" and _is_active(n, c)),
            "mtp": sum(math.prod(s) for _, s in mtp),
            "embedding": size["embed"], "head": size["head"]}


def _is_active(name, c):
    if ".experts." not in name:
        return True
    return int(name.split(".experts.")[1].split(".")[0]) < c.n_activated_experts


# Published figures (docs/paper.md §1, §5; Insights Tables 1-2, §2.3.2).
PAPER_KV_BYTES = {"v3": 70_272, "qwen72b": 327_680, "llama405b": 516_096, "v2": 69_120}
PAPER_GFLOPS = {"v2": 155.0, "v3": 250.0, "qwen72b": 394.0, "llama405b": 2448.0}
