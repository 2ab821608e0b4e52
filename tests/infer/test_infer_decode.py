"""Cached decoding details: the router biases steer decoding's routing, cache sizes, input errors. Decoding
against the full forward for every config: test_infer_every_config.py."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsv3_jax.config import ModelConfig
from dsv3_jax.infer.cache import cache_bytes, cache_bytes_per_token, init_cache
from dsv3_jax.infer.decode import _prefill, decode_step, extend, prefill
from tests.conftest import tiny_config
from tests.infer.infer_helpers import init_variables, jitted_apply

LENGTHS = np.array([5, 1, 9])  # right-padded prompts of mixed lengths, width 9
STEPS = 3

CONFIGS = {"v3": tiny_config(mtp_depth=0)}  # MTP plays no part in the main model's decoding


def _sequences(cfg, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, cfg.vocab_size, (3, 9 + STEPS)), jnp.int32)


def test_router_biases_steer_decoding():
    cfg = CONFIGS["v3"]
    seqs = _sequences(cfg, 1)
    variables = init_variables(cfg)
    no_bias = {"params": variables["params"], "router": jax.tree.map(jnp.zeros_like, variables["router"])}
    want = np.asarray(jitted_apply(cfg)(no_bias, seqs).logits)
    _, logits = prefill(cfg, no_bias, seqs[:, :9], LENGTHS, init_cache(cfg, 3, 16), all_logits=True)
    _, biased = prefill(cfg, variables, seqs[:, :9], LENGTHS, init_cache(cfg, 3, 16), all_logits=True)
    np.testing.assert_allclose(logits[0, :5], want[0, :5], rtol=1e-5, atol=1e-5)
    assert not np.allclose(biased[0, :5], logits[0, :5], atol=1e-3)  # the biases change the routing


def test_prefill_runs_the_head_on_last_positions_only():
    """prefill's [B, V] logits equal the all-positions logits at each prompt's last token, and the compiled
    program multiplies only those B rows by the head (no [B·T, V] product)."""
    cfg = CONFIGS["v3"]
    seqs = _sequences(cfg, 2)[:, :9]
    variables = init_variables(cfg)
    _, every = prefill(cfg, variables, seqs, LENGTHS, init_cache(cfg, 3, 16), all_logits=True)
    _, last = prefill(cfg, variables, seqs, LENGTHS, init_cache(cfg, 3, 16))
    want = np.asarray(every)[np.arange(3), LENGTHS - 1]
    np.testing.assert_allclose(last, want, rtol=1e-5, atol=1e-6)
    hlo = _prefill.lower(cfg, variables, seqs, jnp.asarray(LENGTHS), init_cache(cfg, 3, 16),
                         all_logits=False).compile().as_text()
    assert f"f32[3,{cfg.vocab_size}]" in hlo
    assert not re.search(rf"f32\[(27|3,9),{cfg.vocab_size}\]", hlo)


def test_extend_window_reads_fewer_slots():
    """extend(window=W) from an empty cache (every position < W) gives the logits and cache of the full-width
    read (to rounding: the sums run over fewer slots, and later layers' entries follow); a window that a
    position would reach is refused, naming the bound."""
    cfg = CONFIGS["v3"]
    seqs = _sequences(cfg, 3)[:, :9]
    variables = init_variables(cfg)
    full = extend(cfg, variables, init_cache(cfg, 3, 16), seqs)
    narrow = extend(cfg, variables, init_cache(cfg, 3, 16), seqs, window=9)
    np.testing.assert_allclose(narrow[1], full[1], rtol=1e-5, atol=1e-5)  # the sums over fewer slots round apart
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), narrow[0].groups,
                 full[0].groups)
    with pytest.raises(ValueError, match=r"extend: window must be in \[T=9, max_len=16\]"):
        extend(cfg, variables, init_cache(cfg, 3, 16), seqs, window=8)


def test_cache_bytes():
    v3 = ModelConfig()
    assert cache_bytes_per_token(v3) == 70_272 == v3.kv_cache_bytes_per_token()  # docs/paper.md §2
    assert cache_bytes_per_token(v3, absorb=False) == 61 * 128 * (192 + 128) * 2 == 4_997_120
    cfg = CONFIGS["v3"]
    for absorb in (True, False):
        cache = init_cache(cfg, 2, 16, absorb=absorb)
        assert cache_bytes(cache) == 2 * 16 * cache_bytes_per_token(cfg, absorb=absorb, bytes_per_value=4)
    assert cache_bytes_per_token(cfg) == 3 * (12 + 4) * 2
    assert cache_bytes_per_token(cfg, absorb=False) == 3 * 2 * (12 + 8) * 2
    assert init_cache(cfg, 1, 4, dtype="bfloat16").groups["moe_layers"]["c_kv"].shape == (2, 1, 4, 12)
    # One program makes the whole cache: zeros, int32 lengths, and every array its own buffer (they are donated),
    # also where two groups have the same shapes.
    cache = init_cache(cfg, 2, 16, layers={"a": 2, "b": 2})
    leaves = jax.tree.leaves(cache)
    assert len({a.unsafe_buffer_pointer() for a in leaves}) == len(leaves) == 5
    assert cache.lengths.dtype == jnp.int32 and not any(np.any(np.asarray(a)) for a in leaves)


def test_bad_inputs_name_the_tensor():
    cfg = CONFIGS["v3"]
    variables = init_variables(cfg)
    tokens = jnp.zeros((3, 9), jnp.int32)
    with pytest.raises(ValueError, match="tokens: prompt width T=9 exceeds the cache's max_len=8"):
        prefill(cfg, variables, tokens, LENGTHS, init_cache(cfg, 3, 8))
    with pytest.raises(ValueError, match=r"lengths: every prompt length must be in \[1, T=9\]"):
        prefill(cfg, variables, tokens, np.array([0, 3, 9]), init_cache(cfg, 3, 16))
    with pytest.raises(ValueError, match=r"tokens: expected int \[B=2, T\]"):
        prefill(cfg, variables, tokens, LENGTHS, init_cache(cfg, 2, 16))
    with pytest.raises(ValueError, match=r"tokens: expected int \[B=3\]"):
        decode_step(cfg, variables, init_cache(cfg, 3, 16), tokens)
    full = init_cache(cfg, 3, 16).replace(lengths=jnp.asarray([3, 16, 5], jnp.int32))
    with pytest.raises(ValueError, match="cache: full"):
        decode_step(cfg, variables, full, tokens[:, 0])
    with pytest.raises(ValueError, match="max_len must be in"):
        init_cache(cfg, 1, cfg.max_seq_len + 1)
    with pytest.raises(ValueError, match="has no latent KV cache"):
        init_cache(tiny_config(attention="gqa", n_kv_heads=1), 1, 8, absorb=True)
    with pytest.raises(ValueError, match="router"):
        prefill(cfg, {"params": variables["params"]}, tokens, LENGTHS, init_cache(cfg, 3, 16))
