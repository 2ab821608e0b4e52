"""Expert parallelism: routed experts split over the mesh's expert axis, tokens moved by all-to-all.

DeepSeek-V3 trains with 64-way EP over 8 nodes; every EP rank is also a data-parallel rank (V3 report §3.2,
docs/paper.md §4), so tokens are split over the batch axes (which include the expert axis) and experts over
the expert axis. Per rank, inside one `jax.shard_map` (ep_exchange.py does the moving):

    sort my n·k assignments by expert  ->  dispatch (ragged_all_to_all | capacity all_to_all)
    ->  grouped SwiGLU GEMM on my E/X experts  ->  combine (the reverse move)  ->  Σ_k g · y

Routing stays outside, in the global view (router.py), so the expert counts that drive the aux-loss-free
bias are global; only the routed-expert FFN runs here.

Nothing here reads an ambient mesh or the platform: the set-up code builds ONE frozen `ExpertParallel`
context (`make_expert_parallel`: mesh, expert axis, batch axes, node count, the resolved exchange, whether the
platform has a native ragged_all_to_all, the local expert backend) and hands it to the model
(`DeepSeekV3(cfg, parallel=ctx)`). With `manual=True` the context says the code already runs inside a
shard_map manual over the expert axis (the pipeline executor's): then the routed experts hold this rank's
E/X experts and the rank body runs directly, with no nested shard_map; the comm bytes returned are those of
this rank's tokens only.
Legend: N tokens (global), n per rank, k experts per token, E experts, X expert ranks, D model dim.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

from dsv3_jax import sharding
from dsv3_jax.layers.moe import dispatch, ep_exchange, ep_payload, node_routing
from dsv3_jax.layers.moe import ep_rounds  # noqa: F401  (registers the "rounds" exchange)

log = logging.getLogger("dsv3_jax")
NATIVE_RAGGED_PLATFORMS = ("gpu", "cuda", "rocm", "tpu")  # jax.lax.ragged_all_to_all is implemented there


@dataclasses.dataclass(frozen=True)
class ExpertParallel:
    """The routed experts' parallel context (frozen, built once at set-up by make_expert_parallel)."""

    mesh: Mesh | None = None  # None: one device, nothing exchanged
    axis: str | None = None  # the expert mesh axis (sharding.expert_axis())
    batch_axes: tuple[str, ...] = ()  # mesh axes tokens are split over (they include `axis`)
    n_ranks: int = 1  # expert axis size X
    n_nodes: int = 1  # nodes the expert axis spans (consecutive blocks of ranks)
    exchange: str = "local"  # "local" or an ep_exchange.EP_EXCHANGES key
    native_collectives: bool = False  # the platform has jax.lax.ragged_all_to_all (else it is emulated)
    local_impl: str = "ragged"  # dispatch.py backend for a rank's own experts: "ragged" or "blocked"
    manual: bool = False  # already inside a shard_map manual over `axis` (pipeline stages)
    # The mesh the model constrains its activations on at layer boundaries (sharding.constrain), given whenever
    # the set-up code has a mesh, expert parallelism or not; None inside a shard_map (nothing to constrain).
    activation_mesh: Mesh | None = None

    def local_experts(self, n_experts: int) -> int:
        """Experts a RoutedExperts module declares: E/X inside a manual shard_map, else all E."""
        return n_experts // self.n_ranks if self.manual else n_experts

    def inside_shard_map(self) -> "ExpertParallel":
        """The same context, for code that runs inside a shard_map manual over the expert axis."""
        return dataclasses.replace(self, manual=True, activation_mesh=None)


def activation_mesh(ctx: ExpertParallel | None) -> Mesh | None:
    """The mesh activations are constrained on (sharding.constrain) under the context `ctx` (None: none)."""
    return None if ctx is None else ctx.activation_mesh


def local_backend(platform: str, fp8: str = "none") -> str:
    """The fastest exact single-device expert path: the grouped GEMM (ragged_dot) on accelerators and for
    FP8 (its grouped FP8 GEMM), the per-block GEMM loop on CPU (XLA:CPU runs ragged_dot densely)."""
    return "ragged" if platform in NATIVE_RAGGED_PLATFORMS or fp8 != "none" else "blocked"


def make_expert_parallel(cfg, mesh: Mesh | None = None, *, platform: str | None = None, n_nodes: int = 0,
                         manual: bool = False) -> ExpertParallel:
    """The context for `cfg` on `mesh`. exchange: cfg.ep_dispatch, with "auto" = ragged_all_to_all where the
    platform has it, else the capacity all_to_all, and no exchange at all when the expert axis has size 1;
    an explicit "ragged"/"all_to_all" runs the exchange even at size 1 (on a one-device mesh if none is given).
    n_nodes: nodes the expert axis spans (0: cfg.ep_nodes or 1). Logs the resolved choice once."""
    platform = platform or jax.default_backend()
    native = platform in NATIVE_RAGGED_PLATFORMS
    local = local_backend(platform, cfg.fp8)
    acts = None if manual else mesh
    if cfg.moe_impl != "ep":
        return ExpertParallel(native_collectives=native, local_impl=local, activation_mesh=acts)
    axis = sharding.expert_axis()
    n_ranks = 1 if mesh is None else dict(mesh.shape).get(axis, 1)
    exchange = ep_exchange.resolve_exchange(cfg.ep_dispatch, n_ranks, native)
    if exchange == "local":
        return ExpertParallel(native_collectives=native, local_impl=local, activation_mesh=acts)
    if mesh is None:
        mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    nodes = n_nodes or cfg.ep_nodes or 1
    node_routing.check_layout(cfg.n_routed_experts, cfg.n_expert_groups, n_ranks, nodes)
    batch = sharding.batch_axes()
    if axis not in batch:
        raise ValueError(f"expert parallelism needs the expert axis {axis!r} among the batch axes {batch}")
    ctx = ExpertParallel(mesh, axis, batch, n_ranks, nodes, exchange, native, local, manual, acts)
    _log_once(ctx)
    return ctx


