"""Hugging Face config.json <-> ModelConfig for DeepSeek-V2 and DeepSeek-V3 (docs/paper.md §1).

Strict: every config.json field is either mapped, checked against the one value dsv3_jax implements, or known
to have no effect on the forward pass (metadata, training-only knobs); anything else is a ValueError naming the
field. Numeric rules:
  * V3 (`model_type` deepseek_v3): sigmoid scores, `noaux_tc` (e_score_correction_bias, group score = sum of
    the top-2), normalized top-k weights (`norm_topk_prob` must be true).
  * V2 (deepseek_v2): softmax scores, no bias, weights not normalized; `topk_method` "greedy" ignores groups
    (mapped to one group), "group_limited_greedy" keeps `topk_group` of `n_group` groups by their max score.
  * YaRN: HF's `rope_scaling` (`rope_parameters` in transformers 5) holds factor,
    original_max_position_embeddings, beta_fast, beta_slow, mscale, mscale_all_dim. HF multiplies cos/sin
    (i.e. q_pe and k_pe) by attention_factor = m(mscale) / m(mscale_all_dim) with m(s) = 0.1·s·ln(factor) + 1,
    and the softmax scale by m(mscale_all_dim)². The official code has ONE mscale and only the softmax
    correction, so official mscale = HF mscale_all_dim, and HF's attention_factor must be 1 (mscale ==
    mscale_all_dim, as in every released V2/V3 config); otherwise the config is rejected. A missing
    mscale_all_dim means no softmax correction (our mscale = 0).
  * HF applies the YaRN frequencies whenever rope type is yarn; the official code only when
    max_seq_len > original_seq_len, so a yarn config must have max_position_embeddings > original.
"""

from __future__ import annotations

import math
from typing import Any

from dsv3_jax.config import HF_NAMES, ModelConfig

MODEL_TYPES = ("deepseek_v3", "deepseek_v2")
ARCHITECTURES = {"deepseek_v3": "DeepseekV3ForCausalLM", "deepseek_v2": "DeepseekV2ForCausalLM"}
# Fields with no effect on the forward pass: metadata, generation/runtime settings, training-only losses.
IGNORED = frozenset({
    "architectures", "auto_map", "transformers_version", "torch_dtype", "dtype", "_name_or_path",
    "bos_token_id", "eos_token_id", "pad_token_id", "use_cache", "initializer_range", "attention_dropout",
    "aux_loss_alpha", "seq_aux", "ep_size", "output_router_logits", "router_aux_loss_coef",
    "pretraining_tp", "return_dict", "output_hidden_states", "output_attentions", "tie_encoder_decoder",
    "is_encoder_decoder", "id2label", "label2id", "tokenizer_class", "chunk_size_feed_forward",
    # MLA expands per-head keys/values from the latent; HF's default (sdpa) path gives the same logits for any
    # value (checked with transformers 5.23; its eager path needs it == num_attention_heads).
    "num_key_value_heads",
})
# Fields that must hold the one value dsv3_jax implements (a function of the other fields where callable).
FIXED = {
    "hidden_act": lambda d: "silu",
    "tie_word_embeddings": lambda d: False,
    "attention_bias": lambda d: False,
    "mlp_bias": lambda d: False,
    "rope_interleave": lambda d: True,
    "moe_layer_freq": lambda d: 1,
    "head_dim": lambda d: d["qk_rope_head_dim"],
    "qk_head_dim": lambda d: d["qk_nope_head_dim"] + d["qk_rope_head_dim"],
}
SPECIAL = frozenset({"model_type", "max_position_embeddings", "rope_scaling", "rope_parameters", "topk_method",
                     "norm_topk_prob", "quantization_config", "num_mtp_layers", "scoring_func", "n_group",
                     "topk_group", "rope_theta"})
ROPE_KEYS = frozenset({"type", "rope_type", "factor", "original_max_position_embeddings", "beta_fast", "beta_slow",
                       "mscale", "mscale_all_dim", "rope_theta", "truncate", "attention_factor"})
FP8_QUANT = {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128]}


def _err(field: str, msg: str) -> ValueError:
    return ValueError(f"config.json field {field!r}: {msg}")


