import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsv3_jax.layers import attention
from dsv3_jax.layers.attention_core import causal_mask
from dsv3_jax.layers.baseline_attention import GQA
from dsv3_jax.layers.kv_cache import CacheSlot, cache_mask
from dsv3_jax.layers.mla import MLA
from dsv3_jax.layers.rope import rope_frequencies
from tests import reference as ref
from tests.conftest import tiny_config

B, T = 2, 7


def _inputs(cfg, seed=0):
    x = np.random.default_rng(seed).normal(size=(B, T, cfg.dim)).astype(np.float32)
    idx = jnp.broadcast_to(jnp.arange(T), (B, T))
    return x, idx


def _init(module, x, idx, mask):
    return nn.unbox(module.init(jax.random.key(0), jnp.asarray(x), idx, mask)["params"])


@pytest.mark.parametrize("q_lora_rank", [16, 0])
@pytest.mark.parametrize("yarn", [True, False])
def test_mla_matches_reference(q_lora_rank, yarn):
    cfg = tiny_config(q_lora_rank=q_lora_rank, max_seq_len=64 if yarn else 16)
    x, idx = _inputs(cfg)
    mask = causal_mask(idx, idx)
    params = _init(MLA(cfg), x, idx, mask)
    assert ("wq_a" in params) == bool(q_lora_rank)
    out, cache = MLA(cfg).apply({"params": params}, jnp.asarray(x), idx, mask)
    assert cache is None
    rc = ref.ref_config(cfg)
    for b in range(B):
        np.testing.assert_allclose(out[b], ref.mla(x[b].astype(np.float64), ref.f64(params), rc, np.arange(T)),
                                   rtol=2e-5, atol=2e-5)


def test_mla_segments_and_positions():
    cfg = tiny_config()
    x, idx = _inputs(cfg, 1)
    seg = jnp.asarray([[0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0, 0]])
    pos = jnp.asarray([[0, 1, 2, 0, 1, 2, 3], list(range(T))])  # positions restart per document
    mask = causal_mask(idx, idx, seg, seg)
    params = _init(MLA(cfg), x, idx, mask)
    out, _ = MLA(cfg).apply({"params": params}, jnp.asarray(x), pos, mask)
    rc = ref.ref_config(cfg)
    for b in range(B):
        want = ref.mla(x[b].astype(np.float64), ref.f64(params), rc, np.asarray(pos[b]), np.asarray(seg[b]))
        np.testing.assert_allclose(out[b], want, rtol=2e-5, atol=2e-5)
    # The second document of row 0 equals that document run alone.
    alone, _ = MLA(cfg).apply({"params": params}, jnp.asarray(x[:1, 3:]), jnp.arange(4)[None],
                              causal_mask(jnp.arange(4)[None], jnp.arange(4)[None]))
    np.testing.assert_allclose(out[0, 3:], alone[0], rtol=1e-5, atol=1e-6)


def _cache_slot(cfg, latent: bool, slots: int, layers: int = 2, layer: int = 1):
    shapes = attention.cache_entries(cfg, latent)
    entries = {n: jnp.zeros((layers, B, slots) + sh, jnp.float32) for n, sh in shapes.items()}
    return CacheSlot(entries, jnp.asarray(layer, jnp.int32))


@pytest.mark.parametrize("attention_kind, latent", [("mla", True), ("mla", False), ("mha", False), ("gqa", False)])
@pytest.mark.parametrize("q_lora_rank", [16, 0])
def test_cached_attention_equals_full_sequence(attention_kind, latent, q_lora_rank):
    """The same module with a cache: a prefix, then one token at a time, each written into its layer's slot of
    the stacked cache, gives the full-sequence outputs; other layers' slots stay untouched. A mask over the
    first W slots only (the prefix from an empty cache: W = its length) reads those slots and gives the same."""
    cfg = tiny_config(q_lora_rank=q_lora_rank, attention=attention_kind,
                      n_kv_heads=1 if attention_kind == "gqa" else 0)
    module = MLA(cfg) if attention_kind == "mla" else GQA(cfg)
    x, idx = _inputs(cfg, 2)
    params = _init(module, x, idx, causal_mask(idx, idx))
    full, _ = module.apply({"params": params}, jnp.asarray(x), idx, causal_mask(idx, idx))
    slot = _cache_slot(cfg, latent, slots=T + 2)
    pieces = [(0, 4)] + [(t, t + 1) for t in range(4, T)]
    for lo, hi in pieces:
        pos = idx[:, lo:hi]
        if lo == 0:
            narrow, narrow_slot = module.apply({"params": params}, jnp.asarray(x[:, lo:hi]), pos,
                                               cache_mask(pos, hi), slot)
        out, slot = module.apply({"params": params}, jnp.asarray(x[:, lo:hi]), pos, cache_mask(pos, T + 2), slot)
        np.testing.assert_allclose(out, full[:, lo:hi], rtol=2e-5, atol=2e-5)
        if lo == 0:
            np.testing.assert_allclose(narrow, out, rtol=1e-6, atol=1e-7)
            jax.tree.map(np.testing.assert_array_equal, narrow_slot.entries, slot.entries)
    for arr in slot.entries.values():
        assert not np.any(np.asarray(arr[0])) and not np.any(np.asarray(arr[1, :, T:]))  # layer 0, unused slots
    assert {n: a.shape[1] for n, a in slot.read(3).items()} == {n: 3 for n in slot.entries}
    with pytest.raises(ValueError, match=rf"cache read: n_slots must be in \[1, {T + 2}\], got {T + 3}"):
        slot.read(T + 3)


@pytest.mark.parametrize("attention, n_kv_heads", [("mha", 0), ("gqa", 1)])
def test_baseline_attention_matches_reference(attention, n_kv_heads):
    cfg = tiny_config(attention=attention, n_kv_heads=n_kv_heads)
    x, idx = _inputs(cfg, 3)
    mask = causal_mask(idx, idx)
    params = _init(GQA(cfg), x, idx, mask)
    out, _ = GQA(cfg).apply({"params": params}, jnp.asarray(x), idx, mask)
    freqs = rope_frequencies(cfg.qk_head_dim, cfg.rope_theta, yarn=True, factor=cfg.rope_factor,
                             original_seq_len=cfg.original_seq_len)
    for b in range(B):
        want = ref.gqa(x[b].astype(np.float64), ref.f64(params), cfg.n_heads, cfg.kv_heads,
                       ref.ref_config(cfg)["scale"], freqs, np.arange(T))
        np.testing.assert_allclose(out[b], want, rtol=2e-5, atol=2e-5)
