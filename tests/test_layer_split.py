"""layer_split.py: split variables decode to the same numbers as stacked ones, and XLA:CPU then reads
every unrolled layer's weights in place (no slice copies in the compiled decoding step); fused routed experts
(w13 = w1 | w3), their per-expert copies and precomputed absorbed MLA weights (W_UK, W_UV) decode to the same
tokens and float32-equal logits."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsv3_jax import param_tree as pt
from dsv3_jax.infer import decode_step, generate, init_cache, join_layers, prefill, split_layers
from dsv3_jax.layer_split import LayerSplit, absorbs_mla, copies_experts, fuses_experts
from dsv3_jax.model import DeepSeekV3
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def model():
    cfg = tiny_config(n_layers=3, n_dense_layers=1, mtp_depth=0)
    variables = DeepSeekV3(cfg).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
    return cfg, nn.unbox({k: variables[k] for k in (pt.PARAMS, pt.ROUTER) if k in variables})


def _dicts_holding(key, tree, path=()):
    """(path, dict) of every dict in a params tree that holds `key`."""
    if not isinstance(tree, dict):
        return []
    here = [(path, tree)] if key in tree else []
    return here + [r for k, v in tree.items() for r in _dicts_holding(key, v, path + (k,))]


def _routed_dicts(tree):
    """(path, routed-experts dict) of every routed-experts module in a params tree."""
    return [(path, d[pt.ROUTED]) for path, d in _dicts_holding(pt.ROUTED, tree)]


def test_split_round_trip(model):
    cfg, variables = model
    split = split_layers(cfg, variables, fuse=False, absorb=False)
    assert isinstance(split, LayerSplit) and split_layers(cfg, split) is split
    n_moe = pt.stack_sizes(cfg)[pt.MOE]
    leaf = jax.tree.leaves(split.tree[pt.PARAMS][pt.MOE], is_leaf=lambda a: isinstance(a, tuple))[0]
    assert isinstance(leaf, tuple) and len(leaf) == n_moe
    joined = join_layers(cfg, split)
    assert jax.tree.structure(joined) == jax.tree.structure(variables)
    for a, b in zip(jax.tree.leaves(joined), jax.tree.leaves(variables)):
        np.testing.assert_array_equal(a, b)
    assert join_layers(cfg, variables) is variables


def test_fused_round_trip(model):
    """Fused (the default on CPU): every routed-experts dict holds w13 = [w1, w3] on the last axis and w2;
    every other leaf comes back unchanged."""
    cfg, variables = model
    assert fuses_experts(cfg)
    joined = join_layers(cfg, split_layers(cfg, variables, absorb=False, per_expert=False))
    want, got = dict(_routed_dicts(variables[pt.PARAMS])), dict(_routed_dicts(joined[pt.PARAMS]))
    assert want.keys() == got.keys() and len(got) >= 1
    for path, routed in got.items():
        assert set(routed) == {pt.FUSED_UP, "w2"}, path
        w13 = np.concatenate([np.asarray(want[path]["w1"]), np.asarray(want[path]["w3"])], axis=-1)
        np.testing.assert_array_equal(routed[pt.FUSED_UP], w13)
        np.testing.assert_array_equal(routed["w2"], want[path]["w2"])
    strip = lambda t: jax.tree_util.tree_map_with_path(  # noqa: E731
        lambda p, a: None if pt.ROUTED in str(p) else a, t)
    for a, b in zip(jax.tree.leaves(strip(joined)), jax.tree.leaves(strip(variables))):
        np.testing.assert_array_equal(a, b)


def test_absorbed_round_trip(model):
    """Absorbed (the default with no FP8 recipe): every MLA dict gains W_UK [.., H, N, C] and W_UV [.., H, C, V],
    wkv_b's columns per head regrouped (checked against numpy indexing of [C, H·(N+V)]); nothing else changes."""
    cfg, variables = model
    assert absorbs_mla(cfg) and not absorbs_mla(cfg.replace(fp8="blockwise"))
    joined = join_layers(cfg, split_layers(cfg, variables, fuse=False))
    want, got = dict(_dicts_holding("wkv_b", variables[pt.PARAMS])), dict(_dicts_holding("wkv_b", joined[pt.PARAMS]))
    assert want.keys() == got.keys() and len(got) >= 2  # the stacks' and the MTP-free model's
    h, n, c, v = cfg.n_heads, cfg.qk_nope_head_dim, cfg.kv_lora_rank, cfg.v_head_dim
    for path, attn in got.items():
        assert set(attn) == set(want[path]) | {pt.ABSORBED_UK, pt.ABSORBED_UV}, path
        wkv_b = np.asarray(want[path]["wkv_b"])  # [L, C, H·(N+V)]
        for layer in range(wkv_b.shape[0]):
            for head in range(h):
                cols = wkv_b[layer][:, head * (n + v):(head + 1) * (n + v)]  # [C, N+V]
                np.testing.assert_array_equal(attn[pt.ABSORBED_UK][layer, head], cols[:, :n].T)
                np.testing.assert_array_equal(attn[pt.ABSORBED_UV][layer, head], cols[:, n:])
        assert attn[pt.ABSORBED_UK].shape[1:] == (h, n, c) and attn[pt.ABSORBED_UV].shape[1:] == (h, c, v)
    strip = lambda t: jax.tree_util.tree_map_with_path(  # noqa: E731
        lambda p, a: None if pt.ABSORBED_UK in str(p) or pt.ABSORBED_UV in str(p) else a, t)
    for a, b in zip(jax.tree.leaves(strip(joined)), jax.tree.leaves(strip(variables))):
        np.testing.assert_array_equal(a, b)


