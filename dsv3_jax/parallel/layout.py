"""The device mesh of an experiment config, checked against the model, and the node count of its expert axis.

DeepSeek-V3 trains with ZeRO-1 data parallelism and 64-way expert parallelism (docs/paper.md §4). The `mesh`
block of an experiment config (data, fsdp, expert, pipe, tensor; one of them may be -1 = the rest) becomes a
Mesh over all devices of all processes. The expert-parallel context the model receives is built from that
mesh by layers/moe/ep.make_expert_parallel (train/step.py, infer); the train state's shardings are
train/layout.py's.
"""

from __future__ import annotations

import math

import numpy as np

from dsv3_jax import sharding
from dsv3_jax.layers.moe import node_routing


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
        nodes = cfg.ep_nodes or nodes_of_mesh(
            mesh.devices, sharding.MESH_AXES.index(sharding.expert_axis()))
        node_routing.check_layout(cfg.n_routed_experts, cfg.n_expert_groups, n_ranks, nodes)
        cfg = cfg.replace(ep_nodes=nodes)
    return mesh, cfg


def nodes_of_mesh(devices: np.ndarray, expert_dim: int) -> int:
    """Nodes the expert axis spans in a device array: consecutive runs of one process along the axis
    (checked equal); a single-process mesh is one node."""
    line = np.moveaxis(devices, expert_dim, 0).reshape(devices.shape[expert_dim], -1)[:, 0]
    procs = [d.process_index for d in line]
    runs = 1 + sum(a != b for a, b in zip(procs, procs[1:]))
    size = len(procs) // runs
    if len(procs) % runs or any(procs[i] != procs[i - i % size] for i in range(len(procs))):
        raise ValueError(f"expert axis: processes along it are {procs}; expected equal consecutive blocks "
                         f"(one per node)")
    return runs
