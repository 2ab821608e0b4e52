"""Run a pipeline schedule (1F1B, ZB1P, DualPipe, DualPipeV) inside ONE jitted `jax.shard_map`.

The model is given generically (model_stages.py plugs DeepSeekV3 in; nothing here knows about it):

    first_fn(shared, inputs_m) -> x          on stage 0 (e.g. the embedding); default: x = inputs_m
    stage_fn(stage_params, x) -> y           every stage; y has x's shape and dtype (e.g. a group of blocks)
    loss_fn(shared, y_last, targets_m) -> l  scalar, after the last stage (e.g. norm, head, MTP, loss)

With `aux=True` the stage and loss functions take non-trainable constants and return auxiliary outputs
(stage_math.py): stage_fn(params, consts, x) -> (y, aux_loss, stats) and
loss_fn(shared, shared_consts, y, targets_m) -> (loss, metrics, stats); the call then takes
`consts=(stage_consts, shared_consts)`. aux_loss is part of the differentiated loss (the MoE balance loss),
stats are summed over micro-batches (expert counts for the aux-loss-free bias update, V3 report §2.1.2).

`stage_params` is a pytree whose leaves have a leading axis of num_stages (stage s uses leaf[s]); `shared`
is a replicated pytree used by first_fn and loss_fn (may be {}); `inputs` and `targets` are pytrees with a
leading micro-batch axis of size schedule.chunks. The pipeline returns the mean loss over micro-batches and
its gradients with respect to stage_params and shared, equal to `jax.value_and_grad` of the unpipelined
composition (program.py runs the ticks; plan.py builds the static int32 table [rank, tick, column]).

Layouts. `pipeline(stage_params, ...)` takes stages in model order: DualPipe's second copies and DualPipeV's
V are gathered into (rank, slot) order through a replicated copy. `pipeline.ranked(slot_params, ...)` takes
parameters already laid out per rank: leaves [num_ranks * num_slots, ...] with row r*num_slots+k holding
stage `pipeline.rows[r*num_slots+k]` (DualPipe: stages r and PP-1-r on rank r, V3 report §3.2.1), sharded
over the pipeline axis with no gather; its gradients and stage stats come back in the same layout, both
DualPipe copies holding the full gradient.

Data parallelism: `batch_axes` (mesh axes) shard axis 1 of every inputs/targets leaf (the batch inside a
micro-batch); each data shard runs the same schedule and losses, gradients and stats are SUMMED over the
shards (so normalize per-shard contributions by the global count, as model_stages.py does).

Sharded parameters: `param_axes(kind, keypath) -> tuple` ("stage": the mesh axes of a stage leaf's dims
after the row axis; "shared": of a shared leaf's dims; () = replicated) splits leaves over batch axes inside
the shard_map, e.g. routed experts over the expert axis (model_experts.py). The functions must use such a
leaf through collectives over its axes (an all_to_all of the tokens), so that a rank's backward already
gathers every token of the axis group into its shard's gradient: that gradient is summed over the OTHER
batch axes only, and comes back in the same layout.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from dsv3_jax.parallel.pipeline.ops import Schedule
from dsv3_jax.parallel.pipeline.plan import TickPlan, build_plan
from dsv3_jax.parallel.pipeline.program import make_program

RESIDUAL_MODES = ("recompute", "store")


class PipelineOutput(NamedTuple):
    loss: jax.Array            # mean over micro-batches (including the stages' aux losses)
    stage_grads: Any           # like stage_params: [num_stages, ...] (ranked: [num_ranks*num_slots, ...])
    shared_grads: Any          # like shared
    busy_ticks: jax.Array      # int32 [num_ranks]: ticks each rank spent on an op (counted as executed)
    idle_ticks: jax.Array      # int32 [num_ranks]: ticks each rank idled
    aux_loss: Any = None       # the stages' aux losses, mean over micro-batches (part of `loss`)
    metrics: Any = None        # loss_fn's metrics, mean over micro-batches
    stage_stats: Any = None    # stage_fn's stats summed over micro-batches, laid out like stage_grads
    last_stats: Any = None     # loss_fn's stats summed over micro-batches


def _place(x, mesh, spec):
    """Lay x out as `spec` (one PartitionSpec, or a tree of them like x) on `mesh` inside jit, for Explicit
    (reshard) and Auto (constraint) meshes."""
    explicit = any(t == jax.sharding.AxisType.Explicit for t in getattr(mesh, "axis_types", ()))
    if isinstance(spec, P):
        spec = jax.tree.map(lambda _: spec, x)
    is_spec = lambda s: isinstance(s, P)
    shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), spec, is_leaf=is_spec)
    if explicit:
        return jax.tree.map(jax.reshard, x, shardings)
    return jax.lax.with_sharding_constraint(x, shardings)


def _reorder(tree, index, mesh):
    """tree leaves [i, ...] -> [index[i], ...]: stage order <-> (rank, slot) order. The identity (1F1B, ZB1P)
    keeps the caller's layout; otherwise a gather through a replicated copy (use `ranked` to avoid it)."""
    if np.array_equal(index, np.arange(len(index))):
        return tree
    return jax.tree.map(lambda a: jnp.take(_place(a, mesh, P()), jnp.asarray(index), axis=0), tree)


