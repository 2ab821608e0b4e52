"""Expert parallelism: routed experts split over the mesh's expert axis, tokens moved by all-to-all.

DeepSeek-V3 trains with 64-way EP over 8 nodes; every EP rank is also a data-parallel rank (V3 report
§3.2, REFERENCE §4), so tokens are split over the batch axes (which include the expert axis) and experts
over the expert axis. Per rank, inside one `jax.shard_map` (ep_exchange.py does the moving):

    sort my n·k assignments by expert  ->  dispatch (ragged_all_to_all | capacity all_to_all)
    ->  grouped SwiGLU GEMM on my E/X experts  ->  combine (the reverse move)  ->  Σ_k g · y

Routing stays outside, in the global view (router.py), so the expert counts that drive the aux-loss-free
bias are global; only the routed-expert FFN runs here. The model never names a mesh axis: the axes come
from sharding.expert_axis() / batch_axes(), the mesh from the ambient context (jax.set_mesh). Paths
(ModelConfig.ep_dispatch): "auto" = ragged_all_to_all on GPU/TPU, capacity all_to_all on CPU, and the
local single-device path (dispatch.py) when there is no mesh or its expert axis has size 1; "ragged" /
"all_to_all" force the shard_map path even at size 1 (on CPU "ragged" runs an emulation of the collective).
Payloads: ModelConfig.ep_payload / ep_combine (ep_payload.py). Each call also returns the comm bytes of
node_routing.COMM_FIELDS, summed over ranks (zeros on the local path).

Inside a shard_map that is already manual over the expert axis (the pipeline executor's, whose batch axes
include it: pipeline/model_experts.py) the arrays are this rank's: x [n, D] its tokens and w1, w2, w3 its
El = E/X experts. Then the rank body runs directly, with no nested shard_map, and the comm bytes returned are
those of this rank's tokens only (no collective; summing them is the caller's choice).
Legend: N tokens (global), n per rank, k experts per token, E experts, X expert ranks, D model dim.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from dsv3_jax import sharding
from dsv3_jax.layers.moe import dispatch
from dsv3_jax.parallel import ep_exchange, node_routing

NATIVE_RAGGED_BACKENDS = ("gpu", "cuda", "rocm", "tpu")


def _backend() -> str:
    return jax.default_backend()


def expert_mesh():
    """(mesh, expert axis size) of the ambient mesh; (None, 1) without one."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return None, 1
    return mesh, dict(mesh.shape).get(sharding.expert_axis(), 1)


def manual_expert_ranks() -> int:
    """The expert-axis size when running inside a shard_map that is manual over it (the pipeline executor's:
    there every array is this rank's, so the routed experts hold E/X experts), else 1."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty or sharding.expert_axis() not in mesh.manual_axes:
        return 1
    return dict(mesh.shape).get(sharding.expert_axis(), 1)


def choose_path(ep_dispatch: str, n_ranks: int) -> str:
    """"local", "all_to_all" or "ragged" for a ModelConfig.ep_dispatch and expert axis size."""
    if ep_dispatch != "auto":
        return ep_dispatch
    if n_ranks == 1:
        return "local"
    return "ragged" if _backend() in NATIVE_RAGGED_BACKENDS else "all_to_all"


def local_routed_experts(x, weights, experts, w1, w2, w3, dtype):
    """The single-device path: ragged_dot grouped GEMM on accelerators, the blocked path on CPU."""
    fn = dispatch.routed_experts_ragged if _backend() in NATIVE_RAGGED_BACKENDS else \
        dispatch.routed_experts_blocked
    return fn(x, weights, experts, w1, w2, w3, dtype)


def routed_experts_ep(x, weights, experts, w1, w2, w3, cfg):
    """x [N, D], weights/experts [N, k], w1,w3 [E, D, F], w2 [E, F, D] -> (Σ_k g · expert(x) [N, D],
    comm bytes [len(COMM_FIELDS)] float32)."""
    dtype = jnp.dtype(cfg.dtype)
    mesh, n_ranks = expert_mesh()
    path = choose_path(cfg.ep_dispatch, n_ranks)
    if mesh is not None and sharding.expert_axis() in mesh.manual_axes:
        return _manual(x, weights, experts, w1, w2, w3, cfg, path, n_ranks)
    if path == "local":
        y = local_routed_experts(x, weights, experts, w1, w2, w3, dtype)
        return y, jnp.zeros((len(node_routing.COMM_FIELDS),), jnp.float32)
    if mesh is None:  # forced EP path without a mesh: one device, expert axis of size 1
        mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    n_nodes = cfg.ep_nodes or 1
    node_routing.check_layout(cfg.n_routed_experts, cfg.n_expert_groups, n_ranks, n_nodes)
    batch, axis = sharding.batch_axes(), sharding.expert_axis()
    _check_tokens(x.shape[0], mesh, batch, axis)
    body = functools.partial(_rank_body, cfg=cfg, path=path, axis=axis, n_ranks=n_ranks, n_nodes=n_nodes)

    def summed(*args):  # comm bytes over all ranks (int32 sum: exact counts)
        out, copies = body(*args)
        return out, _bytes(jax.lax.psum(copies, batch), x.shape[1], cfg)
    rows, w = P(batch, None), P(axis, None, None)
    fn = jax.shard_map(summed, mesh=mesh, in_specs=(rows, rows, rows, w, w, w), out_specs=(rows, P()))
    return fn(x, weights, experts, w1, w2, w3)


def _manual(x, weights, experts, w1, w2, w3, cfg, path, n_ranks):
    """Already inside a shard_map manual over the expert axis: x [n, D] and w1 [El, D, F] are this rank's."""
    e = cfg.n_routed_experts
    if w1.shape[0] * n_ranks != e:
        raise ValueError(f"expert parallelism inside a shard_map over the expert axis (size {n_ranks}): w1 "
                         f"must hold this rank's n_routed_experts/{n_ranks} = {e // n_ranks} experts; got "
                         f"shape {w1.shape}")
    if path == "local" or n_ranks == 1:   # nothing to exchange on an expert axis of size 1
        y = local_routed_experts(x, weights, experts, w1, w2, w3, jnp.dtype(cfg.dtype))
        return y, jnp.zeros((len(node_routing.COMM_FIELDS),), jnp.float32)
    n_nodes = cfg.ep_nodes or 1
    node_routing.check_layout(e, cfg.n_expert_groups, n_ranks, n_nodes)
    out, copies = _rank_body(x, weights, experts, w1, w2, w3, cfg=cfg, path=path, axis=sharding.expert_axis(),
                             n_ranks=n_ranks, n_nodes=n_nodes)
    return out, _bytes(copies, x.shape[1], cfg)


