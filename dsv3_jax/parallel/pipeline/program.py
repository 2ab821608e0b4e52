"""The per-rank program the executor hands to `jax.shard_map`: a `lax.scan` over the ticks of the plan.

At each tick every rank does a `lax.switch` over {idle, F, B, B-input-only, W, F&B} (stage_math.py), then two
`lax.ppermute`s (to the right and to the left neighbour, each carrying one forward and one backward message)
move activations and gradients in both directions (DualPipe's bidirectional pipeline, V3 report §3.2.1).
After the scan: DualPipe's two parameter copies get their gradients summed across mirror ranks, and losses,
gradients and statistics are summed over the data (batch) axes once (a parameter leaf split over some batch
axes, executor.py `param_axes`, over the others only).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dsv3_jax.parallel.pipeline.plan import COL, FWD_BWD, IDLE, SEND_LEFT, SEND_RIGHT, TickPlan
from dsv3_jax.parallel.pipeline.stage_math import ACCUMULATORS, StageMath, add_delta
from dsv3_jax.sharding import vary


def _tick(math: StageMath, plan: TickPlan, axis_name: str):
    """The scan body: one op per rank, then the two neighbour exchanges and the buffer writes."""
    n = plan.schedule.num_ranks
    branches = [math.idle, math.forward, math.backward_full, math.backward_input, math.weight,
                math.forward_backward]
    assert len(branches) == FWD_BWD + 1
    # Compile only the branches the schedule uses (1F1B: idle, F, B; ZB1P: idle, F, B-input, W).
    present = sorted(set(np.unique(plan.table[..., COL["kind"]]).tolist()) | {IDLE})
    lut = np.zeros(len(branches), np.int32)
    lut[present] = np.arange(len(present))
    branches = [branches[k] for k in present]

    def shift(msg, right: bool):
        if n == 1:
            return jnp.zeros_like(msg)
        perm = [(i, i + 1) for i in range(n - 1)] if right else [(i + 1, i) for i in range(n - 1)]
        return jax.lax.ppermute(msg, axis_name, perm)

    def body(state, row):
        kind = row[COL["kind"]]
        core = {k: v for k, v in state.items() if k not in ACCUMULATORS}   # accumulators stay out of the switch
        core, fout, bout, delta = jax.lax.switch(jnp.asarray(lut)[kind], branches, core, row)
        state = add_delta({**state, **core}, delta)
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


def mirror_sum(tree, axis_name: str, n: int):
    """DualPipe: slot 1 of rank r is stage n-1-r, slot 0 of rank n-1-r. Both copies end up with the sum of
    the two partial results (so per-rank copies of the parameters stay identical under any optimizer)."""
    perm = [(r, n - 1 - r) for r in range(n)]

    def one(g):
        total = g[0] + jax.lax.ppermute(g[1], axis_name, perm)
        return jnp.stack([total, jax.lax.ppermute(total, axis_name, perm)])
    return jax.tree.map(one, tree)


def _psum_params(tree, kind: str, param_axes, axes: tuple[str, ...]):
    """psum each leaf over `axes` minus the mesh axes param_axes(kind, path) splits it over."""
    def one(path, g):
        split = {x for a in param_axes(kind, path) if a is not None for x in ((a,) if isinstance(a, str) else a)}
        over = tuple(a for a in axes if a not in split)
        return jax.lax.psum(g, over) if over else g
    return jax.tree_util.tree_map_with_path(one, tree)


def make_program(plan: TickPlan, fns, axis_name: str, batch_axes: tuple[str, ...], store: bool, param_axes):
    """run(table, slot_params, shared, inputs, targets, stage_consts, shared_consts) for shard_map."""
    sched, axes = plan.schedule, (axis_name,) + tuple(batch_axes)

    def run(table, *arrays):
        arrays = vary(arrays, axes)
        math = StageMath(fns, arrays, sched.chunks, store, axes)
        state = math.init_state(plan.num_buffers, plan.num_residuals, sched.num_slots)
        state, _ = jax.lax.scan(_tick(math, plan, axis_name), state, table[0])
        grads, stats = state["gacc"], state["stats"]
        if sched.placement == "dual":
            grads, stats = mirror_sum((grads, stats), axis_name, sched.num_ranks)
        over_batch = (lambda t: jax.lax.psum(t, batch_axes)) if batch_axes else (lambda t: t)
        over_all = lambda t: jax.lax.psum(t, axes)
        stage_grads = _psum_params(grads, "stage", param_axes, batch_axes)
        shared_grads = _psum_params(state["sacc"], "shared", param_axes, axes)
        return dict(loss=over_all(state["loss"]), stage_grads=stage_grads, shared_grads=shared_grads,
                    ticks=state["busy"][None], aux_loss=over_all(state["aux_loss"]),
                    metrics=over_all(state["metrics"]), stage_stats=over_batch(stats),
                    last_stats=over_all(state["last"]))

    return run
