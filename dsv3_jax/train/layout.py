"""The training layout: the train state's shardings and the global batch (DeepSeek-V3: ZeRO-1 data parallelism
with 64-way expert parallelism and 16-way pipeline parallelism, docs/paper.md §4).

Params start from their logical axis names (sharding.LOGICAL_RULES: experts over `expert`, the model dim over
`fsdp`), and then every state leaf is completed so no device keeps a copy it does not need:

    params   ZeRO-3 over `fsdp`: a leaf the rules leave unsplit over fsdp (wq_b, wkv_b: no `embed` dim) is split
             on its largest divisible dim. With a pipeline (mesh pipe > 1) also over pipe and the data-parallel
             axes (data, and expert for non-expert leaves): between steps the fp32 master weights live sharded
             over the whole mesh, and each step gathers a stage's working weights once (the all-gather ZeRO-1
             does after its update) — otherwise every pipeline rank would keep all 61 layers.
    moments  the params' split plus ZeRO-1 over the data-parallel axes (data; expert for non-expert leaves,
             whose replicas the expert ranks are).
    the rest (router biases, step, rng, FP8 histories) replicated; leaves under ZERO_MIN_SIZE values keep
    their rules' layout.

Each process's rows of the batch become one global array. The pipelined step (train/pipeline_step.py) lays
the block stacks out per (rank, slot) for its executor from this layout (GSPMD gathers them).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from dsv3_jax import param_tree as pt
from dsv3_jax import sharding
from dsv3_jax.layer_split import mesh_split, unrolled_stacks
from dsv3_jax.model import DeepSeekV3
from dsv3_jax.train.state import TrainState, join_state, split_state


def _completed(spec: P, shape, add: tuple[str, ...], sizes: dict[str, int]) -> P:
    """`spec` with every mesh axis of `add` it does not use yet put on the largest dim it still divides among
    the dims the rules leave unsplit (the rules' splits, e.g. experts over `expert`, stay as they are)."""
    dims = [() if a is None else (a,) if isinstance(a, str) else tuple(a) for a in tuple(spec)]
    dims += [()] * (len(shape) - len(dims))
    free = [i for i, d in enumerate(dims) if math.prod(sizes.get(a, 1) for a in d) == 1]  # size-1 axes split nothing
    used = {a for d in dims for a in d}
    for axis in add:
        if axis in used or sizes.get(axis, 1) == 1:
            continue
        split = [math.prod(sizes[a] for a in d) for d in dims]
        fits = [i for i in free if shape[i] % (split[i] * sizes[axis]) == 0]
        if fits:
            i = max(fits, key=lambda i: shape[i] // split[i])
            dims[i] += (axis,)
            used.add(axis)
    return P(*[None if not d else d[0] if len(d) == 1 else d for d in dims])


def _leaf_axes(names, pipelined: bool, moment: bool) -> tuple[str, ...]:
    """The mesh axes a state leaf with logical `names` is split over beyond its rules (module docstring)."""
    routed = "expert" in names
    dp = ("data",) if routed else ("data", "expert")
    axes = ("fsdp",) + (("pipe",) + dp if pipelined else ())
    return axes + (dp if moment else ())


# Leaves with fewer values keep their rules' layout: gathering a few KB costs more latency than it saves memory
# (FSDP implementations have the same floor); it also keeps the tiny test models on the layouts they check.
ZERO_MIN_SIZE = 2**16


def _tree_specs(boxed, mesh, pipelined: bool, moment: bool):
    sizes = dict(mesh.shape)

    def one(leaf):
        if not isinstance(leaf, nn.Partitioned):
            return NamedSharding(mesh, P())
        spec = sharding.logical_spec(leaf.names)
        if math.prod(leaf.value.shape) < ZERO_MIN_SIZE:
            return NamedSharding(mesh, spec)
        full = _completed(spec, leaf.value.shape, _leaf_axes(leaf.names, pipelined, moment), sizes)
        return NamedSharding(mesh, full)
    return jax.tree.map(one, boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))


def param_specs(cfg, mesh, seq_len: int = 8):
    """PartitionSpecs of the params tree in the train state (the `params` of state_shardings)."""
    boxed = jax.eval_shape(DeepSeekV3(cfg).init, jax.random.key(0), jnp.zeros((1, seq_len), jnp.int32))
    pipelined = dict(mesh.shape).get(sharding.mesh_axes_for("stage")[0], 1) > 1
    specs = _tree_specs(boxed["params"], mesh, pipelined, moment=False)
    return jax.tree.map(lambda s: s.spec, nn.unbox(specs))


def state_shardings(cfg, optimizer, mesh, seq_len: int) -> TrainState:
    """NamedShardings of every TrainState leaf (module docstring): params and the optimizer moments from their
    logical axis names, completed by ZeRO (optax maps the boxed params, so its moments keep their boxes),
    everything else replicated."""
    model = DeepSeekV3(cfg)
    boxed = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, seq_len), jnp.int32))
    pipelined = dict(mesh.shape).get(sharding.mesh_axes_for("stage")[0], 1) > 1
    params = _tree_specs(boxed["params"], mesh, pipelined, moment=False)
    opt = _tree_specs(jax.eval_shape(optimizer.init, boxed["params"]), mesh, pipelined, moment=True)
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


class StepLayout:
    """The state layout the non-pipelined step runs in (train/state.py): `sharding` (a TrainState of
    NamedShardings), `to_step` (the stacked state, as initialized or restored, into it: donated) and `to_saved`
    (back to stacked, for a checkpoint or a sample). Stacked throughout (both conversions the identity) for a
    pipelined step, with no unrolled stack, or where a stack's layer axis is sharded."""

    def __init__(self, cfg, state_sh: TrainState, pipelined: bool):
        self.split = not pipelined and bool(unrolled_stacks(cfg)) and not _layer_axis_sharded(cfg, state_sh)
        self.sharding = split_state(cfg, state_sh) if self.split else state_sh
        if self.split:
            self._to_step = jax.jit(lambda s: split_state(cfg, s), out_shardings=self.sharding)
            self._to_saved = jax.jit(lambda s: join_state(cfg, s), out_shardings=state_sh)

    def to_step(self, state: TrainState) -> TrainState:
        return self._to_step(state) if self.split else state

    def to_saved(self, state: TrainState) -> TrainState:
        return self._to_saved(state) if self.split else state


def _layer_axis_sharded(cfg, state_sh: TrainState) -> bool:
    """Whether ZeRO put a mesh axis on the layer axis of an unrolled stack's param or moment (then it stays
    stacked: a per-layer array has no such axis)."""
    unrolled = unrolled_stacks(cfg)
    for path, s in jax.tree_util.tree_leaves_with_path((state_sh.params, state_sh.opt_state)):
        if unrolled & set(pt.key_names(path)) and s.spec and mesh_split(s.mesh, s.spec[0]) > 1:
            return True
    return False
