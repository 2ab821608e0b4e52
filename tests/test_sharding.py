import pytest

from dsv3_jax import sharding
from tests.conftest import run_with_devices

SHARDED_INIT = """
import jax, jax.numpy as jnp, numpy as np, flax.linen as nn
import dsv3_jax
from dsv3_jax import sharding
from tests.conftest import tiny_config
cfg = tiny_config()
model = dsv3_jax.DeepSeekV3(cfg)
tokens = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (8, 6)), jnp.int32)
key = jax.random.key(0)
ref_vars = jax.jit(model.init)(key, tokens)
ref_logits = jax.jit(model.apply)(ref_vars, tokens).logits
for mesh_cfg in ({"data": 1}, {"data": 2, "expert": 4}, {"fsdp": 2, "expert": 4}):
    devices = jax.devices()[:1] if mesh_cfg == {"data": 1} else jax.devices()
    mesh = sharding.make_mesh(mesh_cfg, devices)
    abstract = jax.eval_shape(model.init, key, tokens)
    shardings = sharding.tree_shardings(abstract, mesh)
    variables = jax.jit(model.init, out_shardings=shardings)(key, tokens)
    w1 = variables["params"]["moe_layers"]["moe"]["routed_experts"]["w1"].value
    emb = variables["params"]["embed"]["embedding"].value
    print(mesh_cfg, "w1", tuple(w1.sharding.spec), w1.addressable_shards[0].data.shape,
          "emb", tuple(emb.sharding.spec), emb.addressable_shards[0].data.shape)
    x = jax.device_put(tokens, sharding.batch_sharding(mesh))
    logits = jax.jit(model.apply)(variables, x).logits
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(nn.unbox(variables)), jax.tree.leaves(nn.unbox(ref_vars))):
        np.testing.assert_array_equal(a, b)
print("OK")
"""


def test_param_shardings_on_fake_devices(tiny_cfg):
    out = run_with_devices(SHARDED_INIT, 8)
    lines = out.strip().splitlines()
    assert lines[-1] == "OK"
    e, d, f = tiny_cfg.n_routed_experts, tiny_cfg.dim, tiny_cfg.moe_inter_dim
    layers = tiny_cfg.n_moe_layers
    # 1 device: everything whole.
    assert f"w1 (None, 'expert', 'fsdp', 'tensor') ({layers}, {e}, {d}, {f})" in lines[0]
    # data=2 x expert=4: experts split 4 ways, embedding replicated over data.
    assert f"({layers}, {e // 4}, {d}, {f})" in lines[1]
    assert f"emb ('tensor', 'fsdp') ({tiny_cfg.vocab_size}, {d})" in lines[1]
    # fsdp=2 x expert=4 (ZeRO): the model dim of every weight is split over fsdp.
    assert f"({layers}, {e // 4}, {d // 2}, {f})" in lines[2]
    assert f"({tiny_cfg.vocab_size}, {d // 2})" in lines[2]


def test_mesh_shape_errors_name_numbers():
    assert sharding.mesh_shape({"data": -1, "expert": 4}, 8)["data"] == 2
    with pytest.raises(ValueError, match="6 devices, but 8"):
        sharding.mesh_shape({"data": 3, "expert": 2}, 8)
    with pytest.raises(ValueError, match="does not divide"):
        sharding.mesh_shape({"data": -1, "expert": 3}, 8)
    with pytest.raises(ValueError, match="unknown axis"):
        sharding.mesh_shape({"model": 2}, 2)


def test_logical_rules_cover_every_param_axis(tiny_cfg):
    import jax
    import jax.numpy as jnp
    import flax.linen as nn
    import dsv3_jax
    names = {r[0] for r in sharding.LOGICAL_RULES}
    abstract = jax.eval_shape(dsv3_jax.DeepSeekV3(tiny_cfg).init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    boxed = [x for x in jax.tree.leaves(abstract, is_leaf=lambda x: isinstance(x, nn.Partitioned))
             if isinstance(x, nn.Partitioned)]
    assert boxed
    for leaf in boxed:
        assert set(n for n in leaf.names if n is not None) <= names, leaf.names
