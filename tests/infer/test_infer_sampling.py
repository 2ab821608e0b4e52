"""Sampling filters against a numpy reference, the sampled distribution, and generate(): greedy equals the
full forward's argmax, stop tokens, max_new_tokens, seeding."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsv3_jax.infer.cache import init_cache
from dsv3_jax.infer.decode import prefill
from dsv3_jax.infer.emit import Emitted
from dsv3_jax.infer.generate import LoopState, generate, pad_prompts, run_steps
from dsv3_jax.infer.sampling import SamplingParams, argmax, sample, token_probs, top_k_mask, top_p_mask
from tests.conftest import tiny_config
from tests.infer.infer_helpers import full_forward, init_variables, prompts

CFG = tiny_config(mtp_depth=0)


def ref_top_k(logits, k):
    if k == 0 or k >= logits.shape[-1]:
        return np.ones_like(logits, bool)
    kth = np.sort(logits, axis=-1)[..., -k][..., None]
    return logits >= kth


def ref_top_p(logits, p):
    out = np.zeros_like(logits, bool)
    for i, row in enumerate(logits):
        probs = np.exp(row - row.max())
        probs /= probs.sum()
        total = 0.0
        for j in sorted(range(len(row)), key=lambda j: (-row[j], j)):
            if total < p:
                out[i, j] = True
            total += probs[j]
    return out


def _logits(seed=0, shape=(6, 17)):
    x = np.random.default_rng(seed).normal(size=shape).astype(np.float32) * 2
    x[0, 3] = x[0, 5] = x[0].max() + 1.0  # a tie at the top
    if shape[0] > 1:
        x[1, :4] = x[1, 4]  # ties at the threshold
    return x


def test_argmax_matches_numpy():
    """Lowest index on ties, the first NaN when a row has one (numpy's and jnp.argmax's rule), ±inf, and any
    number of leading axes."""
    x = _logits(3, (7, 4096))
    x[2, 10] = x[2, 4000] = np.inf
    x[3, :] = -np.inf
    x[4, [7, 9]] = np.nan
    x[5, [5, 6]] = x[5].max() + 3.0
    x[6, 0] = x[6].max() + 1.0
    got = np.asarray(argmax(jnp.asarray(x)))
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, np.argmax(x, axis=-1))
    np.testing.assert_array_equal(got, np.asarray(jnp.argmax(jnp.asarray(x), axis=-1)))
    x3 = _logits(4, (6, 17)).reshape(2, 3, 17)
    np.testing.assert_array_equal(argmax(jnp.asarray(x3)), np.argmax(x3, axis=-1))
    np.testing.assert_array_equal(jax.jit(argmax)(jnp.asarray(x3)), np.argmax(x3, axis=-1))


@pytest.mark.parametrize("k", [0, 1, 2, 5, 16, 17, 40])
def test_top_k_mask_matches_numpy(k):
    x = _logits()
    np.testing.assert_array_equal(top_k_mask(jnp.asarray(x), k), ref_top_k(x, k))


@pytest.mark.parametrize("p", [1e-6, 0.1, 0.5, 0.9, 0.999, 1.0])
def test_top_p_mask_matches_numpy(p):
    x = _logits(1)
    got = np.asarray(top_p_mask(jnp.asarray(x), p))
    np.testing.assert_array_equal(got, ref_top_p(x, p) if p < 1 else np.ones_like(x, bool))
    assert got.sum(-1).min() >= 1  # the most likely token is always kept


def test_token_probs_and_sample_distribution():
    x = _logits(2, (1, 17))
    sp = SamplingParams(temperature=0.7, top_k=6, top_p=0.8)
    scaled = x / 0.7
    keep = ref_top_k(scaled, 6)
    keep &= ref_top_p(np.where(keep, scaled, -np.inf), 0.8)
    want = np.where(keep, np.exp(scaled - scaled.max()), 0.0)
    want /= want.sum()
    np.testing.assert_allclose(token_probs(jnp.asarray(x), sp), want, rtol=1e-5, atol=1e-7)
    n = 20000
    draws = sample(jax.random.key(0), jnp.broadcast_to(jnp.asarray(x), (n, 17)), sp)
    freq = np.bincount(np.asarray(draws), minlength=17) / n
    np.testing.assert_allclose(freq, want[0], atol=4 * np.sqrt(0.25 / n))
    greedy = SamplingParams()
    assert int(sample(None, jnp.asarray(x[0]), greedy)) == int(np.argmax(x[0]))
    np.testing.assert_array_equal(token_probs(jnp.asarray(x[0]), greedy), np.eye(17)[np.argmax(x[0])])


def test_sampling_params_validation():
    for kwargs, field in [(dict(temperature=-1.0), "temperature"), (dict(top_k=-2), "top_k"),
                          (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p")]:
        with pytest.raises(ValueError, match=f"SamplingParams.{field}"):
            SamplingParams(**kwargs)


def test_generate_greedy_matches_full_forward():
    variables = init_variables(CFG)
    ps = prompts(CFG, (5, 1, 9))
    out = generate(CFG, variables, ps, max_new_tokens=6)
    assert out.tokens.shape == (3, 6) and list(out.num_tokens) == [6, 6, 6] and not out.stopped.any()
    seqs = [p + list(out.tokens[b]) for b, p in enumerate(ps)]
    for b, (logits, _) in enumerate(full_forward(CFG, variables, seqs)):
        n = len(ps[b])
        np.testing.assert_array_equal(out.tokens[b], np.argmax(logits[n - 1:n + 5], axis=-1))


def test_stop_tokens_and_streaming():
    variables = init_variables(CFG)
    ps = prompts(CFG, (5, 1, 9))
    free = generate(CFG, variables, ps, max_new_tokens=6)
    stop = int(free.tokens[0, 2])  # row 0 stops at its third token (or earlier if it appeared before)
    streamed = [[] for _ in ps]
    out = generate(CFG, variables, ps, max_new_tokens=6, stop_tokens=[stop], pad_id=60,
                   on_tokens=lambda new: [s.extend(t) for s, t in zip(streamed, new)])
    for b in range(3):
        hits = np.flatnonzero(free.tokens[b] == stop)
        n = int(hits[0]) + 1 if len(hits) else 6
        assert out.num_tokens[b] == n and out.stopped[b] == bool(len(hits))
        np.testing.assert_array_equal(out.tokens[b, :n], free.tokens[b, :n])
        assert (out.tokens[b, n:] == 60).all()
        assert streamed[b] == list(out.sequences()[b])
    assert out.num_tokens[0] <= 3 and out.stopped[0]


def test_sampling_generate_is_seeded_and_bad_inputs():
    variables = init_variables(CFG)
    ps = prompts(CFG, (4, 2))
    sp = SamplingParams(temperature=1.0, top_k=10)
    a = generate(CFG, variables, ps, max_new_tokens=4, sampling=sp, seed=3)
    b = generate(CFG, variables, ps, max_new_tokens=4, sampling=sp, seed=3)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    # The first token is drawn with the second half of split(jax.random.key(seed)), for any int seed (the key
    # keeps its low 32 bits: -1 and 2**32 - 1 are the same seed).
    tokens, lengths = pad_prompts(ps)
    _, logits = prefill(CFG, variables, tokens, lengths, init_cache(CFG, len(ps), tokens.shape[1] + 4))
    for seed in (3, -1, 2**32 - 1, 2**40 + 5):
        want = sample(jax.random.split(jax.random.key(seed))[1], logits, sp)
        got = generate(CFG, variables, ps, max_new_tokens=1, sampling=sp, seed=seed).tokens[:, 0]
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        pad_prompts([[1], []])
    with pytest.raises(ValueError, match="exceeds ModelConfig.max_seq_len=64"):
        generate(CFG, variables, ps, max_new_tokens=60)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(CFG, variables, ps, max_new_tokens=0)


def test_one_new_token_and_streamed_chunks():
    """max_new_tokens=1 is the prefill's argmax alone (the loop runs no step); streaming every 2 steps hands
    the first token over with the first chunk and then at most 2 per call."""
    variables = init_variables(CFG)
    ps = prompts(CFG, (5, 1, 9))
    one = generate(CFG, variables, ps, max_new_tokens=1)
    for b, (logits, _) in enumerate(full_forward(CFG, variables, [list(p) for p in ps])):
        assert one.num_tokens[b] == 1 and one.tokens[b, 0] == np.argmax(logits[len(ps[b]) - 1])
    chunks = []
    out = generate(CFG, variables, ps, max_new_tokens=6, stream_every=2, on_tokens=chunks.append)
    assert [len(c[0]) for c in chunks] == [3, 2, 1]
    assert [sum((c[b] for c in chunks), []) for b in range(3)] == [list(s) for s in out.sequences()]


def test_generation_loop_copies_no_cache():
    """The compiled loop updates the KV cache in place: no copy of a cache buffer per step (a lax.cond around
    the decode made XLA copy the whole cache in and out of it)."""
    variables = init_variables(CFG)
    cache = init_cache(CFG, 2, 16)
    cache, logits = prefill(CFG, variables, np.ones((2, 4), np.int32), np.array([4, 3], np.int32), cache)
    state = LoopState(cache=cache, token=jnp.zeros((2,), jnp.int32), out=Emitted.empty(2, 8, 0),
                      rng=jax.random.key(0))
    hlo = run_steps.lower(CFG, variables, state, 7, SamplingParams(), jnp.asarray([-1], jnp.int32))
    hlo = hlo.compile().as_text()
    shapes = {f"f32[{','.join(map(str, a.shape))}]" for a in jax.tree.leaves(cache.groups)}
    copies = [m for m in re.findall(r"= (f32\[[0-9,]*\])\S* copy\(", hlo) if m in shapes]
    assert shapes and not copies, copies