def _no_axes(kind, path) -> tuple:
    return ()


def _specs(param_axes, kind: str, tree, lead: tuple, batch_axes):
    """PartitionSpec per leaf: the leading axes `lead` then param_axes(kind, path)."""
    def one(path, _):
        tail = tuple(param_axes(kind, path))
        flat = [x for a in tail if a is not None for x in ((a,) if isinstance(a, str) else a)]  # dims may list axes
        bad = [a for a in flat if a not in batch_axes]
        if bad:
            raise ValueError(f"param_axes: {kind} leaf {jax.tree_util.keystr(path)} is split over {bad}, "
                             f"which are not among the batch_axes {batch_axes}")
        return P(*lead, *tail)
    return jax.tree_util.tree_map_with_path(one, tree)


def _check_args(schedule, mesh, axis_name, residuals, batch_axes):
    if not isinstance(schedule, Schedule):
        raise ValueError(f"schedule must be a Schedule (see make_schedule); got {type(schedule).__name__}")
    for name in (axis_name,) + tuple(batch_axes):
        if name not in mesh.shape:
            raise ValueError(f"axis_name {name!r} is not an axis of the mesh {dict(mesh.shape)}")
    if axis_name in batch_axes:
        raise ValueError(f"batch_axes {batch_axes} must not contain the pipeline axis {axis_name!r}")
    if mesh.shape[axis_name] != schedule.num_ranks:
        raise ValueError(f"mesh axis {axis_name!r} has size {mesh.shape[axis_name]}; schedule "
                         f"{schedule.name!r} needs {schedule.num_ranks} ranks")
    if residuals not in RESIDUAL_MODES:
        raise ValueError(f"residuals must be one of {RESIDUAL_MODES}; got {residuals!r}")


def _check_data(plan, shards, stage_params, n_params, inputs, targets, consts):
    chunks = plan.schedule.chunks
    for name, tree, n in (("stage_params", stage_params, n_params), ("stage_consts", consts[0], n_params),
                          ("inputs", inputs, chunks), ("targets", targets, chunks)):
        for leaf in jax.tree.leaves(tree):
            if leaf.ndim == 0 or leaf.shape[0] != n:
                raise ValueError(f"{name} leaves need a leading axis of size {n}; got shape {leaf.shape}")
            if name in ("inputs", "targets") and shards > 1 and (leaf.ndim < 2 or leaf.shape[1] % shards):
                raise ValueError(f"{name} leaves need a batch axis 1 divisible by the {shards} data shards; "
                                 f"got shape {leaf.shape}")


def _plain(stage_fn, loss_fn):
    """The full (aux) contract from the plain one: no consts, zero aux loss, no stats."""
    zero = lambda: jnp.zeros((), jnp.float32)
    return (lambda p, c, x: (stage_fn(p, x), zero(), {}),
            lambda sh, sc, y, t: (loss_fn(sh, y, t), {}, {}))