def _check_tokens(n_tokens: int, mesh, batch, axis) -> int:
    sizes = dict(mesh.shape)
    if axis not in batch:
        raise ValueError(f"expert parallelism needs the expert axis {axis!r} among the batch axes {batch}")
    shards = math.prod(sizes.get(a, 1) for a in batch)
    if n_tokens % shards:
        raise ValueError(f"expert parallelism: {n_tokens} tokens (batch x seq) do not split evenly over the "
                         f"{shards} batch shards {[(a, sizes.get(a, 1)) for a in batch]}")
    return shards


def _rank_body(x, weights, experts, w1, w2, w3, *, cfg, path, axis, n_ranks, n_nodes):
    """One rank: my n tokens' assignments out to the experts' ranks, results back, weighted sum; also my
    tokens' copies (node_routing.token_copies)."""
    dtype = jnp.dtype(cfg.dtype)
    n, k = experts.shape
    e = cfg.n_routed_experts
    el = e // n_ranks
    order, inverse, counts = dispatch.sort_assignments(experts, e)
    xs = jnp.take(x, order // k, axis=0)  # [M, D]; assignment j of token t sits at t·k + j
    sorted_experts = jnp.take(experts.reshape(-1), order)
    capacity = n * min(k, el)  # provable no-drop bound (ep_exchange.py)
    common = dict(axis=axis, n_ranks=n_ranks, dtype=dtype, payload=cfg.ep_payload, combine=cfg.ep_combine)
    if path == "all_to_all":
        ys = ep_exchange.via_all_to_all(xs, sorted_experts, w1, w2, w3, capacity=capacity,
                                        grouped=_backend() in NATIVE_RAGGED_BACKENDS, **common)
    else:
        ys = ep_exchange.via_ragged(xs, counts, w1, w2, w3, recv_rows=n_ranks * capacity,
                                    native=_backend() in NATIVE_RAGGED_BACKENDS, **common)
    y = jnp.take(ys, inverse, axis=0).reshape(n, k, -1)
    out = jnp.einsum("nkd,nk->nd", y, weights.astype(dtype))
    copies = node_routing.token_copies(experts, jax.lax.axis_index(axis), e, n_ranks, n_nodes)
    return out, copies


def _bytes(copies, dim: int, cfg):
    itemsize = jnp.dtype(cfg.dtype).itemsize
    send = node_routing.payload_bytes(dim, cfg.ep_payload, itemsize)
    back = dim * (itemsize if cfg.ep_combine == "compute" else 2)
    return node_routing.comm_bytes(copies, send, back)