def test_absorbed_weights_refuse_fp8_and_wrong_shapes(model):
    cfg, variables = model
    with pytest.raises(ValueError, match="absorb=True.*fp8='blockwise'"):
        split_layers(cfg.replace(fp8="blockwise"), variables, absorb=True)
    joined = join_layers(cfg, split_layers(cfg, variables, fuse=False))
    bad = jax.tree_util.tree_map_with_path(lambda p, a: a[..., :-1] if pt.ABSORBED_UV in str(p) else a, joined)
    with pytest.raises(ValueError, match=f"attn/{pt.ABSORBED_UV}: expected shape"):
        generate(cfg, bad, [[1, 2, 3]], max_new_tokens=1)


def test_fuse_needs_a_fused_backend(model):
    cfg, variables = model
    dense = cfg.replace(moe_impl="dense")
    assert not fuses_experts(dense) and not fuses_experts(cfg.replace(fp8="blockwise"))
    joined = join_layers(dense, split_layers(dense, variables))
    assert all({"w1", "w3"} <= set(r) for _, r in _routed_dicts(joined[pt.PARAMS]))
    with pytest.raises(ValueError, match="fuse=True.*moe_impl='dense'"):
        split_layers(dense, variables, fuse=True)


def test_fused_weight_of_the_wrong_shape_is_named(model):
    cfg, variables = model
    joined = join_layers(cfg, split_layers(cfg, variables))
    bad = jax.tree_util.tree_map_with_path(
        lambda p, a: a[..., :-1] if pt.FUSED_UP in str(p) else a, joined)
    with pytest.raises(ValueError, match=f"{pt.ROUTED}/{pt.FUSED_UP}.*shape"):
        generate(cfg, bad, [[1, 2, 3]], max_new_tokens=1)


def test_not_unrolled_stacks_stay_stacked(model):
    cfg, variables = model
    split = split_layers(cfg.replace(scan_unroll=1), variables, fuse=False, absorb=False)  # a loop over 2 layers
    moe = lambda v: jax.tree.leaves(v[pt.PARAMS][pt.MOE])  # noqa: E731
    for a, b in zip(moe(split.tree), moe(variables)):
        assert a is b


@pytest.mark.parametrize("fuse,absorb", [(False, False), (True, False), (False, True), (True, True)])
def test_split_decodes_identically(model, fuse, absorb):
    """Split only: bitwise the stacked logits. Fused or absorbed: the same greedy tokens, logits equal to fp32
    rounding."""
    cfg, variables = model
    prompts = [[3, 1, 4, 1, 5], [9, 2, 6]]
    want = generate(cfg, variables, prompts, max_new_tokens=6)
    got = generate(cfg, split_layers(cfg, variables, fuse=fuse, absorb=absorb), prompts, max_new_tokens=6)
    np.testing.assert_array_equal(got.tokens, want.tokens)
    tokens, lengths = np.array([[3, 1, 4, 1], [9, 2, 6, 0]], np.int32), np.array([4, 3], np.int32)
    outs = []
    for v in (variables, split_layers(cfg, variables, fuse=fuse, absorb=absorb)):
        cache, logits = prefill(cfg, v, tokens, lengths, init_cache(cfg, 2, 8))
        _, step = decode_step(cfg, v, cache, jnp.array([7, 8], jnp.int32))
        outs.append((np.asarray(logits), np.asarray(step)))
    for a, b in zip(*outs):
        if fuse or absorb:
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
        else:
            np.testing.assert_array_equal(a, b)


