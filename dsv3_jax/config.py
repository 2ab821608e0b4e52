"""ModelConfig: the one frozen description of a DeepSeek-V2/V3-style model.

Field names follow the official inference configs (github deepseek-ai/DeepSeek-V3 `inference/configs/*.json`,
docs/paper.md §1); `HF_NAMES` lists the Hugging Face spelling of each. The config is validated on construction:
every error names the offending field and what was expected. Fields whose values name implementations
(score_func, attention, moe_impl, ep_dispatch, ep_payload, ep_combine, remat, fp8) are checked against the
registry that owns those implementations (registry.CHOICES; the registries live next to their code in layers/
and quant/ and join the table when `import dsv3_jax` imports them).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

from dsv3_jax import registry

DTYPES = ("float32", "bfloat16", "float16")
FP8_IMPLS = ("reference", "auto", "mosaic_gpu", "triton")  # pallas_kernels' GEMM choice (its own dispatch)

# Official-config name -> Hugging Face config.json name (docs/paper.md §1).
HF_NAMES = {
    "vocab_size": "vocab_size",
    "dim": "hidden_size",
    "inter_dim": "intermediate_size",
    "moe_inter_dim": "moe_intermediate_size",
    "n_layers": "num_hidden_layers",
    "n_dense_layers": "first_k_dense_replace",
    "n_heads": "num_attention_heads",
    "n_routed_experts": "n_routed_experts",
    "n_shared_experts": "n_shared_experts",
    "n_activated_experts": "num_experts_per_tok",
    "n_expert_groups": "n_group",
    "n_limited_groups": "topk_group",
    "route_scale": "routed_scaling_factor",
    "score_func": "scoring_func",
    "q_lora_rank": "q_lora_rank",
    "kv_lora_rank": "kv_lora_rank",
    "qk_nope_head_dim": "qk_nope_head_dim",
    "qk_rope_head_dim": "qk_rope_head_dim",
    "v_head_dim": "v_head_dim",
    "rope_theta": "rope_theta",
    "norm_eps": "rms_norm_eps",
    "mtp_depth": "num_nextn_predict_layers",
}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Every architectural knob of the model. Defaults are DeepSeek-V3 671B (docs/paper.md §1)."""

    # Sizes.
    vocab_size: int = 129280
    dim: int = 7168
    inter_dim: int = 18432  # dense SwiGLU hidden size (first n_dense_layers)
    moe_inter_dim: int = 2048  # per-expert hidden size
    n_layers: int = 61
    n_dense_layers: int = 3
    n_heads: int = 128
    # DeepSeekMoE (V3 report §2.1.2).
    n_routed_experts: int = 256
    n_shared_experts: int = 1
    n_activated_experts: int = 8
    n_expert_groups: int = 8
    n_limited_groups: int = 4
    score_func: str = "sigmoid"
    route_scale: float = 2.5
    # Aux-loss-free balancing bias (e_score_correction_bias, V3 report eq. 16). Without it the group score
    # is the group's max score (V2) instead of the sum of its top-2 (V3).
    router_bias: bool = True
    # MLA (V3 report §2.1.1).
    q_lora_rank: int = 1536  # 0 = no query compression (plain wq)
    kv_lora_rank: int = 512
    qk_nope_head_dim: int = 128
    qk_rope_head_dim: int = 64
    v_head_dim: int = 128
    # RoPE / YaRN (inference/model.py precompute_freqs_cis).
    max_seq_len: int = 16384
    original_seq_len: int = 4096
    rope_theta: float = 10000.0
    rope_factor: float = 40.0
    beta_fast: int = 32
    beta_slow: int = 1
    mscale: float = 1.0
    norm_eps: float = 1e-6
    # Multi-Token Prediction depth D (V3 report §2.2); 0 disables MTP.
    mtp_depth: int = 1
    # Implementation choices (not architecture).
    attention: str = "mla"  # "mha" / "gqa" are baselines for ablations
    n_kv_heads: int = 0  # GQA only: number of key/value heads (0 = n_heads)
    dtype: str = "float32"  # compute dtype; params are always float32
    init_std: float = 0.006  # V3 report §4.2
    # Expert backend (layers/moe/experts.py): "ragged" sort + grouped GEMM (jax.lax.ragged_dot; GPU, FP8);
    # "blocked" sort + one GEMM chain per block of rows (fast on CPU); "dense" every expert on every token (the
    # reference); "ep" expert parallelism over the mesh's expert axis (layers/moe/ep.py); "auto" the fastest
    # exact one for the platform, resolved once at set-up. All exact, none drops tokens.
    moe_impl: str = "auto"
    # Expert parallelism (moe_impl="ep"). ep_dispatch "auto": ragged_all_to_all on GPU/TPU, capacity-padded
    # all_to_all on CPU, the local path when the expert axis has size 1; "ragged" / "all_to_all" force one
    # (even at expert axis size 1). Payloads (V3 report §3.3): dispatch in the compute dtype, "fp8" (1x128
    # E4M3 tiles, power-of-2 scales) or LogFMT-8/10 (Insights §3.2); combine in the compute dtype or bfloat16.
    ep_dispatch: str = "auto"
    ep_payload: str = "compute"
    ep_combine: str = "compute"
    ep_nodes: int = 0  # nodes the expert axis spans (consecutive blocks of ranks); 0 = not set (one node)
    remat: str = "none"
    # Layers per iteration of the scan over a block stack (layers/block.py run_stack); 0 = auto: the whole
    # stack when it has at most SCAN_UNROLL_AUTO_LAYERS layers (small models, where copying each layer's
    # residuals into the scan's stacked buffers costs more than the longer compile saves), else 1.
    scan_unroll: int = 0
    # FP8 training (V3 report §3.3): every Linear of MLA, the dense MLP and the routed experts through quant/.
    fp8: str = "none"
    fp8_impl: str = "reference"  # GEMM for blockwise FP8: jnp reference or a Pallas kernel
    fp8_amax_history: int = 16  # per_tensor_delayed: amax history length of each tensor (fp8_meta collection)

    def __post_init__(self):
        _validate(self)

    # ----- derived sizes -------------------------------------------------------------------------
    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def n_moe_layers(self) -> int:
        return self.n_layers - self.n_dense_layers

    @property
    def experts_per_group(self) -> int:
        return self.n_routed_experts // self.n_expert_groups

    @property
    def yarn_active(self) -> bool:
        return self.max_seq_len > self.original_seq_len

    @property
    def kv_heads(self) -> int:
        if self.attention == "gqa":
            return self.n_kv_heads or self.n_heads
        return self.n_heads

    @property
    def softmax_scale(self) -> float:
        """Attention scale with the YaRN mscale² correction (inference/model.py MLA.__init__)."""
        scale = self.qk_head_dim**-0.5
        if self.yarn_active:
            m = 0.1 * self.mscale * math.log(self.rope_factor) + 1.0
            scale *= m * m
        return scale

    def kv_cache_bytes_per_token(self, bytes_per_elem: int = 2) -> int:
        """Bytes of KV cache per token over all layers (MLA caches c_kv and the shared k_pe)."""
        if self.attention == "mla":
            per_layer = self.kv_lora_rank + self.qk_rope_head_dim
        else:
            per_layer = self.kv_heads * (self.qk_head_dim + self.v_head_dim)
        return self.n_layers * per_layer * bytes_per_elem

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelConfig":
        """Build from a mapping (e.g. an ml-collections ConfigDict); unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"ModelConfig: unknown field(s) {unknown}; known fields are {sorted(names)}")
        return cls(**dict(d))


def _require(ok: bool, field: str, msg: str):
    if not ok:
        raise ValueError(f"ModelConfig.{field}: {msg}")


def _validate(c: ModelConfig):
    for name in ("vocab_size", "dim", "inter_dim", "moe_inter_dim", "n_layers", "n_heads", "kv_lora_rank",
                 "qk_nope_head_dim", "v_head_dim", "max_seq_len", "original_seq_len"):
        v = getattr(c, name)
        _require(isinstance(v, int) and v > 0, name, f"must be a positive int, got {v!r}")
    for name in ("n_dense_layers", "n_shared_experts", "q_lora_rank", "mtp_depth", "n_kv_heads",
                 "n_routed_experts", "n_activated_experts", "qk_rope_head_dim"):
        v = getattr(c, name)
        _require(isinstance(v, int) and v >= 0, name, f"must be a non-negative int, got {v!r}")
    _require(c.n_dense_layers <= c.n_layers, "n_dense_layers",
             f"must be <= n_layers={c.n_layers}, got {c.n_dense_layers}")
    _require(c.qk_rope_head_dim % 2 == 0 and c.qk_rope_head_dim > 0, "qk_rope_head_dim",
             f"must be a positive even number (RoPE rotates pairs), got {c.qk_rope_head_dim}")
    _require(c.dtype in DTYPES, "dtype", f"must be one of {DTYPES}, got {c.dtype!r}")
    _require(isinstance(c.ep_nodes, int) and c.ep_nodes >= 0, "ep_nodes",
             f"must be a non-negative int, got {c.ep_nodes!r}")
    _require(isinstance(c.scan_unroll, int) and c.scan_unroll >= 0, "scan_unroll",
             f"must be a non-negative int (0 = auto), got {c.scan_unroll!r}")
    _require(isinstance(c.fp8_amax_history, int) and c.fp8_amax_history >= 1, "fp8_amax_history",
             f"must be an int >= 1, got {c.fp8_amax_history!r}")
    _require(c.fp8_impl in FP8_IMPLS, "fp8_impl", f"must be one of {FP8_IMPLS}, got {c.fp8_impl!r}")
    for field in sorted(registry.CHOICES):  # names, then each registry's cross-field rules
        registry.CHOICES[field].validate(c)
    _require(c.norm_eps > 0, "norm_eps", f"must be > 0, got {c.norm_eps}")
    _require(c.rope_theta > 0, "rope_theta", f"must be > 0, got {c.rope_theta}")
    _require(c.rope_factor >= 1, "rope_factor", f"must be >= 1, got {c.rope_factor}")
    _require(c.route_scale > 0, "route_scale", f"must be > 0, got {c.route_scale}")
    if c.attention == "gqa":
        kv = c.n_kv_heads or c.n_heads
        _require(c.n_heads % kv == 0, "n_kv_heads", f"n_heads={c.n_heads} must be divisible by n_kv_heads={kv}")
    if c.n_moe_layers > 0:
        _validate_moe(c)


def _validate_moe(c: ModelConfig):
    _require(c.n_routed_experts > 0, "n_routed_experts", "must be > 0 when there are MoE layers "
             f"(n_layers={c.n_layers} > n_dense_layers={c.n_dense_layers})")
    _require(c.n_expert_groups > 0, "n_expert_groups", f"must be > 0, got {c.n_expert_groups}")
    _require(c.n_routed_experts % c.n_expert_groups == 0, "n_routed_experts",
             f"n_routed_experts={c.n_routed_experts} must be divisible by n_expert_groups={c.n_expert_groups}")
    _require(1 <= c.n_limited_groups <= c.n_expert_groups, "n_limited_groups",
             f"must be in [1, n_expert_groups={c.n_expert_groups}], got {c.n_limited_groups}")
    reachable = c.experts_per_group * c.n_limited_groups
    _require(1 <= c.n_activated_experts <= reachable, "n_activated_experts",
             f"must be in [1, {reachable}] (experts per group {c.experts_per_group} x kept groups "
             f"{c.n_limited_groups}), got {c.n_activated_experts}")
    if c.n_expert_groups > 1 and c.router_bias:
        # group score = sum of the top-2 biased scores in the group (inference/model.py Gate.forward).
        _require(c.experts_per_group >= 2, "n_expert_groups",
                 f"each group needs >= 2 experts for the top-2 group score, got {c.experts_per_group} "
                 f"(n_routed_experts={c.n_routed_experts} / n_expert_groups={c.n_expert_groups})")
