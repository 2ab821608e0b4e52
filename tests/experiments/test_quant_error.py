import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dsv3_jax
from experiments import quant_error as qe
from tests.conftest import tiny_config

B, T = 2, 16


@pytest.fixture(scope="module")
def model():
    """A random 1 dense + 1 MoE layer model (every captured kind, the smallest compile)."""
    cfg = qe.measurement_config(tiny_config(n_layers=2, mtp_depth=0))
    tokens = jax.random.randint(jax.random.key(1), (B, T), 0, cfg.vocab_size)
    variables = nn.unbox(jax.jit(dsv3_jax.DeepSeekV3(cfg).init)(jax.random.key(0), tokens))
    return cfg, variables, tokens


def _rows(a, layer):
    return a.reshape(-1, B * T, *a.shape[1:])[layer]


def test_captured_activations_rebuild_the_models_hidden_state(model):
    """x_final - embed = Σ_layers attn_out·wo + ffn(...) rebuilt from the captured Linear inputs alone."""
    cfg, variables, tokens = model
    acts, hidden = jax.jit(qe.capture, static_argnums=0)(cfg, variables, tokens)
    assert set(acts) == set(qe.KINDS)
    out = jax.jit(dsv3_jax.DeepSeekV3(cfg).apply)(variables, tokens)
    np.testing.assert_allclose(hidden, out.hidden, atol=1e-5)

    p = variables["params"]
    delta = jnp.zeros((B * T, cfg.dim))
    for stack, moe, n in (("dense_layers", False, cfg.n_dense_layers), ("moe_layers", True, cfg.n_moe_layers)):
        for i in range(n):
            lp = jax.tree.map(lambda a: a[i], p[stack])
            j = i + (cfg.n_dense_layers if moe else 0)  # row block of this layer in the attention kinds
            delta += _rows(acts["attn_out"], j) @ lp["attn"]["wo"]
            if not moe:
                delta += _rows(acts["dense_swiglu"], i) @ lp["mlp"]["w2"]
                continue
            m = lp["moe"]
            bias = variables["router"][stack]["moe"]["bias"][i]
            r = dsv3_jax.layers.moe.router.route(
                _rows(acts["moe_dispatch"], i), m["gate"], bias, score_func=cfg.score_func,
                n_groups=cfg.n_expert_groups, topk_groups=cfg.n_limited_groups, k=cfg.n_activated_experts,
                route_scale=cfg.route_scale)
            hid = acts["routed_swiglu"].reshape(cfg.n_moe_layers, B * T, cfg.n_activated_experts, -1)[i]
            routed = jnp.einsum("nkf,nkfd->nkd", hid, m["routed_experts"]["w2"][r.experts])
            delta += jnp.einsum("nkd,nk->nd", routed, r.weights)
            delta += _rows(acts["shared_swiglu"], i) @ m["shared_experts"]["w2"]
    embed = p["embed"]["embedding"][tokens].reshape(B * T, -1)
    np.testing.assert_allclose(embed + delta, hidden.reshape(B * T, -1), atol=1e-4)


def test_error_table_has_every_format_and_bf16_beats_e4m3(model, tmp_path):
    cfg, variables, tokens = model
    results = qe.measure(cfg, variables, [tokens, tokens[::-1]])
    assert list(results) == list(qe.KINDS)
    for kind, fs in results.items():
        assert list(fs) == list(qe.FORMATS), kind
        for f, m in fs.items():
            assert all(math.isfinite(v) and v >= 0 for v in m.values()), (kind, f, m)
        assert fs["BF16"]["rel_l2"] < fs["E4M3 1x128"]["rel_l2"], kind
        assert fs["LogFMT-10"]["rel_l2"] < fs["LogFMT-8"]["rel_l2"], kind
    table = qe.markdown_tables(results)
    assert all(f in table for f in qe.FORMATS) and all(f"| {k} |" in table for k in qe.KINDS)
    qe.plot_errors(results, str(tmp_path / "q.png"))
    assert (tmp_path / "q.png").stat().st_size > 1000


def test_error_sums_per_segment():
    x = jnp.array([[1.0, -2.0, 0.0, 4.0], [1.0, 1.0, 1.0, 1.0]])
    s = qe.error_sums(x, x, np.array([0, 1]), 2)
    assert s["err2"].tolist() == [0, 0] and s["max_rel"].tolist() == [0, 0] and s["nonzero"].tolist() == [3, 4]
    s = qe.error_sums(x, x.at[0, 0].set(0.0).at[1, 1].set(1.5), np.array([0, 1]), 2)
    assert s["max_rel"].tolist() == [1.0, 0.5] and s["flushed"].tolist() == [1, 0]
    assert s["err2"].tolist() == [1.0, 0.25] and s["ref2"].tolist() == [21.0, 4.0]
