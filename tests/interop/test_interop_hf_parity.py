"""Parity with Hugging Face transformers' DeepseekV3ForCausalLM / DeepseekV2ForCausalLM (extra `hf`, CPU torch).

A tiny random HF model (q_lora on and off, YaRN with mscale 1.0 and 0.707, 4 expert groups keep 2, non-zero
router biases, 2 dense + 3 MoE layers, float32) is saved with save_pretrained, loaded with load_hf_checkpoint,
and must match HF's logits (max abs error <= 1e-4) and HF's cached greedy continuation (model.generate), which
we reproduce with a plain full-sequence greedy loop over DeepSeekV3.apply.

Router biases are drawn POSITIVE: transformers < 5 filled the dropped expert groups with 0.0 where the official
code (and dsv3_jax) uses -inf; with sel = sigmoid + bias > 0 a 0.0-filled expert can never outrank a kept one, so
both rules pick the same experts and the comparison holds for any transformers version (5.x fills -inf).
Also checked: our export (save_hf_checkpoint) loads in transformers and gives the same logits.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", exc_type=ImportError)
transformers = pytest.importorskip("transformers", exc_type=ImportError)
if not hasattr(transformers, "DeepseekV3ForCausalLM"):
    pytest.skip(f"transformers {transformers.__version__} has no DeepseekV3ForCausalLM", allow_module_level=True)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import dsv3_jax  # noqa: E402
from dsv3_jax.interop import load_hf_checkpoint, save_hf_checkpoint  # noqa: E402

PROMPT_LEN, NEW_TOKENS, VOCAB = 10, 10, 67


def _hf_config(kind: str, q_lora_rank, mscale: float):
    """A tiny HF config; rope given as rope_parameters (transformers 5) or rope_scaling (4.x)."""
    rope = {"factor": 4.0, "original_max_position_embeddings": 16, "beta_fast": 32, "beta_slow": 1,
            "mscale": mscale, "mscale_all_dim": mscale}
    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, moe_intermediate_size=16,
                  num_hidden_layers=5, first_k_dense_replace=2, num_attention_heads=4, num_key_value_heads=4,
                  n_routed_experts=8, num_experts_per_tok=3, n_group=4, topk_group=2, q_lora_rank=q_lora_rank,
                  kv_lora_rank=12, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8,
                  max_position_embeddings=64, initializer_range=0.3, tie_word_embeddings=False,
                  bos_token_id=None, eos_token_id=None, pad_token_id=None)
    cls = transformers.DeepseekV3Config if kind == "v3" else transformers.DeepseekV2Config
    if kind == "v3":
        common.update(n_shared_experts=1, routed_scaling_factor=2.5, num_nextn_predict_layers=0)
    else:
        common.update(n_shared_experts=2, routed_scaling_factor=2.0, topk_method="group_limited_greedy")
    if "rope_parameters" in getattr(cls, "__annotations__", {}):
        return cls(rope_parameters=dict(rope, rope_type="yarn", rope_theta=10000.0), **common)
    return cls(rope_scaling=dict(rope, type="yarn"), rope_theta=10000.0, **common)


def _hf_model(kind, q_lora_rank, mscale, seed=0):
    torch.manual_seed(seed)
    cls = transformers.DeepseekV3ForCausalLM if kind == "v3" else transformers.DeepseekV2ForCausalLM
    model = cls(_hf_config(kind, q_lora_rank, mscale)).float().eval()
    with torch.no_grad():
        for name, p in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                p.copy_(0.05 + 0.25 * torch.rand_like(p))  # positive: see the module docstring
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
    return model


def _greedy(logits_fn, variables, prompts: np.ndarray, n_new: int) -> np.ndarray:
    """Greedy decoding without a cache over one fixed-length buffer (the model is causal, so the right padding
    never reaches the position being read; one compiled shape serves every step)."""
    buf = np.zeros((prompts.shape[0], prompts.shape[1] + n_new), np.int32)
    buf[:, :prompts.shape[1]] = prompts
    for pos in range(prompts.shape[1] - 1, buf.shape[1] - 1):
        buf[:, pos + 1] = np.argmax(np.asarray(logits_fn(variables, jnp.asarray(buf)))[:, pos], axis=-1)
    return buf[:, prompts.shape[1]:]


CASES = {"v3_qlora_mscale1": ("v3", 16, 1.0), "v3_no_qlora_mscale0.707": ("v3", None, 0.707),
         "v2_group_limited_softmax": ("v2", None, 0.707)}


@pytest.mark.parametrize("case", list(CASES))
def test_logits_and_greedy_match_transformers(tmp_path, case):
    kind, q_lora_rank, mscale = CASES[case]
    if kind == "v2" and not hasattr(transformers, "DeepseekV2ForCausalLM"):
        pytest.skip(f"transformers {transformers.__version__} has no DeepseekV2ForCausalLM")
    hf = _hf_model(kind, q_lora_rank, mscale)
    hf.save_pretrained(tmp_path / "hf", safe_serialization=True)
    cfg, variables = load_hf_checkpoint(str(tmp_path / "hf"))
    assert (cfg.q_lora_rank, cfg.mscale, cfg.yarn_active, cfg.n_expert_groups) == (q_lora_rank or 0, mscale, True, 4)
    variables = jax.tree.map(jnp.asarray, variables)

    logits_fn = jax.jit(lambda v, t: dsv3_jax.DeepSeekV3(cfg).apply(v, t).logits)
    tokens = np.random.default_rng(1).integers(0, VOCAB, (2, PROMPT_LEN + NEW_TOKENS)).astype(np.int32)
    with torch.no_grad():
        want = hf(torch.from_numpy(tokens).long()).logits.numpy()
    got = np.asarray(logits_fn(variables, jnp.asarray(tokens)))
    err = float(np.max(np.abs(got - want)))
    print(f"\n{case}: max|logits| {np.abs(want).max():.3f}, max abs err {err:.2e}")
    assert err <= 1e-4

    prompts = tokens[:, :PROMPT_LEN]
    with torch.no_grad():
        out = hf.generate(torch.from_numpy(prompts).long(), max_new_tokens=NEW_TOKENS, do_sample=False,
                          use_cache=True, pad_token_id=0)
    hf_new = out[:, PROMPT_LEN:].numpy()
    assert hf_new.shape == (2, NEW_TOKENS)
    np.testing.assert_array_equal(_greedy(logits_fn, variables, prompts, NEW_TOKENS), hf_new)

    if cfg.router_bias:  # the biases really steer routing here: zeroing them changes the logits
        unbiased = dict(variables, router=jax.tree.map(jnp.zeros_like, variables["router"]))
        moved = np.abs(np.asarray(logits_fn(unbiased, jnp.asarray(tokens))) - want)
        assert moved.max() > 1e-2


def test_our_export_loads_in_transformers(tmp_path):
    hf = _hf_model("v3", 16, 1.0, seed=2)
    hf.save_pretrained(tmp_path / "hf", safe_serialization=True)
    cfg, variables = load_hf_checkpoint(str(tmp_path / "hf"))
    save_hf_checkpoint(cfg, variables, str(tmp_path / "ours"), shard_size="30KB")
    back = transformers.DeepseekV3ForCausalLM.from_pretrained(str(tmp_path / "ours"), dtype=torch.float32).eval()
    tokens = torch.from_numpy(np.random.default_rng(3).integers(0, VOCAB, (2, 12))).long()
    with torch.no_grad():
        np.testing.assert_array_equal(back(tokens).logits.numpy(), hf(tokens).logits.numpy())
