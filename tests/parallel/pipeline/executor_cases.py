"""Executor cases run in a subprocess with fake CPU devices (XLA_FLAGS is set before jax is imported there).

Each case builds a pipeline of small residual-MLP stages and compares its loss and gradients with
`jax.value_and_grad` of the same model written directly (vmap over micro-batches, loop over stages).
Prints one JSON object per case.
"""

from __future__ import annotations

import functools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from dsv3_jax.parallel.pipeline import make_schedule
from dsv3_jax.parallel.pipeline.executor import build_pipeline
from dsv3_jax.parallel.pipeline.simulate import Durations, simulate

D, H, MB, DIN, DOUT = 8, 16, 3, 5, 2


def stage_fn(p, x):
    return x + jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"]


def first_fn(shared, xs):
    return xs @ shared["emb"]


def loss_fn(shared, y, t):
    return jnp.mean((y @ shared["head"] - t) ** 2)


def plain_loss(_, y, t):
    return jnp.mean((y[:, :DOUT] - t) ** 2)


def make_data(stages, chunks, with_shared, seed=0):
    """Random float32 parameters and micro-batches (numpy RNG: no per-shape compiles)."""
    rng = np.random.default_rng(seed)
    normal = lambda scale, *shape: jnp.asarray(scale * rng.standard_normal(shape), jnp.float32)
    sp = {"w1": normal(0.3, stages, D, H), "b1": normal(0.1, stages, H), "w2": normal(0.3, stages, H, D)}
    shared = {"emb": normal(1.0, DIN, D), "head": normal(1.0, D, DOUT)}
    xs = normal(1.0, chunks, MB, DIN if with_shared else D)
    ts = normal(1.0, chunks, MB, DOUT)
    return sp, (shared if with_shared else {}), xs, ts


@functools.lru_cache(maxsize=None)
def reference_for(stages, chunks, with_shared):
    return reference(*make_data(stages, chunks, with_shared), with_shared)


def reference(sp, shared, xs, ts, with_shared):
    """mean_m loss(stage_{S-1}(...stage_0(first(x_m)))), differentiated by jax.value_and_grad."""
    first = first_fn if with_shared else (lambda sh, x: x)
    loss = loss_fn if with_shared else plain_loss

    def total(sp, shared):
        x = jax.vmap(first, (None, 0))(shared, xs)
        x, _ = jax.lax.scan(lambda x, p: (jax.vmap(stage_fn, (None, 0))(p, x), None), x, sp)   # stages in order
        return jnp.mean(jax.vmap(loss, (None, 0, 0))(shared, x, ts))

    return jax.jit(jax.value_and_grad(total, argnums=(0, 1)))(sp, shared)


def grad_diff(a, b) -> float:
    """DualPipe's check: 1 - 2 sum(xy) / sum(x^2 + y^2), in float64."""
    a = np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(a)] + [np.zeros(0)])
    b = np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(b)] + [np.zeros(0)])
    den = np.sum(a * a + b * b)
    return float(1 - 2 * np.sum(a * b) / den) if den > 0 else 0.0


def make_mesh(n_ranks, kind):
    """'explicit'/'auto': a 1-axis mesh named 'stages'; 'data2': ('replica', 'pp') = (2, n_ranks), Auto."""
    if kind == "data2":
        return jax.make_mesh((2, n_ranks), ("replica", "pp"), axis_types=(jax.sharding.AxisType.Auto,) * 2), "pp"
    t = jax.sharding.AxisType.Explicit if kind == "explicit" else jax.sharding.AxisType.Auto
    return jax.make_mesh((n_ranks,), ("stages",), axis_types=(t,)), "stages"


def run_case(name, pp, chunks, residuals="recompute", mesh_kind="explicit", with_shared=True) -> dict:
    schedule = make_schedule(name, pp, chunks)
    mesh, axis = make_mesh(schedule.num_ranks, mesh_kind)
    sp, shared, xs, ts = make_data(pp, chunks, with_shared)
    t0 = time.time()
    pipe = build_pipeline(schedule, stage_fn, loss_fn if with_shared else plain_loss, mesh=mesh, axis_name=axis,
                          first_fn=first_fn if with_shared else None, residuals=residuals)
    out = jax.block_until_ready(pipe(sp, shared, xs, ts))
    seconds = time.time() - t0
    ref_loss, (ref_sp, ref_shared) = reference_for(pp, chunks, with_shared)
    sim = simulate(schedule, Durations.unit())
    return {"name": name, "pp": pp, "chunks": chunks, "residuals": residuals, "mesh": mesh_kind,
            "loss": float(out.loss), "ref_loss": float(ref_loss),
            "stage_diff": grad_diff(out.stage_grads, ref_sp), "shared_diff": grad_diff(out.shared_grads, ref_shared),
            "busy": [int(b) for b in out.busy_ticks], "idle": [int(b) for b in out.idle_ticks],
            "sim_idle": list(sim.idle), "sim_makespan": sim.makespan, "seconds": round(seconds, 2)}


def main(cases) -> None:
    for case in cases:
        print(json.dumps(run_case(*case)), flush=True)
