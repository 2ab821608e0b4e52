"""MTP speculative decoding with draft depth D = 2, greedy: exactly the tokens of plain greedy decoding (mixed
prompt lengths, accepted and rejected drafts, stop tokens), and the MTP drafts equal the full forward's MTP
predictions (so the MTP caches are rolled back and rewritten correctly). D = 1 (DeepSeek-V3's setting) and the
sampling variant: test_infer_speculative_sampling.py."""

import jax
import jax.numpy as jnp
import numpy as np

from dsv3_jax.infer import acceptance
from dsv3_jax.infer.cache import init_cache
from dsv3_jax.infer.generate import generate, pad_prompts
from dsv3_jax.infer.sampling import SamplingParams
from dsv3_jax.infer.speculative import spec_prefill, spec_round, speculative_generate
from tests.conftest import tiny_config
from tests.infer.infer_helpers import bigram_variables, full_forward, prompts

LENGTHS, MAX_NEW = (5, 1, 9), 20


def check_speculative_greedy(depth):
    """Speculative greedy == plain greedy on the bigram-dominated model; returns the stats."""
    cfg = tiny_config(mtp_depth=depth)
    variables = bigram_variables(cfg, block_scale=0.5)
    ps = prompts(cfg, LENGTHS)
    plain = generate(cfg, variables, ps, max_new_tokens=MAX_NEW)
    streamed = [[] for _ in ps]
    spec, stats = speculative_generate(cfg, variables, ps, max_new_tokens=MAX_NEW,
                                       on_tokens=lambda new: [s.extend(t) for s, t in zip(streamed, new)])
    np.testing.assert_array_equal(spec.tokens, plain.tokens)
    np.testing.assert_array_equal(spec.num_tokens, plain.num_tokens)
    assert streamed == [list(s) for s in spec.sequences()]
    # Both accepted and rejected drafts happened, so cache rollback was exercised.
    assert 0.2 < stats.acceptance_rate < 0.9, stats
    assert 1 < stats.tokens_per_step < depth + 1
    assert stats.rounds * stats.tokens_per_step + len(ps) >= spec.num_tokens.sum()
    return stats


def test_speculative_greedy_equals_plain_greedy_depth2():
    stats = check_speculative_greedy(2)
    assert 0 < stats.accepted[1] < stats.accepted[0]  # second drafts accepted only after first ones


def test_speculative_stops_like_plain():
    cfg = tiny_config(mtp_depth=2)
    variables = bigram_variables(cfg, block_scale=0.5)
    ps = prompts(cfg, LENGTHS)
    free = generate(cfg, variables, ps, max_new_tokens=MAX_NEW)
    stop = [int(free.tokens[0, 4]), int(free.tokens[2, 7])]
    plain = generate(cfg, variables, ps, max_new_tokens=MAX_NEW, stop_tokens=stop)
    spec, _ = speculative_generate(cfg, variables, ps, max_new_tokens=MAX_NEW, stop_tokens=stop)
    np.testing.assert_array_equal(spec.tokens, plain.tokens)
    np.testing.assert_array_equal(spec.stopped, plain.stopped)
    assert spec.stopped[0] and spec.stopped[2]


def test_drafts_equal_full_forward_mtp_predictions():
    cfg = tiny_config(mtp_depth=2)
    variables = bigram_variables(cfg, block_scale=0.5)
    ps = prompts(cfg, LENGTHS)
    tokens, lengths = pad_prompts(ps)
    max_len = tokens.shape[1] + MAX_NEW + 3  # as speculative_generate sizes it (compiled shapes reused)
    state = spec_prefill(cfg, variables, jnp.asarray(tokens), jnp.asarray(lengths), init_cache(cfg, 3, max_len),
                         init_cache(cfg, 3, max_len, layers={"mtp": 2}).groups["mtp"], SamplingParams(),
                         jax.random.key(0))
    seqs = [list(p) + [int(t)] for p, t in zip(ps, np.asarray(state.pending))]
    records = []
    for _ in range(4):
        records.append((np.asarray(state.cache.lengths), np.asarray(state.drafts)))
        state, emitted, a = spec_round(cfg, variables, state, SamplingParams(), jax.random.key(1))
        for b in range(3):
            seqs[b] += [int(t) for t in np.asarray(emitted)[b, :int(a[b]) + 1]]
    outs = full_forward(cfg, variables, seqs)
    checked_depth2 = 0
    for n, drafts in records:
        for b in range(3):
            mtp = outs[b][1]  # [D, T, V]; depth k at position n-1 predicts t_{n+k}
            assert drafts[b, 0] == np.argmax(mtp[0, n[b] - 1])
            if drafts[b, 0] == seqs[b][n[b] + 1]:  # depth 2 read a correct draft: it must match too
                assert drafts[b, 1] == np.argmax(mtp[1, n[b] - 1])
                checked_depth2 += 1
    assert checked_depth2 >= 3


def test_greedy_accept_rule():
    logits = np.full((3, 3, 5), -1.0, np.float32)  # [B, D+1, V]
    best = np.array([[1, 2, 3], [1, 4, 0], [2, 2, 2]])
    np.put_along_axis(logits, best[..., None], 1.0, axis=-1)
    drafts = np.array([[1, 2], [1, 3], [0, 2]])
    a, nxt = acceptance.greedy_accept(jnp.asarray(logits), jnp.asarray(drafts))
    np.testing.assert_array_equal(a, [2, 1, 0])
    np.testing.assert_array_equal(nxt, [3, 4, 2])