def _slices_of_params(cfg, variables) -> int:
    """Slice / dynamic-slice instructions in the optimized HLO of one decoding step."""
    cache, _ = prefill(cfg, variables, np.ones((2, 4), np.int32), np.array([4, 4], np.int32), init_cache(cfg, 2, 8))
    from dsv3_jax.infer.decode import _decode_step
    hlo = _decode_step.lower(cfg, variables, cache, jnp.array([1, 2], jnp.int32)).compile().as_text()
    return sum(1 for line in hlo.splitlines() if "= f32[" in line and (" slice(" in line or "-slice(" in line)
               and "parameter" not in line.split("(", 1)[0])


def test_split_leaves_no_weight_slices(model):
    cfg, variables = model
    assert _slices_of_params(cfg, split_layers(cfg, variables, fuse=False)) < _slices_of_params(cfg, variables)


def test_per_expert_copies(model):
    """Per-expert copies (the default where the MoE stack unrolls): every fused routed-experts dict also holds
    per_expert/{e}/{w13, w2}, expert e's slices of w13 and w2; not for a scanned stack, nor without the fusion."""
    cfg, variables = model
    assert copies_experts(cfg) and not copies_experts(cfg.replace(scan_unroll=1))
    assert not copies_experts(cfg.replace(moe_impl="dense"))
    joined = join_layers(cfg, split_layers(cfg, variables))
    got = dict(_routed_dicts(joined[pt.PARAMS]))
    assert len(got) >= 1
    for path, routed in got.items():
        copies = routed[pt.PER_EXPERT]
        assert sorted(copies, key=int) == [str(e) for e in range(cfg.n_routed_experts)], path
        for e, w in copies.items():
            np.testing.assert_array_equal(w[pt.FUSED_UP], routed[pt.FUSED_UP][..., int(e), :, :])
            np.testing.assert_array_equal(w["w2"], routed["w2"][..., int(e), :, :])
    scanned = cfg.replace(scan_unroll=1)
    routed = _routed_dicts(join_layers(scanned, split_layers(scanned, variables))[pt.PARAMS])
    assert all(pt.PER_EXPERT not in r for _, r in routed)
    with pytest.raises(ValueError, match="per_expert=True.*fuse=False"):
        split_layers(cfg, variables, fuse=False, per_expert=True)


def test_per_expert_copies_decode_identically(model):
    """A lone token's routed experts run as switches over the copies (layers/moe/block_switch.py): the same
    greedy tokens and float32-equal logits as the stacked weights give, and the compiled step copies no expert
    weights (one conditional per chosen expert, reading its buffer)."""
    cfg, variables = model
    with_copies, without = (split_layers(cfg, variables, per_expert=p) for p in (True, False))
    prompts = [[3, 1, 4, 1, 5]]
    np.testing.assert_array_equal(generate(cfg, with_copies, prompts, max_new_tokens=6).tokens,
                                  generate(cfg, without, prompts, max_new_tokens=6).tokens)
    from dsv3_jax.infer.decode import _decode_step
    steps, hlos = [], []
    for v in (with_copies, without):
        cache, _ = prefill(cfg, v, np.array([[3, 1, 4, 1]], np.int32), np.array([4], np.int32), init_cache(cfg, 1, 8))
        token = jnp.array([7], jnp.int32)
        steps.append(np.asarray(decode_step(cfg, v, cache, token)[1]))
        hlos.append(_decode_step.lower(cfg, v, cache, token).compile().as_text())
    np.testing.assert_allclose(steps[0], steps[1], rtol=1e-5, atol=1e-6)
    # No instruction makes an array of an expert's w13 shape [.., D, 2F] (a copied slice or a gathered block):
    # every branch reads its expert's buffer in place.
    shape = re.compile(rf"= f32\[(\d+,)?{cfg.dim},{2 * cfg.moe_inter_dim}\]")
    made = [line for line in hlos[0].splitlines() if shape.search(line)
            and not re.search(r" (parameter|get-tuple-element|bitcast)\(", line)]
    assert made == []
    n_moe = pt.stack_sizes(cfg)[pt.MOE]
    assert hlos[0].count(" conditional(") == n_moe * cfg.n_activated_experts > hlos[1].count(" conditional(")


def test_per_expert_copy_of_the_wrong_shape_is_named(model):
    cfg, variables = model
    joined = join_layers(cfg, split_layers(cfg, variables))
    bad = jax.tree_util.tree_map_with_path(
        lambda p, a: a[..., :-1] if pt.PER_EXPERT in str(p) and "'w2'" in str(p) else a, joined)
    with pytest.raises(ValueError, match=f"{pt.ROUTED}/{pt.PER_EXPERT}/0/w2: expected shape"):
        generate(cfg, bad, [[1, 2, 3]], max_new_tokens=2)
