"""Every trainable config decodes through the one forward: for V3- and V2-like models with either cache layout,
each expert backend, FP8 recipe and attention kind, prefill + decode_step logits equal the full forward
DeepSeekV3.apply at every position for prompts of mixed lengths (float32, tight tolerance), and greedy
generation gives exactly the tokens of greedy decoding with the full forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsv3_jax.infer.cache import init_cache
from dsv3_jax.infer.decode import decode_step, prefill
from dsv3_jax.infer.generate import generate
from tests.conftest import tiny_config
from tests.infer.infer_helpers import init_variables, jitted_apply

LENGTHS = np.array([5, 1, 9])  # right-padded prompts of mixed lengths, width 9
STEPS, NEW = 3, 6

CASES = {  # name: (ModelConfig overrides, cache layout absorb=...)
    "v3-latent": (dict(), True),
    "v3-per-head": (dict(), False),
    # no dense layer, no q compression, softmax router without bias, one expert group
    "v2-like": (dict(q_lora_rank=0, n_dense_layers=0, n_layers=2, score_func="softmax", router_bias=False,
                     n_expert_groups=1, n_limited_groups=1), True),
    "moe-dense": (dict(moe_impl="dense"), True),
    "moe-blocked": (dict(moe_impl="blocked"), True),
    "moe-ragged": (dict(moe_impl="ragged"), True),
    "moe-ep-one-device": (dict(moe_impl="ep"), True),
    # FP8: the per-head cache runs wkv_b through the same FP8 matmul as training, so numerics are identical.
    "fp8-blockwise": (dict(fp8="blockwise", moe_impl="ragged"), False),
    "fp8-per-tensor-delayed": (dict(fp8="per_tensor_delayed", moe_impl="ragged"), False),
    "attention-mha": (dict(attention="mha", q_lora_rank=0), None),
    "attention-gqa": (dict(attention="gqa", n_kv_heads=1), None),
}


def _cfg(name):
    return tiny_config(mtp_depth=0, **CASES[name][0])


def _sequences(cfg, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, cfg.vocab_size, (3, 9 + STEPS)), jnp.int32)


def _greedy_full_forward(cfg, variables, prompt, n):
    """Greedy continuation of one prompt by re-running the full forward on a fixed-width padded buffer."""
    width = len(prompt) + n
    ids = list(prompt)
    for _ in range(n):
        buf = np.zeros((1, width), np.int32)
        buf[0, :len(ids)] = ids
        ids.append(int(np.argmax(np.asarray(jitted_apply(cfg)(variables, jnp.asarray(buf)).logits)[0, len(ids) - 1])))
    return ids[len(prompt):]


@pytest.mark.parametrize("name", sorted(CASES))
def test_decode_equals_full_forward(name):
    cfg, absorb = _cfg(name), CASES[name][1]
    variables = init_variables(cfg)
    seqs = _sequences(cfg)
    want = np.asarray(jitted_apply(cfg)(variables, seqs).logits)  # causal: later tokens change nothing
    cache = init_cache(cfg, 3, 16, absorb=absorb)
    cache, logits = prefill(cfg, variables, seqs[:, :9], LENGTHS, cache, all_logits=True)
    for b, n in enumerate(LENGTHS):
        np.testing.assert_allclose(logits[b, :n], want[b, :n], rtol=1e-5, atol=1e-5)
    for step in range(STEPS):  # each row continues from its own length
        pos = LENGTHS + step
        cache, logits = decode_step(cfg, variables, cache, seqs[np.arange(3), pos])
        np.testing.assert_array_equal(cache.lengths, pos + 1)
        np.testing.assert_allclose(logits, want[np.arange(3), pos], rtol=1e-5, atol=1e-5)
    prompts = [list(np.asarray(seqs[b, :n])) for b, n in enumerate(LENGTHS)]
    out = generate(cfg, variables, prompts, max_new_tokens=NEW, absorb=absorb)
    for b, p in enumerate(prompts):
        assert list(out.tokens[b]) == _greedy_full_forward(cfg, variables, p, NEW), (name, b)


@pytest.mark.parametrize("name", ["fp8-blockwise", "fp8-per-tensor-delayed"])
def test_fp8_latent_cache_equals_the_fp8_forward(name):
    """The latent (absorbed) cache regroups wkv_b's product; with the recipe's operand views (c_kv cached as
    the FP8 GEMM quantizes it, wkv_b dequantized) it keeps the FP8 forward's numbers, while dropping FP8 moves
    the logits by far more than the tolerance."""
    cfg = _cfg(name)
    variables = init_variables(cfg)
    seqs = _sequences(cfg)
    want = np.asarray(jitted_apply(cfg)(variables, seqs).logits)
    plain = np.asarray(jitted_apply(cfg.replace(fp8="none"))(
        {k: v for k, v in variables.items() if k != "fp8_meta"}, seqs).logits)
    assert np.abs(plain - want).max() > 1e-2
    _, logits = prefill(cfg, variables, seqs[:, :9], LENGTHS, init_cache(cfg, 3, 16, absorb=True), all_logits=True)
    for b, n in enumerate(LENGTHS):
        np.testing.assert_allclose(logits[b, :n], want[b, :n], rtol=1e-5, atol=1e-5)


def test_per_tensor_delayed_decode_needs_its_histories():
    """The delayed recipe's scales come from the trained amax histories (TrainState.variables() carries them):
    decoding without them is an error naming the collection, not a silent change of numerics."""
    cfg = _cfg("fp8-per-tensor-delayed")
    variables = init_variables(cfg)
    bare = {k: v for k, v in variables.items() if k != "fp8_meta"}
    with pytest.raises(ValueError, match="fp8_meta"):
        prefill(cfg, bare, jnp.zeros((3, 9), jnp.int32), LENGTHS, init_cache(cfg, 3, 16, absorb=False))
