"""Experts -> ranks -> nodes, and the dispatch/combine traffic of a routing (V3 report §3.2.2, §2.1.2).

Layout. The expert axis has X ranks; rank r holds experts [r·E/X, (r+1)·E/X). The ranks form `n_nodes`
"nodes" of X/n_nodes consecutive ranks (a node is what NVLink joins; nodes talk over InfiniBand). Expert
group g (router.limit_groups) is experts [g·E/G, (g+1)·E/G). Groups are ALIGNED with nodes when every node
holds whole groups (G % n_nodes == 0): then a token that keeps M groups reaches at most M nodes, which is
DeepSeek-V3's node-limited routing ("each token is sent to at most M = 4 nodes", V3 report §2.1.2, with one
group per node; docs/paper.md §4).

Traffic model. DeepSeek's dispatch (V3 report §3.2.2; DeepEP) sends a token ONCE to each remote node it
needs, over IB to the rank with its own local index there, and forwards it over NVLink inside the node to
the other ranks holding its experts; combine is the same path reversed. Per token t on rank s:

    cross-node copies = |nodes(t) \\ {node(s)}|
    intra-node copies = |ranks(t) \\ landing ranks|,   landing = s in node(s), rank node·R + s % R elsewhere

(R ranks per node). Node-limited routing bounds the first by M. The XLA exchange in ep.py is
flat instead: every (token, expert) assignment travels on its own, so it also reports the "flat" counts
(assignments to other ranks of the same node / of other nodes), which node limiting does not reduce.
Bytes = copies × payload bytes per token (routing ids/weights and the CPU path's capacity padding are not
counted). Legend: n tokens on this rank, k experts per token, X ranks, E experts, G groups.
"""

from __future__ import annotations

import jax.numpy as jnp

from dsv3_jax.layers.moe import ep_payload

# Columns of the comm-bytes vector an EP MoE layer returns (stats["comm_bytes"] [6], summed over ranks).
COMM_FIELDS = ("dispatch_intra_node", "dispatch_cross_node", "combine_intra_node", "combine_cross_node",
               "flat_dispatch_intra_node", "flat_dispatch_cross_node")


def check_layout(n_experts: int, n_groups: int, n_ranks: int, n_nodes: int) -> None:
    """ValueError, naming the numbers, unless experts split evenly over ranks, ranks over nodes, and (with
    expert groups) every node holds whole groups."""
    if n_experts % n_ranks:
        raise ValueError(f"expert parallelism: n_routed_experts={n_experts} is not divisible by the mesh's "
                         f"expert axis size {n_ranks}")
    if n_nodes < 1 or n_ranks % n_nodes:
        raise ValueError(f"expert parallelism: the expert axis size {n_ranks} is not divisible into "
                         f"ep_nodes={n_nodes} nodes of equal size")
    if n_groups > 1 and n_nodes > 1 and n_groups % n_nodes:
        raise ValueError(f"expert parallelism: n_expert_groups={n_groups} groups are not aligned with "
                         f"{n_nodes} nodes (need n_expert_groups % nodes == 0 so each node holds whole groups "
                         f"and a token that keeps M groups reaches at most M nodes)")


def token_copies(experts, src_rank, n_experts: int, n_ranks: int, n_nodes: int):
    """int32 [4] = (intra-node, cross-node) copies of the two-hop model, then (intra, cross) flat assignment
    copies, for tokens on rank `src_rank` (scalar) routed to experts [n, k]."""
    n = experts.shape[0]
    per_node = n_ranks // n_nodes
    dest = experts // (n_experts // n_ranks)  # [n, k] destination ranks
    hit_rank = jnp.any(dest[:, :, None] == jnp.arange(n_ranks), axis=1)  # [n, X]
    hit_node = jnp.any(hit_rank.reshape(n, n_nodes, per_node), axis=2)  # [n, nodes]
    src_node = src_rank // per_node
    cross = jnp.sum(hit_node & (jnp.arange(n_nodes) != src_node))
    rank_ids = jnp.arange(n_ranks)
    landing = rank_ids % per_node == src_rank % per_node  # the rank an IB copy lands on, in every node
    intra = jnp.sum(hit_rank & ~landing)
    dest_node = dest // per_node
    flat_cross = jnp.sum(dest_node != src_node)
    flat_intra = jnp.sum((dest_node == src_node) & (dest != src_rank))
    return jnp.stack([intra, cross, flat_intra, flat_cross]).astype(jnp.int32)


def payload_bytes(dim: int, payload: str, compute_itemsize: int) -> int:
    """Bytes one token's dispatch payload takes: D values plus per-128 scales (fp32) where quantized."""
    return ep_payload.EP_PAYLOADS.get(payload).token_bytes(dim, compute_itemsize)


def comm_bytes(copies, dispatch_bytes: int, combine_bytes: int):
    """float32 [6] in COMM_FIELDS order from the [4] copy counts and per-token payload sizes."""
    c = copies.astype(jnp.float32)
    return jnp.stack([c[0] * dispatch_bytes, c[1] * dispatch_bytes, c[0] * combine_bytes,
                      c[1] * combine_bytes, c[2] * dispatch_bytes, c[3] * dispatch_bytes])


def comm_metrics(comm) -> dict:
    """{"comm_bytes/<field>": total over layers} from the model's aux["comm_bytes"] [L, 6]."""
    total = jnp.sum(comm, axis=0)
    return {f"comm_bytes/{name}": total[i] for i, name in enumerate(COMM_FIELDS)}
