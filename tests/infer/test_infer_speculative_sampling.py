"""MTP speculative decoding at DeepSeek-V3's depth D = 1: greedy equals plain greedy; the rejection rule
(accept with min(1, p/q), else resample from norm(max(0, p − q))) emits tokens distributed as p, checked on
toy distributions and end to end on the tiny model against the exact two-token marginal."""

import jax
import jax.numpy as jnp
import numpy as np

from dsv3_jax.infer import acceptance
from dsv3_jax.infer.sampling import SamplingParams, token_probs
from dsv3_jax.infer.speculative import speculative_generate
from tests.conftest import tiny_config
from tests.infer.infer_helpers import bigram_variables, full_forward
from tests.infer.test_infer_speculative import check_speculative_greedy


def chi2_ok(counts, probs, n):
    """Pearson chi-square well inside its null distribution (mean k-1, sd sqrt(2(k-1))): 6 sd."""
    expected = probs * n
    big = expected >= 5  # pool small cells
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    obs, exp = obs[exp > 0], exp[exp > 0]
    stat, dof = float(((obs - exp) ** 2 / exp).sum()), len(obs) - 1
    return stat < dof + 6 * np.sqrt(2 * dof), (stat, dof)


def test_speculative_greedy_equals_plain_greedy_depth1():
    check_speculative_greedy(1)


def test_residual_distribution():
    p = np.array([0.5, 0.3, 0.2, 0.0])
    q = np.array([0.2, 0.5, 0.1, 0.2])
    np.testing.assert_allclose(acceptance.residual(jnp.asarray(p), jnp.asarray(q)), [0.75, 0.0, 0.25, 0.0])
    np.testing.assert_allclose(acceptance.residual(jnp.asarray(p), jnp.asarray(p)), p)  # nothing left: p
    # Exact output law for one draft: sum_x q(x) min(1, p/q) [x = y] + P(reject) residual(y) = p(y).
    accept = np.minimum(q, p)
    law = accept + (1 - accept.sum()) * np.asarray(acceptance.residual(jnp.asarray(p), jnp.asarray(q)))
    np.testing.assert_allclose(law, p, atol=1e-7)


def test_rejection_rule_emits_main_distribution():
    """Two drafts from q_j, main distributions p_1..p_3 (context-free toys): the first emitted token follows
    p_1; given draft 1 accepted, the second follows p_2; given both accepted, the bonus token follows p_3."""
    rng = np.random.default_rng(0)
    v, n = 6, 60000
    p = rng.dirichlet(np.ones(v), size=3)
    p[0, 5] = 0.0
    p[0] /= p[0].sum()
    q = rng.dirichlet(np.ones(v), size=2)
    keys = jax.random.split(jax.random.key(1), 3)
    drafts = jnp.stack([jax.random.categorical(keys[j], jnp.log(jnp.asarray(q[j])), shape=(n,)) for j in
                        range(2)], axis=1)
    a, nxt = jax.jit(acceptance.rejection_accept)(keys[2], jnp.broadcast_to(jnp.asarray(p), (n, 3, v)),
                                                  jnp.broadcast_to(jnp.asarray(q), (n, 2, v)), drafts)
    a, nxt, drafts = np.asarray(a), np.asarray(nxt), np.asarray(drafts)
    first = np.where(a >= 1, drafts[:, 0], nxt)
    ok, info = chi2_ok(np.bincount(first, minlength=v), p[0], n)
    assert ok, info
    sel = a >= 1
    second = np.where(a[sel] >= 2, drafts[sel, 1], nxt[sel])
    ok, info = chi2_ok(np.bincount(second, minlength=v), p[1], sel.sum())
    assert ok, info
    ok, info = chi2_ok(np.bincount(nxt[a == 2], minlength=v), p[2], (a == 2).sum())
    assert ok, info
    assert (first != 5).all()  # p_1(5) = 0: never emitted
    np.testing.assert_allclose(sel.mean(), np.minimum(p[0], q[0]).sum(), atol=0.01)  # P(accept) = Σ min(p, q)


def test_speculative_sampling_matches_exact_two_token_law():
    """Many copies of one prompt: the second generated token (the one drafted by MTP and verified) has the
    marginal Σ_x p(x | prompt) p(y | prompt, x) of plain sampling."""
    cfg = tiny_config(mtp_depth=1)
    variables = bigram_variables(cfg, block_scale=0.5)
    sp = SamplingParams(temperature=0.8, top_k=12)
    prompt, n = [3, 17, 42], 3000
    out, stats = speculative_generate(cfg, variables, [prompt] * n, max_new_tokens=2, sampling=sp, seed=5)
    assert (out.num_tokens == 2).all()
    assert 0.2 < stats.depth_acceptance[0] < 0.95, stats  # both branches of the rule were taken
    v = cfg.vocab_size
    outs = full_forward(cfg, variables, [prompt + [x] for x in range(v)])
    p_first = np.asarray(token_probs(jnp.asarray(outs[0][0][2]), sp), np.float64)
    p_second = np.stack([np.asarray(token_probs(jnp.asarray(o[0][3]), sp), np.float64) for o in outs])
    ok, info = chi2_ok(np.bincount(out.tokens[:, 0], minlength=v), p_first, n)
    assert ok, info
    ok, info = chi2_ok(np.bincount(out.tokens[:, 1], minlength=v), p_first @ p_second, n)
    assert ok, info
