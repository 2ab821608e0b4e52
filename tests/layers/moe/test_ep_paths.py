"""Both EP exchanges on fake CPU devices against the dense per-expert reference (dispatch.py), in the
worst case for the capacity (every assignment of every rank to one rank: nothing may be dropped); the
quantized payloads (FP8 1x128 E4M3 with power-of-2 scales, LogFMT-8/10) and the BF16 combine; errors."""

import json

from tests.conftest import run_with_devices
from tests.layers.moe.ep_helpers import FAST_XLA

CODE = FAST_XLA + """
import json, jax, jax.numpy as jnp, numpy as np
from dsv3_jax import sharding
from dsv3_jax.layers.moe import dispatch
from dsv3_jax.layers.moe.ep import make_expert_parallel, routed_experts_ep
from tests.conftest import tiny_config
rng = np.random.default_rng(0)
n, k, e, d, f = 16, 3, 8, 32, 16
x = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
w = jnp.asarray(rng.uniform(0.1, 1.0, size=(n, k)), jnp.float32)
w1, w3 = (jnp.asarray(rng.normal(size=(e, d, f)) * 0.3, jnp.float32) for _ in range(2))
w2 = jnp.asarray(rng.normal(size=(e, f, d)) * 0.3, jnp.float32)
rel = lambda a, b: float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))

def loss_fn(cfg):
    if cfg is None:
        f_ = lambda x, w, ex, w1: dispatch.routed_experts_dense(x, w, ex, w1, w2, w3, jnp.float32)
    else:
        ctx = make_expert_parallel(cfg, MESH[0])
        f_ = lambda x, w, ex, w1: routed_experts_ep(x, w, ex, w1, w2, w3, cfg, ctx)[0]
    def loss(x, w, ex, w1):
        y = f_(x, w, ex, w1)
        return jnp.sum(jnp.sin(y)), y
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 3), has_aux=True))

MESH = [None]  # the mesh loss_fn builds its expert-parallel context for (explicit: no ambient mesh)

def run(cfg, ex, mesh):
    MESH[0] = mesh
    (_, y), g = loss_fn(cfg)(jax.device_put(x, sharding.batch_sharding(mesh)), w, ex, w1)
    return y, g

out = {}
# Worst cases: expert=2 (4 local experts >= k): every token to experts 0,1,2 on rank 0 (capacity n*k full);
# expert=4 (2 local experts < k): every token to experts 0,1 on rank 0 plus one other (capacity n*2 full).
worst = {2: np.tile([0, 1, 2], (n, 1)), 4: np.stack([[0, 1, 2 + i % 6] for i in range(n)])}
for ranks, ex in worst.items():
    ex = jnp.asarray(ex, jnp.int32)
    (_, y_ref), g_ref = loss_fn(None)(x, w, ex, w1)
    mesh = sharding.make_mesh({"data": 4 // ranks * 2, "expert": ranks})
    for path in ("all_to_all", "ragged"):
        cfg = tiny_config(moe_impl="ep", ep_dispatch=path, ep_nodes=1)
        y, g = run(cfg, ex, mesh)
        out[f"worst_x{ranks}_{path}"] = [rel(y, y_ref)] + [rel(a, b) for a, b in zip(g, g_ref)]
# Payload formats on expert=4 with random routing: the quantized dispatch must equal the dense reference
# applied to the rounded tokens (values, d/dx straight through, d/dw1), here rounded independently.
def e4m3_pow2(x):  # one 1x128 tile per row (D=32): s = 2^ceil(log2(amax/448)), x ~ e4m3(x/s)·s
    s = jnp.exp2(jnp.ceil(jnp.log2(jnp.maximum(jnp.max(jnp.abs(x), -1, keepdims=True), 1e-4) / 448)))
    return (x / s).astype(jnp.float8_e4m3fn).astype(jnp.float32) * s
from dsv3_jax.quant.logfmt import logfmt_roundtrip
ex = jnp.asarray(np.stack([rng.choice(e, k, replace=False) for _ in range(n)]), jnp.int32)
mesh = sharding.make_mesh({"data": 2, "expert": 4})
for name, kw, rounded in [("fp8", dict(ep_payload="fp8"), e4m3_pow2(x)),
                          ("logfmt10", dict(ep_payload="logfmt10", ep_dispatch="all_to_all"),
                           logfmt_roundtrip(x, 10))]:
    (_, y_ref), g_ref = loss_fn(None)(rounded, w, ex, w1)
    y, g = run(tiny_config(moe_impl="ep", ep_dispatch=kw.pop("ep_dispatch", "ragged"), **kw), ex, mesh)
    out[name] = [rel(y, y_ref), rel(g[0], g_ref[0]), rel(g[2], g_ref[2]), float(jnp.max(jnp.abs(rounded - x)))]
(_, y_ref), _ = loss_fn(None)(x, w, ex, w1)
y, _ = run(tiny_config(moe_impl="ep", ep_dispatch="ragged", ep_combine="bfloat16"), ex, mesh)
out["bf16_combine"] = rel(y, y_ref)
errors = []
for cfg, xs in [(tiny_config(moe_impl="ep", ep_dispatch="ragged"), x[:6]),
                (tiny_config(moe_impl="ep", n_routed_experts=6, n_expert_groups=1, n_limited_groups=1), x)]:
    try:
        ctx = make_expert_parallel(cfg, mesh)
        jax.jit(lambda xs: routed_experts_ep(xs, w[:len(xs)], ex[:len(xs)] % cfg.n_routed_experts,
                                             w1[:cfg.n_routed_experts], w2[:cfg.n_routed_experts],
                                             w3[:cfg.n_routed_experts], cfg, ctx))(xs)
    except ValueError as err:
        errors.append(str(err))
from dsv3_jax.parallel import layout
for mesh_cfg, cfg, batch in [({"data": 8}, tiny_config(), 12), ({"expert": 8}, tiny_config(n_routed_experts=12), 8),
                             ({"expert": 8}, tiny_config(ep_nodes=8), 8)]:
    try:
        layout.setup_mesh(mesh_cfg, cfg, batch)
    except ValueError as err:
        errors.append(str(err))
out["errors"] = errors
print(json.dumps(out))
"""


def test_paths_payloads_and_errors():
    out = json.loads(run_with_devices(CODE, 8).strip().splitlines()[-1])
    print(json.dumps(out, indent=1))
    for ranks in (2, 4):
        for path in ("all_to_all", "ragged"):
            errs = out[f"worst_x{ranks}_{path}"]  # output, d/dx, d/dweights, d/dw1: nothing dropped
            assert max(errs) <= 1e-5, (ranks, path, errs)
    for name in ("fp8", "logfmt10"):
        assert max(out[name][:3]) <= 1e-5 and out[name][3] > 0, (name, out[name])  # rounded, then exact
    assert 1e-5 < out["bf16_combine"] < 1e-2  # expert outputs travel back in bfloat16
    assert "6 tokens" in out["errors"][0] and "8 batch shards" in out["errors"][0]
    assert "n_routed_experts=6" in out["errors"][1] and "expert axis size 4" in out["errors"][1]
    assert "batch_size=12 is not divisible by the 8 batch shards" in out["errors"][2]
    assert "n_routed_experts=12 is not divisible by the mesh's expert axis size 8" in out["errors"][3]
    assert "n_expert_groups=4 groups are not aligned with 8 nodes" in out["errors"][4]
