"""Expert parallelism on 8 fake CPU devices: forward and gradients of the model with the EP path active
equal the single-device result (float32, max-abs error <= 1e-5 of the max-abs value) on the meshes
data=8, expert=8, data=2 x expert=4 and fsdp=4 x expert=2 (docs/paper.md §4: EP ranks are DP ranks)."""

import json

from tests.conftest import run_with_devices
from tests.layers.moe.ep_helpers import FAST_XLA, SMALL_MOE

CODE = FAST_XLA + """
import json, jax, jax.numpy as jnp, numpy as np, flax.linen as nn
import dsv3_jax
from dsv3_jax import sharding
from tests.conftest import tiny_config
cfg = tiny_config(**SMALL_MOE, mtp_depth=0)  # one MoE layer (MTP + EP: tests/test_multihost.py)
rng = np.random.default_rng(0)
tokens = jnp.asarray(rng.integers(0, cfg.vocab_size, (8, 6)), jnp.int32)
boxed = jax.jit(dsv3_jax.DeepSeekV3(cfg).init)(jax.random.key(0), tokens)
params = nn.unbox(boxed["params"])
router = jax.tree.map(lambda b: jnp.asarray(rng.normal(size=b.shape) * 0.1, jnp.float32), boxed["router"])

from dsv3_jax.layers.moe.ep import make_expert_parallel

def make_loss(c, mesh=None):
    model = dsv3_jax.DeepSeekV3(c, make_expert_parallel(c, mesh))
    def loss(p, x):
        out = model.apply({"params": p, "router": router}, x)
        value = jnp.mean(jax.nn.logsumexp(out.logits, -1))
        return value, (out.logits, out.aux["comm_bytes"])
    return jax.value_and_grad(loss, has_aux=True)

(_, (ref_logits, ref_comm)), ref_grads = jax.jit(make_loss(cfg))(params, tokens)  # one device, no mesh
rel = lambda a, b: float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
results = {"local_comm": float(jnp.sum(ref_comm))}
for name, mesh_cfg, dispatch in [("data8", {"data": 8}, "all_to_all"), ("expert8", {"expert": 8}, "auto"),
                                 ("data2_expert4", {"data": 2, "expert": 4}, "ragged"),
                                 ("fsdp4_expert2", {"fsdp": 4, "expert": 2}, "auto")]:
    mesh = sharding.make_mesh(mesh_cfg)
    p = jax.device_put(params, sharding.tree_shardings(boxed, mesh)["params"])
    x = jax.device_put(tokens, sharding.batch_sharding(mesh))
    fn = make_loss(cfg.replace(ep_dispatch=dispatch), mesh)  # explicit context: no ambient mesh needed
    traced = jax.jit(fn).trace(p, x)
    jaxpr = str(traced.jaxpr)
    (_, (logits, comm)), grads = traced.lower().compile()(p, x)
    w1 = grads["moe_layers"]["moe"]["routed_experts"]["w1"]
    results[name] = dict(logits=rel(logits, ref_logits),
                         grads=max(rel(a, b) for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads))),
                         shard_map="shard_map" in jaxpr, all_to_all=jaxpr.count("all_to_all"),
                         comm=float(jnp.sum(comm)), w1_grad_spec=str(w1.sharding.spec))
print(json.dumps(results))
""".replace("SMALL_MOE", repr(SMALL_MOE))


def test_ep_forward_and_grads_equal_single_device():
    out = json.loads(run_with_devices(CODE, 8).strip().splitlines()[-1])
    assert out["local_comm"] == 0.0  # no mesh: the local path moves nothing
    for name in ("data8", "expert8", "data2_expert4", "fsdp4_expert2"):
        r = out[name]
        assert r["shard_map"] and r["all_to_all"] >= 2, (name, r)  # the EP path ran: dispatch and combine
        assert r["logits"] <= 1e-5 and r["grads"] <= 1e-5, (name, r)
        assert (r["comm"] > 0) == (name != "data8"), (name, r)  # one expert rank: nothing leaves the rank
