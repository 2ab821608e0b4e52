"""The training layout: the mesh of an experiment config, the train state's shardings, the global batch.

DeepSeek-V3 trains with ZeRO-1 data parallelism and 64-way expert parallelism (REFERENCE §4). Here the
`mesh` block of an experiment config (data, fsdp, expert, pipe, tensor; one of them may be -1 = the rest)
becomes a Mesh over all devices of all processes; params and optimizer state are placed by their logical
axis names (sharding.LOGICAL_RULES: experts over `expert`, the model dim over `fsdp` = ZeRO), the router
biases and scalars are replicated, and each process's rows of the batch become one global array.

With a pipeline (mesh pipe > 1) the same shardings hold: the rules never name `pipe` for a state leaf
(`layers` is replicated), so every pipeline rank keeps the fsdp/expert shard of every layer, and the
optimizer update runs on that ZeRO layout outside the executor; train/pipeline_step.py lays the block
stacks out per (rank, slot) for the executor (GSPMD gathers them from this layout).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

import dsv3_jax
from dsv3_jax import sharding
from dsv3_jax.parallel import node_routing
from dsv3_jax.train.state import TrainState


def setup_mesh(mesh_cfg, cfg, batch_size: int, devices=None):
    """(mesh, cfg) for a mesh config block and a ModelConfig, validated: the mesh covers the devices, the
    global batch splits over the batch axes, experts over the expert axis, and expert groups over nodes.
    With cfg.ep_nodes == 0 the node count is read from the mesh (processes along the expert axis)."""
    mesh_cfg = mesh_cfg.to_dict() if hasattr(mesh_cfg, "to_dict") else dict(mesh_cfg)
    mesh = sharding.make_mesh(mesh_cfg, devices)
    sizes = dict(mesh.shape)
    shards = math.prod(sizes[a] for a in sharding.batch_axes())
    if batch_size % shards:
        raise ValueError(f"train.batch_size={batch_size} is not divisible by the {shards} batch shards of the "
                         f"mesh {[(a, sizes[a]) for a in sharding.batch_axes()]}")
    n_ranks = sizes[sharding.expert_axis()]
    if cfg.n_moe_layers and n_ranks > 1:
        nodes = cfg.ep_nodes or node_routing.nodes_of_mesh(
            mesh.devices, sharding.MESH_AXES.index(sharding.expert_axis()))
        node_routing.check_layout(cfg.n_routed_experts, cfg.n_expert_groups, n_ranks, nodes)
        cfg = cfg.replace(ep_nodes=nodes)
    return mesh, cfg


def state_shardings(cfg, optimizer, mesh, seq_len: int) -> TrainState:
    """NamedShardings of every TrainState leaf: params and the optimizer moments by logical axis names
    (optax maps the boxed params, so its moments keep their boxes), everything else replicated."""
    model = dsv3_jax.DeepSeekV3(cfg)
    boxed = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, seq_len), jnp.int32))
    params = sharding.tree_shardings(boxed["params"], mesh)
    opt = sharding.tree_shardings(jax.eval_shape(optimizer.init, boxed["params"]), mesh)
    unbox = lambda t: nn.unbox(t) if t is not None else t
    replicated = NamedSharding(mesh, P())
    router = jax.tree.map(lambda _: replicated, boxed.get("router", {}))
    fp8_meta = jax.tree.map(lambda _: replicated, boxed.get("fp8_meta", {}))  # a few floats per tensor
    return TrainState(step=replicated, params=unbox(params), opt_state=unbox(opt), router=router,
                      rng=replicated, fp8_meta=fp8_meta)


def global_batch(local: dict, mesh) -> dict:
    """This process's rows {name: [b, T]} -> global arrays [b·processes, T] split over the batch axes."""
    out = {}
    for name, rows in local.items():
        rows = np.asarray(rows)
        spec = sharding.batch_sharding(mesh, rows.ndim)
        shape = (rows.shape[0] * jax.process_count(),) + rows.shape[1:]
        out[name] = jax.make_array_from_process_local_data(spec, rows, shape)
    return out
