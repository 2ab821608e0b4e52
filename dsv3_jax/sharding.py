"""Logical axis names -> mesh axes: the ONLY place mesh axis names appear (docs/architecture.md).

Mesh axes: data (pure data parallel), fsdp (ZeRO: params and optimizer state sharded, also a batch axis),
expert (expert parallelism; also a batch axis, as DeepSeek's EP ranks are DP ranks), pipe (pipeline stages),
tensor (tensor parallelism; DeepSeek-V3 uses none, docs/paper.md §4, but the axis exists for research).
"""

from __future__ import annotations

import math
from typing import Mapping

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "expert", "pipe", "tensor")

# Logical name -> mesh axis (or tuple of axes, or None = replicated).
LOGICAL_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp", "expert")),
    ("seq", None),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("q_lora", None),
    ("kv_lora", None),
    ("mlp", "tensor"),
    ("expert", "expert"),
    ("vocab", "tensor"),
    ("layers", None),
    ("stage", "pipe"),
) + (
    # Activations have their own logical names (as MaxText's activation_batch / activation_embed / ...), distinct
    # from the parameters', so a ZeRO-sharded weight dim (embed -> fsdp) never leaks into an activation: without
    # them GSPMD propagates the weights' layout into the activations and replicates to resolve the conflict
    # (docs/paper.md §8). Layers constrain their inputs and outputs with these names (`constrain`).
    ("activation_batch", ("data", "fsdp", "expert")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
    ("activation_kv", None),
)

# The logical names of the activations at layer boundaries (constrain's `names`).
BATCH_SEQ_EMBED = ("activation_batch", "activation_length", "activation_embed")  # hidden states [B, T, D]
TOKENS_EMBED = ("activation_batch", "activation_embed")  # flattened tokens [B·T, D] (MoE layers)
BATCH_SEQ_VOCAB = ("activation_batch", "activation_length", "activation_vocab")  # logits [B, T, V]


def mesh_shape(mesh_cfg: Mapping[str, int], n_devices: int) -> dict[str, int]:
    """Resolve a {axis: size} mapping (one size may be -1 = the rest) against the device count."""
    unknown = sorted(set(mesh_cfg) - set(MESH_AXES))
    if unknown:
        raise ValueError(f"mesh: unknown axis {unknown}; axes are {MESH_AXES}")
    sizes = {a: int(mesh_cfg.get(a, 1)) for a in MESH_AXES}
    free = [a for a, s in sizes.items() if s == -1]
    if len(free) > 1:
        raise ValueError(f"mesh: at most one axis may be -1, got {free}")
    bad = [a for a, s in sizes.items() if s == 0 or s < -1]
    if bad:
        raise ValueError(f"mesh: axis sizes must be positive or -1, got {[(a, sizes[a]) for a in bad]}")
    fixed = math.prod(s for s in sizes.values() if s != -1)
    if free:
        if n_devices % fixed:
            raise ValueError(f"mesh: the fixed axes multiply to {fixed}, which does not divide the "
                             f"{n_devices} devices")
        sizes[free[0]] = n_devices // fixed
    if math.prod(sizes.values()) != n_devices:
        raise ValueError(f"mesh: shape {sizes} has {math.prod(sizes.values())} devices, "
                         f"but {n_devices} are available")
    return sizes


def make_mesh(mesh_cfg: Mapping[str, int] | None = None, devices=None) -> Mesh:
    """A Mesh over all (or the given) devices with axes MESH_AXES, Auto axis types (GSPMD propagation)."""
    devices = jax.devices() if devices is None else list(devices)
    sizes = mesh_shape(mesh_cfg or {"data": -1}, len(devices))
    shape = tuple(sizes[a] for a in MESH_AXES)
    arr = np.asarray(devices).reshape(shape)
    return Mesh(arr, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def logical_spec(names) -> P:
    """PartitionSpec of a tuple of logical names under LOGICAL_RULES."""
    return nn.logical_to_mesh_axes(tuple(names), LOGICAL_RULES)


def divisible_spec(shape, names, mesh: Mesh) -> P:
    """logical_spec(names) for an array of `shape` on `mesh`, keeping of each dim's mesh axes the longest prefix
    whose sizes divide that dim (a batch of 2 on 8 batch shards is split 2 ways, not refused)."""
    sizes = dict(mesh.shape)
    out = []
    for dim, axes in zip(shape, tuple(logical_spec(names)) + (None,) * (len(shape) - len(names))):
        axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        keep, prod = [], 1
        for a in axes:
            if dim % (prod * sizes.get(a, 1)):
                break
            keep.append(a)
            prod *= sizes.get(a, 1)
        out.append(None if not keep else keep[0] if len(keep) == 1 else tuple(keep))
    return P(*out)


def constrain(x, names, mesh: Mesh | None):
    """x laid out by the logical `names` of its dims on `mesh` (a sharding constraint at a layer boundary);
    unchanged without a mesh (one device, or inside a shard_map, where the context carries none)."""
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, divisible_spec(x.shape, names, mesh)))


