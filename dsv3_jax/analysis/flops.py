"""Training FLOPs per token at a sequence length (Insights §2.2.1, Table 2) - one convention for all models.

Convention (FLOPs = multiply-adds × 2; training = forward + backward = 3 × forward):

    F_train(T) = 6 · N_act  +  6 · L · H · (d_qk + d_v) · ctx(T),     ctx = T/2 causal, T non-causal

- N_act: activated parameters per token (param_types.py: all non-routed weights incl. the output head,
  k of the E routed experts, embedding table 0). Each multiplies once per token: 2 FLOPs forward, 4 backward.
- Attention core: per layer and query token, q·k over ctx keys (2·H·d_qk·ctx) and p·v (2·H·d_v·ctx). H is
  the number of QUERY heads (GQA shares K/V storage, not score FLOPs); MLA uses its training (non-absorbed)
  shapes d_qk = 192, d_v = 128. Causal masking halves the average context (the "causal" MFU of Insights
  Table 4). MTP modules are excluded (`include_mtp=True` adds them).

Result at T = 4096 (ours / paper): V3 250.5 / 250 (1.002), V2 155.3 / 155 (1.002), LLaMA-3.1 405B
2473 / 2448 (1.010), Qwen-2.5 72B 444.9 / 394 (1.129). Cross-check: the non-causal / causal ratio for V3 is
1.1226; Insights Table 4's MFU is 43.73% non-causal vs 38.94% causal, ratio 1.1230: consistent with the
paper counting attention this way.

Qwen-2.5 72B is 13% above the paper, and no consistent convention closes the gap: 6 × its 70.2B
non-embedding matmul weights alone is 421 GFLOPs > 394. The paper's figure corresponds to ~65.7B matmul
parameters with no attention term, so it must have used smaller shapes than the released model's
(hidden 8192, 80 layers, 64 q / 8 kv heads, FFN 29,568, vocab 152,064). One reconstruction within 2%: the
released shapes with an FFN width of 24,576 (Qwen-1 72B's FFN width, a likely mix-up) give 386 GFLOPs
(0.980) under this convention. We report the released shapes and the ratio, untuned.
"""

from __future__ import annotations

from dsv3_jax.analysis.param_types import ParamCounts
from dsv3_jax.analysis.params import param_counts
from dsv3_jax.config import ModelConfig


def attention_context(seq_len: int, causal: bool = True) -> float:
    """Average number of keys a query attends to in a training sequence of `seq_len` tokens."""
    if seq_len <= 0:
        raise ValueError(f"seq_len: must be > 0, got {seq_len}")
    return seq_len / 2 if causal else float(seq_len)


def attention_flops_per_token(n_layers: int, n_heads: int, qk_head_dim: int, v_head_dim: int,
                              seq_len: int, causal: bool = True) -> float:
    """Forward FLOPs per token of the attention core (scores + weighted values) over all layers."""
    ctx = attention_context(seq_len, causal)
    return 2.0 * n_layers * n_heads * (qk_head_dim + v_head_dim) * ctx


def training_flops(activated_params: int, n_layers: int, n_heads: int, qk_head_dim: int, v_head_dim: int,
                   seq_len: int, causal: bool = True) -> float:
    """Training (fwd + bwd) FLOPs per token: 3 × (2·N_act + attention core)."""
    fwd = 2.0 * activated_params + attention_flops_per_token(n_layers, n_heads, qk_head_dim, v_head_dim,
                                                              seq_len, causal)
    return 3.0 * fwd


def training_flops_per_token(cfg: ModelConfig, seq_len: int, causal: bool = True, include_mtp: bool = False,
                             counts: ParamCounts | None = None) -> float:
    """Training FLOPs per token of `cfg` at `seq_len` under the module's convention.

    counts: ParamCounts to use (e.g. the comparison models' formula counts with q/k/v biases);
    default `param_counts(cfg)`.
    """
    counts = counts or param_counts(cfg)
    n_act, layers = counts.activated, cfg.n_layers
    if include_mtp:
        n_act, layers = n_act + counts.mtp_activated, layers + cfg.mtp_depth
    return training_flops(n_act, layers, cfg.n_heads, cfg.qk_head_dim, cfg.v_head_dim, seq_len, causal)


def training_gflops_per_token(cfg: ModelConfig, seq_len: int = 4096, **kw) -> float:
    """`training_flops_per_token` in GFLOPs (the unit of Insights Table 2)."""
    return training_flops_per_token(cfg, seq_len, **kw) / 1e9
