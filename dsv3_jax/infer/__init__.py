"""Inference entry points over the model's one forward (DeepSeekV3.extend / .mtp_module): latent-KV-cache
decoding, sampling and MTP speculative decoding (docs/architecture.md "Data paths").

    cache = init_cache(cfg, batch, max_len)                       # cache.py (latent for MLA; absorb=False: per-head)
    cache, logits = prefill(cfg, variables, tokens, lengths, cache)  # decode.py
    cache, logits = decode_step(cfg, variables, cache, next_tokens)
    result = generate(cfg, variables, prompts, max_new_tokens=64, sampling=SamplingParams(temperature=0.8))
    result, stats = speculative_generate(cfg, variables, prompts, max_new_tokens=64)
    variables = split_layers(cfg, variables)                      # layer_split.py: once, for repeated calls
"""

from dsv3_jax.infer.cache import KVCache, cache_bytes, cache_bytes_per_token, init_cache
from dsv3_jax.infer.decode import decode_step, extend, prefill
from dsv3_jax.infer.generate import GenerateResult, generate
from dsv3_jax.layer_split import LayerSplit, join_layers, split_layers
from dsv3_jax.infer.sampling import SamplingParams, sample, token_probs
from dsv3_jax.infer.speculative import SpecStats, speculative_generate

__all__ = ["KVCache", "cache_bytes", "cache_bytes_per_token", "init_cache", "decode_step", "extend", "prefill",
           "GenerateResult", "generate", "LayerSplit", "join_layers", "split_layers", "SamplingParams", "sample", "token_probs", "SpecStats",
           "speculative_generate"]
