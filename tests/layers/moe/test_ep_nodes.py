"""Node-limited routing and the traffic counts (V3 report §2.1.2, §3.2.2; layers/moe/node_routing.py).

The counts are checked against an independent per-token Python count of DeepSeek's two-hop dispatch (one
IB copy per remote node, NVLink forwarding inside nodes). On 8 fake devices (expert=8, 4 "nodes" of 2 ranks,
one expert group per node) keeping M=2 of 4 groups must cut the cross-node bytes below unrestricted routing
(M=4) by exactly the predicted amount, with every token reaching at most 2 nodes.
"""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from dsv3_jax.layers.moe import node_routing
from tests.conftest import run_with_devices
from tests.layers.moe.ep_helpers import FAST_XLA


def two_hop_counts(experts, src, n_experts, n_ranks, n_nodes):
    """(intra-node copies, cross-node copies, max nodes per token) counted token by token."""
    per_rank, per_node = n_experts // n_ranks, n_ranks // n_nodes
    intra = cross = widest = 0
    for row, s in zip(np.asarray(experts), np.asarray(src)):
        ranks = {int(e) // per_rank for e in row}
        nodes = {r // per_node for r in ranks}
        landing = {n * per_node + int(s) % per_node for n in nodes}  # own node: s itself
        cross += len(nodes - {int(s) // per_node})
        intra += len(ranks - landing)
        widest = max(widest, len(nodes))
    return intra, cross, widest


@pytest.mark.parametrize("n_ranks,n_nodes", [(8, 4), (8, 1), (4, 2), (2, 2)])
def test_token_copies_match_a_per_token_count(n_ranks, n_nodes):
    rng = np.random.default_rng(n_ranks + n_nodes)
    experts = np.stack([rng.choice(16, 3, replace=False) for _ in range(40)]).astype(np.int32)
    for src in range(n_ranks):
        got = node_routing.token_copies(jnp.asarray(experts), src, 16, n_ranks, n_nodes)
        intra, cross, _ = two_hop_counts(experts, [src] * 40, 16, n_ranks, n_nodes)
        per_rank, per_node = 16 // n_ranks, n_ranks // n_nodes
        dest = experts // per_rank
        flat_cross = int(np.sum(dest // per_node != src // per_node))
        flat_intra = int(np.sum((dest // per_node == src // per_node) & (dest != src)))
        assert got.tolist() == [intra, cross, flat_intra, flat_cross]


def test_payload_bytes():
    assert node_routing.payload_bytes(7168, "compute", 2) == 14336  # bf16
    assert node_routing.payload_bytes(7168, "fp8", 2) == 7168 + 56 * 4  # E4M3 + fp32 scale per 128
    assert node_routing.payload_bytes(200, "logfmt10", 4) == 400 + 2 * 8


CODE = FAST_XLA + """
import json, jax, jax.numpy as jnp, numpy as np
from dsv3_jax import sharding
from dsv3_jax.layers.moe import router
from dsv3_jax.layers.moe.ep import make_expert_parallel
from dsv3_jax.layers.moe.layer import MoE
from tests.conftest import tiny_config
mesh = sharding.make_mesh({"expert": 8})
rng = np.random.default_rng(0)
x = jnp.asarray(rng.normal(size=(8, 16, 32)), jnp.float32)
out = {}
for m in (2, 4):
    cfg = tiny_config(moe_impl="ep", ep_nodes=4, n_limited_groups=m)  # 8 experts, 4 groups, k=3
    variables = MoE(cfg).init(jax.random.key(0), x)
    variables["router"]["bias"] = jnp.asarray(rng.normal(size=8) * 0.1, jnp.float32)
    ep = MoE(cfg, make_expert_parallel(cfg, mesh))
    y, stats = jax.jit(ep.apply)(variables, jax.device_put(x, sharding.batch_sharding(mesh, 3)))
    y_local, _ = jax.jit(MoE(cfg).apply)(variables, x)
    p = variables["params"]
    r = router.route(x.reshape(-1, 32), p["gate"].value, variables["router"]["bias"], score_func="sigmoid",
                     n_groups=4, topk_groups=m, k=3, route_scale=2.5)
    out[m] = dict(comm=np.asarray(stats["comm_bytes"]).tolist(), experts=np.asarray(r.experts).tolist(),
                  err=float(jnp.max(jnp.abs(y - y_local)) / jnp.max(jnp.abs(y_local))))
print(json.dumps(out))
"""


def test_node_limited_routing_cuts_cross_node_bytes_as_predicted():
    out = json.loads(run_with_devices(CODE, 8).strip().splitlines()[-1])
    fields = node_routing.COMM_FIELDS
    token_bytes = 32 * 4  # D=32 float32 values per copy, dispatch and combine
    src = np.arange(128) // 16  # 128 tokens over 8 batch shards: shard i is expert rank i
    predicted = {}
    for m in (2, 4):
        intra, cross, widest = two_hop_counts(out[str(m)]["experts"], src, 8, 8, 4)
        comm = dict(zip(fields, out[str(m)]["comm"]))
        assert comm["dispatch_cross_node"] == cross * token_bytes and comm["combine_cross_node"] == cross * token_bytes
        assert comm["dispatch_intra_node"] == intra * token_bytes
        assert out[str(m)]["err"] <= 1e-5
        predicted[m] = (cross, widest, comm["dispatch_cross_node"])
    assert predicted[2][1] <= 2 < predicted[4][1]  # M=2: no token reaches more than 2 of the 4 nodes
    saved = predicted[4][2] - predicted[2][2]
    assert saved == (predicted[4][0] - predicted[2][0]) * token_bytes > 0
    print(f"cross-node dispatch bytes: M=2 {predicted[2][2]:.0f}, unrestricted {predicted[4][2]:.0f}")
