"""Per-token activation inventory of one transformer block, for the training-memory estimate (memory.py).

Each entry is a tensor the backward pass needs, in values per token: (name, values, kind, fp32) where kind is
"input" (the block's residual-stream input, kept under every policy), "dot" (output of a weight matmul),
"batch_dot" (attention core: a matmul with batch dims), "other" (norms, activations, dispatch copies) or
"work" (alive only while the block runs, never saved: the bounded EP exchange's per-round buffers, which its
custom_vjp recomputes, layers/moe/ep_rounds.py). fp32 entries are kept in float32 whatever the compute dtype
(router scores, DESIGN principle 6). The attention core is assumed flash-style: it keeps its output and the
softmax log-sum-exp per head, never the T×T probabilities (`flash=False` adds them).
"""

from __future__ import annotations

from dsv3_jax.config import ModelConfig
from dsv3_jax.layers.moe.ep_rounds import ROUND_CAPACITY_FACTOR

Entry = tuple[str, float, str, bool]


def attention_entries(cfg: ModelConfig, seq_len: int, flash: bool = True) -> list[Entry]:
    """Tensors saved by one attention sub-layer (MLA: V3 report eq. 1-11; GQA/MHA baselines)."""
    d, h, dqk, dv = cfg.dim, cfg.n_heads, cfg.qk_head_dim, cfg.v_head_dim
    out: list[Entry] = [("block_input", d, "input", False), ("attn_norm_out", d, "other", False)]
    if cfg.attention == "mla":
        if cfg.q_lora_rank:
            out += [("wq_a", cfg.q_lora_rank, "dot", False), ("q_norm", cfg.q_lora_rank, "other", False)]
        q = "wq_b" if cfg.q_lora_rank else "wq"  # the up-projection, or the plain query projection
        out += [(q, h * dqk, "dot", False), ("q_rope", h * cfg.qk_rope_head_dim, "other", False),
                ("wkv_a", cfg.kv_lora_rank + cfg.qk_rope_head_dim, "dot", False),
                ("kv_norm", cfg.kv_lora_rank, "other", False),
                ("wkv_b", h * (cfg.qk_nope_head_dim + dv), "dot", False)]
    else:
        g = cfg.kv_heads
        out += [("q", h * dqk, "dot", False), ("k", g * dqk, "dot", False), ("v", g * dv, "dot", False)]
    out += [("attn_out", h * dv, "batch_dot", False), ("softmax_lse", h, "other", True)]
    if not flash:
        out.append(("softmax_probs", h * seq_len / 2, "other", False))  # causal: half the T×T matrix
    out.append(("wo", d, "dot", False))
    return out


def ffn_entries(cfg: ModelConfig, moe: bool) -> list[Entry]:
    """Tensors saved by one FFN sub-layer: dense SwiGLU or DeepSeekMoE (V3 report §2.1.2)."""
    d = cfg.dim
    out: list[Entry] = [("ffn_norm_in", d, "other", False), ("ffn_norm_out", d, "other", False)]
    if not moe:
        f = cfg.inter_dim
        return out + [("w1", f, "dot", False), ("w3", f, "dot", False), ("swiglu", f, "other", False),
                      ("w2", d, "dot", False)]
    k, f, s = cfg.n_activated_experts, cfg.moe_inter_dim, cfg.n_shared_experts
    out += [("gate_scores", cfg.n_routed_experts, "dot", True),
            ("dispatched", k * d, "other", False),
            ("expert_w1", k * f, "dot", False), ("expert_w3", k * f, "dot", False),
            ("expert_swiglu", k * f, "other", False), ("expert_w2", k * d, "dot", False)]
    if s:
        out += [("shared_w1", s * f, "dot", False), ("shared_w3", s * f, "dot", False),
                ("shared_swiglu", s * f, "other", False), ("shared_w2", d, "dot", False)]
    # One round of the bounded EP exchange holds ROUND_CAPACITY_FACTOR x the balanced rows: the send buffer,
    # the received rows, the expert hidden (w1, w3, SwiGLU) and the results travelling back.
    cap = ROUND_CAPACITY_FACTOR * k
    out += [("round_send", cap * d, "work", False), ("round_recv", cap * d, "work", False),
            ("round_hidden", 3 * cap * f, "work", False), ("round_back", 2 * cap * d, "work", False)]
    return out


def block_entries(cfg: ModelConfig, moe: bool, seq_len: int, flash: bool = True) -> list[Entry]:
    return attention_entries(cfg, seq_len, flash) + ffn_entries(cfg, moe)


def saved_bytes_per_token(entries: list[Entry], policy: str, compute_bytes: int) -> float:
    """Bytes per token one block keeps for the backward pass under a remat policy (ModelConfig.remat).

    none: everything. dots: matmul outputs incl. the attention core (jax.checkpoint_policies.dots_saveable).
    dots_no_batch: weight-matmul outputs only (checkpoint_dots_with_no_batch_dims). full: only the block
    input; everything else is recomputed. The block input is kept under every policy.
    paper: everything except PAPER_RECOMPUTED (the RMSNorm outputs and the MLA up-projections with the rope
    parts and softmax statistics recomputed from them, layers/recompute.py).
    """
    keep = {"none": ("input", "dot", "batch_dot", "other"), "dots": ("input", "dot", "batch_dot"),
            "work": ("input", "dot", "batch_dot", "other", "work"), "paper": ("input", "dot", "batch_dot", "other"),
            "dots_no_batch": ("input", "dot"), "full": ("input",)}
    if policy not in keep:
        raise ValueError(f"remat policy: expected one of {sorted(set(keep) - {'work'})}, got {policy!r}")
    drop = ()
    if policy == "paper":  # the attention core is rerun (no softmax statistics kept) only in MLA's latent region
        drop = PAPER_RECOMPUTED | ({"softmax_lse"} if any(e[0] == "wkv_b" for e in entries) else set())
    return sum(n * (4 if fp32 else compute_bytes) for name, n, kind, fp32 in entries
               if kind in keep[policy] and name not in drop)


# remat="paper" (V3 report §3.2.3): the block keeps everything but the outputs of its RMSNorms and, for MLA,
# the up-projections wq_b / wkv_b with what the attention core derives from them (rope'd queries, its softmax
# statistics, dropped when the block has MLA): the recompute region over the latents reruns the core's forward
# (layers/mla.py). Other attention kinds recompute their norms only.
PAPER_RECOMPUTED = frozenset({"attn_norm_out", "q_norm", "wq_b", "q_rope", "kv_norm", "wkv_b", "ffn_norm_out"})


def working_bytes_per_token(entries: list[Entry], compute_bytes: int) -> float:
    """Bytes per token of one block's full activation set (alive while it is recomputed / differentiated)."""
    return saved_bytes_per_token(entries, "work", compute_bytes)