# Mesh axes a weight is split over between uses only (ZeRO-3: fsdp): a layer gathers them where it multiplies
# the weight (`weight_at_use`), and the backward reduce-scatters the gradient back to the stored layout.
ZERO_AXES = ("fsdp",)


def weight_at_use(w, names, mesh: Mesh | None):
    """Weight w (logical `names`) as its layer multiplies it: its ZeRO_AXES split gathered, its other splits
    (experts over `expert`, heads over `tensor`) kept. Without it GSPMD carries the model-dim split of the
    weights into the activations' gradients and replicates them (docs/paper.md §8). Unchanged without a mesh."""
    if mesh is None:
        return w
    spec = []
    for axes in tuple(logical_spec(names)) + (None,) * (w.ndim - len(names)):
        axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        axes = tuple(a for a in axes if a not in ZERO_AXES)
        spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return jax.lax.with_sharding_constraint(w, NamedSharding(mesh, P(*spec)))


def tree_shardings(boxed_tree, mesh: Mesh):
    """NamedShardings for a (possibly abstract) tree of nn.Partitioned leaves; plain leaves replicate."""
    specs = nn.get_partition_spec(boxed_tree)
    return nn.logical_to_mesh_sharding(specs, mesh, LOGICAL_RULES)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Sharding of a [B, T, ...] batch: B over the batch axes, the rest replicated."""
    return NamedSharding(mesh, logical_spec(("batch",) + ("seq",) + (None,) * (ndim - 2)))


def mesh_axes_for(logical: str) -> tuple[str, ...]:
    """The mesh axes a logical name maps to under LOGICAL_RULES, as a tuple (empty = replicated)."""
    for name, axes in LOGICAL_RULES:
        if name == logical:
            return () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    raise ValueError(f"logical axis {logical!r} has no rule; known: {[r[0] for r in LOGICAL_RULES]}")


def expert_axis() -> str:
    """The one mesh axis routed experts are split over (expert parallelism, layers/moe/ep.py)."""
    (axis,) = mesh_axes_for("expert")
    return axis


def batch_axes() -> tuple[str, ...]:
    """The mesh axes the batch (and so the tokens of an MoE layer) is split over."""
    return mesh_axes_for("batch")


# ----- device-varying types inside jax.shard_map (check_vma) ---------------------------------------------------
# Values computed per device inside shard_map "vary" over the mesh axes they differ along; fresh constants are
# invariant. Mixing the two in lax.cond / lax.switch branches, or in a collective's output buffer, is a type error,
# so such constants are cast to vary like the values they stand beside.

def varying_axes(x) -> frozenset:
    """Mesh axes over which `x` is device-varying (empty outside shard_map). jax 0.10 spells the set
    `manual_axis_type.varying`; later versions `vma`."""
    aval = jax.typeof(x)
    mat = getattr(aval, "manual_axis_type", None)
    if mat is not None:
        return frozenset(mat.varying)
    return frozenset(getattr(aval, "vma", None) or ())


def vary(tree, axes):
    """Cast every leaf of `tree` to vary over all of `axes` (those it already varies over are kept)."""
    def one(a):
        missing = tuple(ax for ax in axes if ax not in varying_axes(a))
        return jax.lax.pcast(a, missing, to="varying") if missing else a
    return jax.tree.map(one, tree)


def vary_like(tree, *refs):
    """`tree` cast to vary over every axis any of `refs` varies over."""
    axes = frozenset().union(*(varying_axes(r) for r in jax.tree.leaves(refs)))
    return vary(tree, tuple(sorted(axes)))