def yarn_m(factor: float, mscale: float) -> float:
    """YaRN magnitude m = 0.1·mscale·ln(factor) + 1 (1 when factor <= 1), as official and HF code."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def _check_fields(d: dict[str, Any]):
    known = IGNORED | SPECIAL | set(FIXED) | set(HF_NAMES.values())
    for field in d:
        if field not in known:
            raise _err(field, f"unknown or unsupported field (value {d[field]!r}); dsv3_jax maps DeepSeek-V2/V3 "
                              "configs only and refuses fields it would otherwise silently ignore")
    for field, want in FIXED.items():
        if field in d and d[field] is not None:
            try:
                expected = want(d)
            except KeyError as e:
                raise _err(e.args[0], "required field is missing") from None
            if d[field] != expected:
                raise _err(field, f"dsv3_jax implements only {expected!r}, found {d[field]!r}")


def _required(d, field):
    if d.get(field) is None:
        raise _err(field, "required field is missing")
    return d[field]


def _int_if_integral(x):
    return int(x) if isinstance(x, float) and x.is_integer() else x


def _rope_fields(d: dict[str, Any]) -> dict[str, Any]:
    """rope_theta, max_seq_len and the YaRN fields of ModelConfig from rope_scaling / rope_parameters."""
    where = "rope_scaling" if d.get("rope_scaling") else "rope_parameters"
    rope = d.get(where) or {}
    for key in rope:
        if key not in ROPE_KEYS:
            raise _err(f"{where}.{key}", f"unknown or unsupported rope field (value {rope[key]!r})")
    theta = rope.get("rope_theta", d.get("rope_theta"))
    if theta is None:
        raise _err("rope_theta", "required field is missing")
    max_pos = _required(d, "max_position_embeddings")
    kind = rope.get("rope_type", rope.get("type")) or "default"
    if kind == "default":  # plain RoPE: YaRN inactive (original_seq_len = max_seq_len)
        return dict(rope_theta=float(theta), max_seq_len=max_pos, original_seq_len=max_pos, rope_factor=1.0)
    if kind != "yarn":
        raise _err(f"{where}.rope_type", f"only 'yarn' or 'default' rope is implemented, found {kind!r}")
    orig = rope.get("original_max_position_embeddings")
    if orig is None:
        raise _err(f"{where}.original_max_position_embeddings", "required for yarn rope")
    factor = rope.get("factor") or max_pos / orig  # HF's rule when factor is missing
    if rope.get("truncate", True) is not True:
        raise _err(f"{where}.truncate", "only the official floor/ceil correction range (true) is implemented")
    ms, ms_all = rope.get("mscale"), rope.get("mscale_all_dim")
    af = rope.get("attention_factor")
    if af is None:
        af = yarn_m(factor, ms) / yarn_m(factor, ms_all) if ms and ms_all else yarn_m(factor, 1.0)
    if abs(af - 1.0) > 1e-12:
        raise _err(f"{where}.mscale", f"HF would scale q_pe and k_pe by attention_factor={af:.6g} (mscale={ms}, "
                   f"mscale_all_dim={ms_all}); the official model has no such factor: it needs mscale == "
                   "mscale_all_dim (or attention_factor 1.0)")
    if max_pos <= orig:
        raise _err("max_position_embeddings", f"yarn needs max_position_embeddings > "
                   f"{where}.original_max_position_embeddings={orig} (the official code enables YaRN only then), "
                   f"found {max_pos}")
    return dict(rope_theta=float(theta), max_seq_len=max_pos, original_seq_len=orig,
                rope_factor=float(factor), beta_fast=_int_if_integral(rope.get("beta_fast") or 32),
                beta_slow=_int_if_integral(rope.get("beta_slow") or 1), mscale=float(ms_all or 0.0))


def _routing_fields(d: dict[str, Any], model_type: str) -> dict[str, Any]:
    """score_func, router_bias and the expert groups of ModelConfig (V3: noaux_tc; V2: greedy variants)."""
    if model_type == "deepseek_v3":
        for field, want, default in (("scoring_func", "sigmoid", "sigmoid"), ("topk_method", "noaux_tc", "noaux_tc"),
                                     ("norm_topk_prob", True, True)):
            if d.get(field, default) != want:
                raise _err(field, f"DeepSeek-V3 routing is implemented with {want!r}, found {d[field]!r}")
        return dict(score_func="sigmoid", router_bias=True, n_expert_groups=_required(d, "n_group"),
                    n_limited_groups=_required(d, "topk_group"))
    for field, want, default in (("scoring_func", "softmax", "softmax"), ("norm_topk_prob", False, False)):
        if (d.get(field) if d.get(field) is not None else default) != want:
            raise _err(field, f"DeepSeek-V2 routing is implemented with {want!r}, found {d[field]!r}")
    method = d.get("topk_method") or "greedy"
    if method == "greedy":  # HF and the official V2 code ignore the groups here
        groups = dict(n_expert_groups=1, n_limited_groups=1)
    elif method == "group_limited_greedy":
        groups = dict(n_expert_groups=_required(d, "n_group"), n_limited_groups=_required(d, "topk_group"))
    else:
        raise _err("topk_method", f"DeepSeek-V2 supports 'greedy' or 'group_limited_greedy', found {method!r}")
    return dict(score_func="softmax", router_bias=False, **groups)


def _check_quantization(d: dict[str, Any]) -> bool:
    q = d.get("quantization_config")
    if q is None:
        return False
    for key, value in q.items():
        if key == "activation_scheme":  # activations are quantized at run time (quant/), not stored
            continue
        if key not in FP8_QUANT:
            raise _err(f"quantization_config.{key}", f"unknown field (value {value!r})")
        got = list(value) if isinstance(value, (list, tuple)) else value
        if got != FP8_QUANT[key]:
            raise _err(f"quantization_config.{key}", f"only {FP8_QUANT[key]!r} is implemented, found {value!r}")
    return True


OPTIONAL = {"q_lora_rank": 0, "first_k_dense_replace": 0, "n_shared_experts": 0, "num_nextn_predict_layers": 0}


def config_from_hf(d: dict[str, Any], *, mtp: bool = True) -> tuple[ModelConfig, bool]:
    """(ModelConfig, fp8) from a parsed config.json. `mtp=False` sets mtp_depth=0 (MTP tensors are skipped)."""
    model_type = d.get("model_type")
    if model_type not in MODEL_TYPES:
        raise _err("model_type", f"expected one of {MODEL_TYPES}, found {model_type!r}")
    _check_fields(d)
    if d.get("num_mtp_layers") is not None and d.get("num_nextn_predict_layers") not in (None, d["num_mtp_layers"]):
        raise _err("num_mtp_layers", f"{d['num_mtp_layers']} disagrees with num_nextn_predict_layers="
                   f"{d['num_nextn_predict_layers']}")
    d = {**d, "num_nextn_predict_layers": d.get("num_nextn_predict_layers", d.get("num_mtp_layers"))}
    fields = {}
    for ours, theirs in HF_NAMES.items():
        if theirs in SPECIAL:
            continue
        value = d.get(theirs)
        fields[ours] = (OPTIONAL[theirs] if theirs in OPTIONAL else _required(d, theirs)) if value is None else value
    fields.update(_rope_fields(d))
    fields.update(_routing_fields(d, model_type))
    if not mtp:
        fields["mtp_depth"] = 0
    try:
        cfg = ModelConfig(**fields)
    except ValueError as e:
        field = str(e).split(":")[0].removeprefix("ModelConfig.")
        raise ValueError(f"config.json (HF field {HF_NAMES.get(field, field)!r}): {e}") from None
    return cfg, _check_quantization(d)


def config_to_hf(cfg: ModelConfig, *, fp8: bool = False, dtype: str = "float32") -> dict[str, Any]:
    """A config.json dict Hugging Face DeepSeek-V3/V2 code reads as the same model (inverse of config_from_hf
    on its fields; with YaRN inactive, the unused rope fields are not written)."""
    if cfg.attention != "mla":
        raise ValueError(f"ModelConfig.attention: only 'mla' has a Hugging Face DeepSeek equivalent, "
                         f"got {cfg.attention!r}")
    v3 = cfg.score_func == "sigmoid"
    if cfg.router_bias != v3:
        raise ValueError(f"ModelConfig.router_bias={cfg.router_bias} with score_func={cfg.score_func!r} has no "
                         "Hugging Face DeepSeek equivalent (V3: sigmoid + bias, V2: softmax without)")
    model_type = "deepseek_v3" if v3 else "deepseek_v2"
    d: dict[str, Any] = {"architectures": [ARCHITECTURES[model_type]], "model_type": model_type}
    d.update({theirs: getattr(cfg, ours) for ours, theirs in HF_NAMES.items()})
    d.update(q_lora_rank=cfg.q_lora_rank or None, num_key_value_heads=cfg.n_heads, head_dim=cfg.qk_rope_head_dim,
             max_position_embeddings=cfg.max_seq_len, hidden_act="silu", tie_word_embeddings=False,
             attention_bias=False, rope_interleave=True, norm_topk_prob=v3, torch_dtype=dtype)
    if v3:
        d["topk_method"] = "noaux_tc"
    else:
        d["topk_method"] = "group_limited_greedy" if cfg.n_expert_groups > 1 else "greedy"
    d["rope_scaling"] = None
    if cfg.yarn_active:
        d["rope_scaling"] = {"type": "yarn", "factor": cfg.rope_factor,
                             "original_max_position_embeddings": cfg.original_seq_len, "beta_fast": cfg.beta_fast,
                             "beta_slow": cfg.beta_slow, "mscale": cfg.mscale, "mscale_all_dim": cfg.mscale}
        if not cfg.mscale:  # HF would otherwise derive attention_factor = m(factor) != 1
            d["rope_scaling"]["attention_factor"] = 1.0
    if fp8:
        d["quantization_config"] = {"activation_scheme": "dynamic", **FP8_QUANT}
    return d