@functools.cache
def _log_once(ctx: ExpertParallel) -> None:
    log.info("expert parallelism: %s exchange over %d ranks on %d node(s)%s, local experts via %s",
             ctx.exchange, ctx.n_ranks, ctx.n_nodes, "" if ctx.native_collectives or ctx.exchange != "ragged"
             else " (ragged_all_to_all emulated: no native one on this platform)", ctx.local_impl)


def _local(x, weights, experts, w1, w2, w3, dtype, local_impl: str, gmm):
    if local_impl == "ragged":
        return dispatch.routed_experts_ragged(x, weights, experts, w1, w2, w3, dtype, gmm)
    # The blocks (the capacity batch is a single-device decoding form; plans keep the loop's memory shape).
    return dispatch.routed_experts_blocked(x, weights, experts, w1, w2, w3, dtype,
                                           block=dispatch.block_rows(experts.size, w1.shape[0]))


def routed_experts_ep(x, weights, experts, w1, w2, w3, cfg, ctx: ExpertParallel, gmm=None):
    """x [N, D], weights/experts [N, k], w1,w3 [E, D, F], w2 [E, F, D] (E/X experts when ctx.manual) ->
    (Σ_k g · expert(x) [N, D], comm bytes [len(COMM_FIELDS)] float32). gmm: the grouped GEMM (FP8 recipe)."""
    dtype = jnp.dtype(cfg.dtype)
    zeros = jnp.zeros((len(node_routing.COMM_FIELDS),), jnp.float32)
    if ctx.exchange == "local":
        return _local(x, weights, experts, w1, w2, w3, dtype, ctx.local_impl, gmm), zeros
    if w1.shape[0] != ctx.local_experts(cfg.n_routed_experts):
        raise ValueError(f"expert parallelism ({'inside' if ctx.manual else 'outside'} a shard_map over the "
                         f"expert axis of size {ctx.n_ranks}): w1 must hold "
                         f"{ctx.local_experts(cfg.n_routed_experts)} experts, got shape {w1.shape}")
    body = functools.partial(_rank_body, cfg=cfg, ctx=ctx, gmm=gmm)
    if ctx.manual:
        out, copies = body(x, weights, experts, w1, w2, w3)
        return out, _bytes(copies, x.shape[1], cfg)
    _check_tokens(x.shape[0], ctx)

    def summed(*args):  # comm bytes over all ranks (int32 sum: exact counts)
        out, copies = body(*args)
        return out, _bytes(jax.lax.psum(copies, ctx.batch_axes), x.shape[1], cfg)
    rows, w = P(ctx.batch_axes, None), P(ctx.axis, None, None)
    fn = jax.shard_map(summed, mesh=ctx.mesh, in_specs=(rows, rows, rows, w, w, w), out_specs=(rows, P()))
    return fn(x, weights, experts, w1, w2, w3)


def _check_tokens(n_tokens: int, ctx: ExpertParallel) -> None:
    sizes = dict(ctx.mesh.shape)
    shards = math.prod(sizes.get(a, 1) for a in ctx.batch_axes)
    if n_tokens % shards:
        raise ValueError(f"expert parallelism: {n_tokens} tokens (batch x seq) do not split evenly over the "
                         f"{shards} batch shards {[(a, sizes.get(a, 1)) for a in ctx.batch_axes]}")


def _rank_body(x, weights, experts, w1, w2, w3, *, cfg, ctx: ExpertParallel, gmm):
    """One rank: my n tokens' assignments out to the experts' ranks, results back, weighted sum; also my
    tokens' copies (node_routing.token_copies)."""
    dtype = jnp.dtype(cfg.dtype)
    n, k = experts.shape
    e = cfg.n_routed_experts
    el = e // ctx.n_ranks
    with jax.named_scope("dispatch"):  # profiler trace names (V3 report Figure 2)
        order, inverse, counts = dispatch.sort_assignments(experts, e)
        xs = jnp.take(x, order // k, axis=0)  # [M, D]; assignment j of token t sits at t·k + j
        sorted_experts = jnp.take(experts.reshape(-1), order)
    capacity = n * min(k, el)  # provable no-drop bound (ep_exchange.py)
    grouped = ctx.local_impl == "ragged"
    exchange = ep_exchange.EP_EXCHANGES.get(ctx.exchange)
    with jax.named_scope("experts"):  # the all-to-all out, the local experts, the all-to-all back
        ys = exchange(xs, sorted_experts, counts, w1, w2, w3, axis=ctx.axis, n_ranks=ctx.n_ranks,
                      capacity=capacity, dtype=dtype, payload=cfg.ep_payload, combine=cfg.ep_combine,
                      grouped=grouped, native=ctx.native_collectives, gmm=gmm)
    with jax.named_scope("combine"):
        y = jnp.take(ys, inverse, axis=0).reshape(n, k, -1)
        out = jnp.einsum("nkd,nk->nd", y, weights.astype(dtype))
    copies = node_routing.token_copies(experts, jax.lax.axis_index(ctx.axis), e, ctx.n_ranks, ctx.n_nodes)
    return out, copies


def _bytes(copies, dim: int, cfg):
    itemsize = jnp.dtype(cfg.dtype).itemsize
    send = node_routing.payload_bytes(dim, cfg.ep_payload, itemsize)
    back = ep_payload.combine_bytes(dim, cfg.ep_combine, itemsize)
    return node_routing.comm_bytes(copies, send, back)
