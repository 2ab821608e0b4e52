"""Run a pipeline schedule (1F1B, ZB1P, DualPipe, DualPipeV) inside ONE jitted `jax.shard_map`.

The model is given generically (the DeepSeek model plugs in the same way; nothing here knows about it):

    first_fn(shared, inputs_m) -> x          on stage 0 (e.g. the embedding); default: x = inputs_m
    stage_fn(stage_params, x) -> y           every stage; y has x's shape and dtype (e.g. a group of blocks)
    loss_fn(shared, y_last, targets_m) -> l  scalar, after the last stage (e.g. norm, head, MTP, loss)

`stage_params` is a pytree whose leaves have a leading axis of num_stages (stage s uses leaf[s]); `shared`
is a replicated pytree used by first_fn and loss_fn (may be {}); `inputs` and `targets` are pytrees with a
leading micro-batch axis of size schedule.chunks. `build_pipeline(...)(stage_params, shared, inputs,
targets)` returns the mean loss over micro-batches and its gradients with respect to stage_params and shared,
equal to `jax.value_and_grad` of the unpipelined composition.

How it runs (plan.py builds the static int32 table [rank, tick, column]): a `lax.scan` over ticks; at each
tick every rank does `lax.switch` over {idle, F, B, B-input-only, W, F&B} with `jax.vjp` per stage
(recomputing the stage forward from its stored input, or replaying stored vjp residuals), then two
`lax.ppermute`s (to the right and to the left neighbour, each carrying one forward and one backward message)
move activations and gradients in both directions. DualPipe keeps two parameter copies per rank (stages r
and PP-1-r, DeepSeek-V3 report §3.2.1); their gradients are summed across the mirror ranks at the end.

Plugging in DeepSeekV3 (model.py): stage_params = the MoE blocks stacked [num_stages, blocks_per_stage, ...],
stage_fn = a scan over one stage's blocks; first_fn = embedding (and the dense blocks, whose params differ
in structure, in `shared`); loss_fn = final norm, head, cross-entropy and the MTP loss. Layout: inputs,
targets and shared are replicated over the pipeline axis; stage_params are sharded over it (DualPipe and
DualPipeV gather them into their (rank, slot) order first, see `_reorder`). Not yet: auxiliary outputs of
stage_fn (MoE balance loss, expert loads for the bias update) and sharding over other mesh axes inside.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from dsv3_jax.parallel.pipeline.ops import Schedule
from dsv3_jax.parallel.pipeline.plan import (COL, FWD_BWD, IDLE, SEND_LEFT, SEND_RIGHT, TickPlan,
                                             build_plan)
from dsv3_jax.parallel.pipeline.stage_math import StageMath

RESIDUAL_MODES = ("recompute", "store")


class PipelineOutput(NamedTuple):
    loss: jax.Array            # mean over micro-batches
    stage_grads: Any           # like stage_params: [num_stages, ...]
    shared_grads: Any          # like shared
    busy_ticks: jax.Array      # int32 [num_ranks]: ticks each rank spent on an op (counted as executed)
    idle_ticks: jax.Array      # int32 [num_ranks]: ticks each rank idled


def _place(x, mesh, spec):
    """Lay x out as `spec` on `mesh` inside jit, for Explicit (reshard) and Auto (constraint) meshes."""
    explicit = any(t == jax.sharding.AxisType.Explicit for t in getattr(mesh, "axis_types", ()))
    sharding = NamedSharding(mesh, spec)
    if explicit:
        return jax.tree.map(lambda a: jax.reshard(a, sharding), x)
    return jax.lax.with_sharding_constraint(x, sharding)


def _reorder(tree, index, mesh):
    """tree leaves [i, ...] -> [index[i], ...]: stage order <-> (rank, slot) order. The identity (1F1B, ZB1P)
    keeps the caller's layout; DualPipe's second copies and DualPipeV's V go through a replicated gather.
    TODO(model integration): accept parameters kept in (rank, slot) layout to skip this gather."""
    if np.array_equal(index, np.arange(len(index))):
        return tree
    return jax.tree.map(lambda a: jnp.take(_place(a, mesh, P()), jnp.asarray(index), axis=0), tree)


def _check_args(schedule, mesh, axis_name, residuals):
    if not isinstance(schedule, Schedule):
        raise ValueError(f"schedule must be a Schedule (see make_schedule); got {type(schedule).__name__}")
    if axis_name not in mesh.shape:
        raise ValueError(f"axis_name {axis_name!r} is not an axis of the mesh {dict(mesh.shape)}")
    if mesh.shape[axis_name] != schedule.num_ranks:
        raise ValueError(f"mesh axis {axis_name!r} has size {mesh.shape[axis_name]}; schedule "
                         f"{schedule.name!r} needs {schedule.num_ranks} ranks")
    if residuals not in RESIDUAL_MODES:
        raise ValueError(f"residuals must be one of {RESIDUAL_MODES}; got {residuals!r}")


def _check_data(schedule, stage_params, inputs, targets):
    for name, tree, n in (("stage_params", stage_params, schedule.num_stages),
                          ("inputs", inputs, schedule.chunks), ("targets", targets, schedule.chunks)):
        for leaf in jax.tree.leaves(tree):
            if leaf.ndim == 0 or leaf.shape[0] != n:
                raise ValueError(f"{name} leaves need a leading axis of size {n}; got shape {leaf.shape}")


def _tick(math: StageMath, plan: TickPlan, axis_name: str):
    """The scan body: one op per rank, then the two neighbour exchanges and the buffer writes."""
    n = plan.schedule.num_ranks
    branches = [math.idle, math.forward, math.backward_full, math.backward_input, math.weight,
                math.forward_backward]
    assert len(branches) == FWD_BWD + 1

    def shift(msg, right: bool):
        if n == 1:
            return jnp.zeros_like(msg)
        perm = [(i, i + 1) for i in range(n - 1)] if right else [(i + 1, i) for i in range(n - 1)]
        return jax.lax.ppermute(msg, axis_name, perm)

    def body(state, row):
        kind = row[COL["kind"]]
        state, fout, bout = jax.lax.switch(kind, branches, state, row)
        zero = jnp.zeros_like(fout)
        out = {d: jnp.stack([jnp.where(row[COL["f_send"]] == d, fout, zero),
                             jnp.where(row[COL["b_send"]] == d, bout, zero)]) for d in (SEND_RIGHT, SEND_LEFT)}
        from_left, from_right = shift(out[SEND_RIGHT], True), shift(out[SEND_LEFT], False)
        buf = state["buf"]
        for col, val in (("recv_l0", from_left[0]), ("recv_l1", from_left[1]), ("recv_r0", from_right[0]),
                         ("recv_r1", from_right[1]), ("recv_sf", fout), ("recv_sb", bout)):
            buf = jax.lax.dynamic_update_index_in_dim(buf, val, row[COL[col]], 0)
        busy = state["busy"] + jnp.stack([kind != IDLE, kind == IDLE]).astype(jnp.int32)
        return dict(state, buf=buf, busy=busy), None

    return body


def _program(plan: TickPlan, math_factory, axis_name: str):
    """The per-rank function given to shard_map."""
    sched = plan.schedule

    def run(table, slot_params, shared, inputs, targets):
        vary = lambda t: jax.tree.map(lambda a: jax.lax.pcast(a, axis_name, to="varying"), t)
        shared, inputs, targets = vary((shared, inputs, targets))
        math = math_factory(slot_params, shared, inputs, targets)
        state = math.init_state(plan.num_buffers, plan.num_residuals, vary)
        state, _ = jax.lax.scan(_tick(math, plan, axis_name), state, table[0])
        grads = state["gacc"]
        if sched.placement == "dual":   # slot 1 of rank r is stage PP-1-r: add it to that rank's slot 0
            mirror = [(r, sched.num_ranks - 1 - r) for r in range(sched.num_ranks)]
            other = jax.tree.map(lambda g: jax.lax.ppermute(g[1], axis_name, mirror), grads)
            grads = jax.tree.map(lambda g, o: g.at[0].add(o), grads, other)
        loss = jax.lax.psum(state["loss"], axis_name)
        shared_grads = jax.lax.psum(state["sacc"], axis_name)
        return loss, grads, shared_grads, state["busy"][None]   # [1, 2]: busy and idle ticks

    return run


class Pipeline:
    """A built pipeline: call it as `pipeline(stage_params, shared, inputs, targets) -> PipelineOutput`."""

    def __init__(self, plan: TickPlan, step: Callable):
        self.plan, self._step = plan, step

    def __call__(self, stage_params, shared, inputs, targets) -> PipelineOutput:
        _check_data(self.plan.schedule, stage_params, inputs, targets)
        return self._step(stage_params, shared, inputs, targets)


def build_pipeline(schedule: Schedule, stage_fn: Callable, loss_fn: Callable, *, mesh, axis_name: str,
                   first_fn: Callable | None = None, residuals: str = "recompute") -> Pipeline:
    """The jitted pipeline step for `schedule` (see module docstring for the functions' contract).

    mesh/axis_name: the caller's mesh and the name of its pipeline axis (size schedule.num_ranks); this
    module never assumes a mesh axis name. residuals: "recompute" keeps each stage's input and recomputes
    the stage forward in B and W; "store" keeps the vjp residuals of F (minus the parameters themselves).
    """
    _check_args(schedule, mesh, axis_name, residuals)
    plan = build_plan(schedule, residuals=residuals == "store")
    slot_index, home = plan.slot_stage.reshape(-1), plan.home

    def step(stage_params, shared, inputs, targets):
        first = (lambda sh, xs: xs) if first_fn is None else first_fn
        x_aval = jax.eval_shape(lambda sh, xs: first(sh, jax.tree.map(lambda a: a[0], xs)), shared, inputs)
        factory = lambda sp, sh, xs, ts: StageMath((stage_fn, loss_fn, first_fn), sp, sh, xs, ts,
                                                   schedule.chunks, x_aval, residuals == "store")
        fn = jax.shard_map(_program(plan, factory, axis_name), mesh=mesh,
                           in_specs=(P(axis_name), P(axis_name), P(), P(), P()),
                           out_specs=(P(), P(axis_name), P(), P(axis_name)))
        slot_params = _reorder(stage_params, slot_index, mesh)
        args = (_place(jnp.asarray(plan.table), mesh, P(axis_name)), _place(slot_params, mesh, P(axis_name)),
                _place(shared, mesh, P()), _place(inputs, mesh, P()), _place(targets, mesh, P()))
        loss, grads, shared_grads, ticks = fn(*args)
        return PipelineOutput(loss, _reorder(grads, home, mesh), shared_grads, ticks[:, 0], ticks[:, 1])

    return Pipeline(plan, jax.jit(step))