class Pipeline:
    """A built pipeline: `pipeline(stage_params, shared, inputs, targets[, consts])` in stage order, or
    `pipeline.ranked(...)` in (rank, slot) order; both return a PipelineOutput."""

    def __init__(self, plan: TickPlan, step: Callable, mesh, axis_name: str, batch_axes: tuple[str, ...]):
        self.plan, self._step, self.mesh, self.axis_name = plan, step, mesh, axis_name
        self.rows = plan.slot_stage.reshape(-1)   # stage held by each (rank, slot) row
        self.home = plan.home                     # row holding each stage's gradient
        self.shards = math.prod(mesh.shape[a] for a in batch_axes)
        self._staged = jax.jit(self._stage_order)

    def ranked(self, slot_params, shared, inputs, targets, consts=None) -> PipelineOutput:
        consts = ({}, {}) if consts is None else consts
        _check_data(self.plan, self.shards, slot_params, len(self.rows), inputs, targets, consts)
        return self._step(slot_params, shared, inputs, targets, consts)

    def __call__(self, stage_params, shared, inputs, targets, consts=None) -> PipelineOutput:
        consts = ({}, {}) if consts is None else consts
        _check_data(self.plan, self.shards, stage_params, self.plan.schedule.num_stages, inputs, targets,
                    consts)
        return self._staged(stage_params, shared, inputs, targets, consts)

    def _stage_order(self, stage_params, shared, inputs, targets, consts):
        to_rows = lambda t: _reorder(t, self.rows, self.mesh)
        out = self._step(to_rows(stage_params), shared, inputs, targets, (to_rows(consts[0]), consts[1]))
        back = lambda t: _reorder(t, self.home, self.mesh)
        return out._replace(stage_grads=back(out.stage_grads), stage_stats=back(out.stage_stats))


def build_pipeline(schedule: Schedule, stage_fn: Callable, loss_fn: Callable, *, mesh, axis_name: str,
                   first_fn: Callable | None = None, residuals: str = "recompute", aux: bool = False,
                   batch_axes: tuple[str, ...] = (), param_axes: Callable | None = None) -> Pipeline:
    """The jitted pipeline step for `schedule` (see module docstring for the functions' contract).

    mesh/axis_name: the caller's mesh and the name of its pipeline axis (size schedule.num_ranks); this
    module never assumes a mesh axis name. residuals: "recompute" keeps each stage's input and recomputes
    the stage forward in B and W; "store" keeps the vjp residuals of F (minus the parameters themselves).
    aux: use the full contract (consts in, aux loss and stats out). batch_axes: data-parallel mesh axes.
    param_axes: mesh axes of sharded parameter leaves (module docstring); None: all replicated.
    """
    batch_axes = tuple(batch_axes)
    _check_args(schedule, mesh, axis_name, residuals, batch_axes)
    param_axes = param_axes or _no_axes
    plan = build_plan(schedule, residuals=residuals == "store")
    fns = ((stage_fn, loss_fn) if aux else _plain(stage_fn, loss_fn)) + (first_fn,)
    program = make_program(plan, fns, axis_name, batch_axes, residuals == "store", param_axes)
    pipe, data = P(axis_name), (P(None, batch_axes) if batch_axes else P())

    def step(slot_params, shared, inputs, targets, consts):
        stage_spec = _specs(param_axes, "stage", slot_params, (axis_name,), batch_axes)
        shared_spec = _specs(param_axes, "shared", shared, (), batch_axes)
        out_specs = dict(loss=P(), stage_grads=stage_spec, shared_grads=shared_spec, ticks=pipe, aux_loss=P(),
                         metrics=P(), stage_stats=pipe, last_stats=P())
        fn = jax.shard_map(program, mesh=mesh, in_specs=(pipe, stage_spec, shared_spec, data, data, pipe, P()),
                           out_specs=out_specs)
        args = (_place(jnp.asarray(plan.table), mesh, pipe), _place(slot_params, mesh, stage_spec),
                _place(shared, mesh, shared_spec), _place(inputs, mesh, data), _place(targets, mesh, data),
                _place(consts[0], mesh, pipe), _place(consts[1], mesh, P()))
        o = fn(*args)
        return PipelineOutput(o["loss"], o["stage_grads"], o["shared_grads"], o["ticks"][:, 0], o["ticks"][:, 1],
                              o["aux_loss"], o["metrics"], o["stage_stats"], o["last_stats"])

    return Pipeline(plan, jax.jit(step), mesh, axis_name, batch_axes)
