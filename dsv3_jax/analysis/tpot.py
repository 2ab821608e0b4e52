"""Time-per-output-token lower bound from expert-parallel communication (Insights §2.3.2).

The bound: during decoding with EP, each MoE layer's dispatch (FP8, 1 byte per value) and combine (BF16,
2 bytes) move `tokens_per_device · experts_per_token · hidden` values per device over a link of
`bandwidth`. With two micro-batches overlapped (one computes while the other communicates), a layer takes
at least two communication phases, so

    t_comm  = (dispatch_bytes + combine_bytes) · tokens · experts_per_token · hidden / bandwidth
    TPOT   >= n_layers · microbatches · t_comm

Insights' numbers: (1 + 2) B · 32 tokens · 9 experts (8 routed + 1 shared) · 7K hidden / 50 GB/s =
120.96 µs (the paper's "7K" is 7000: 7168 would give 123.86 µs); two micro-batches → 241.92 µs per layer;
× 61 layers = 14.76 ms (≈ 67 tokens/s). GB200 NVL72 at 900 GB/s: 0.82 ms (≈ 1200 tokens/s).
"""

from __future__ import annotations

from dsv3_jax.config import ModelConfig

GB = 1e9  # the paper's GB/s are decimal
PAPER_HIDDEN = 7000  # "7K hidden" as Insights computes it (120.96 µs only with 7000)


def ep_comm_seconds(tokens_per_device: int, experts_per_token: int, hidden: int, bandwidth_bytes_per_s: float,
                    dispatch_bytes: float = 1.0, combine_bytes: float = 2.0) -> float:
    """One dispatch + combine of one micro-batch through one MoE layer, in seconds."""
    if bandwidth_bytes_per_s <= 0:
        raise ValueError(f"bandwidth_bytes_per_s: must be > 0, got {bandwidth_bytes_per_s}")
    volume = (dispatch_bytes + combine_bytes) * tokens_per_device * experts_per_token * hidden
    return volume / bandwidth_bytes_per_s


def tpot_seconds(n_layers: int, tokens_per_device: int, experts_per_token: int, hidden: int,
                 bandwidth_bytes_per_s: float, dispatch_bytes: float = 1.0, combine_bytes: float = 2.0,
                 microbatches: int = 2) -> float:
    """Communication-bound time per output token: layers × micro-batches × one EP communication."""
    if microbatches < 1 or n_layers < 0:
        raise ValueError(f"tpot_seconds: microbatches >= 1 and n_layers >= 0 required, got "
                         f"{microbatches}, {n_layers}")
    t = ep_comm_seconds(tokens_per_device, experts_per_token, hidden, bandwidth_bytes_per_s,
                        dispatch_bytes, combine_bytes)
    return n_layers * microbatches * t


def tpot_seconds_for_config(cfg: ModelConfig, bandwidth_bytes_per_s: float, tokens_per_device: int = 32,
                            hidden: int | None = None, microbatches: int = 2) -> float:
    """The bound for `cfg`: experts per token = activated routed + shared, all n_layers (as the paper does,
    which also charges the dense layers). hidden defaults to cfg.dim (the paper rounds V3's 7168 to 7000)."""
    experts = cfg.n_activated_experts + cfg.n_shared_experts
    return tpot_seconds(cfg.n_layers, tokens_per_device, experts, hidden or cfg.dim, bandwidth_bytes_per_s,
                        microbatches=microbatches)
