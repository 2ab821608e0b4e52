"""Tiny DeepSeek-V3 pipeline cases, run in a subprocess with fake CPU devices (XLA_FLAGS set before jax).

`grad_cases`: the pipelined loss and gradients (parallel/pipeline/model_stages.py via
train/pipeline_step.make_pipeline_loss) against `jax.value_and_grad` of the unpipelined model's training
loss (train/step.loss_fn: CE + MTP + balance), with expert counts. `step_cases`: the pipelined train step
on meshes of pipe × data/fsdp/expert (state sharded by train/layout.py; moe_impl="ep" for expert
parallelism inside the stages) against train/step.make_train_step on one device. Each prints one JSON object
per case.
"""

from __future__ import annotations

import json
import math
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np

import dsv3_jax
from dsv3_jax import sharding
from dsv3_jax.data.tokenizer import PAD_ID
from dsv3_jax.train import step as step_lib
from dsv3_jax.train.pipeline_step import make_pipeline_loss, make_pipeline_train_step
from tests.conftest import tiny_config
from tests.parallel.pipeline.executor_cases import grad_diff

T, LAM, ALPHA = 8, 0.3, 0.01


def tiny_model(n_layers: int, seed: int = 0, **overrides):
    """tiny_config with n_layers (1 dense + MoE), a vocab holding PAD_ID, random router biases."""
    cfg = tiny_config(n_layers=n_layers, vocab_size=PAD_ID + 1, **overrides)
    shapes = flax.linen.unbox(jax.eval_shape(dsv3_jax.DeepSeekV3(cfg).init, jax.random.PRNGKey(seed),
                                             jnp.zeros((1, T), jnp.int32)))
    rng = np.random.default_rng(seed)   # numpy draws: no init program to compile
    draw = lambda scale, offset=0.0: lambda a: jnp.asarray(offset + scale * rng.standard_normal(a.shape), jnp.float32)
    params = jax.tree_util.tree_map_with_path(
        lambda path, a: draw(0.1, 1.0)(a) if "scale" in jax.tree_util.keystr(path) else draw(0.1)(a), shapes["params"])
    return cfg, params, jax.tree.map(draw(0.05), shapes["router"])


def make_batch(b: int, seed: int = 1):
    """Random byte tokens; a few padded targets so the loss weights' mask and global counts matter."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(b, T + 1))
    targets = x[:, 1:].copy()
    targets[0, -3:] = PAD_ID
    targets[b // 2, -1] = PAD_ID
    return {"inputs": jnp.asarray(x[:, :-1], jnp.int32), "targets": jnp.asarray(targets, jnp.int32)}


def mesh_of(pipe: int, data: int = 1, **axes):
    sizes = {"pipe": pipe, "data": data, **axes}
    return sharding.make_mesh(sizes, jax.devices()[:math.prod(sizes.values())])


def _rel(a, b) -> float:
    return abs(float(a) - float(b)) / max(abs(float(b)), 1e-30)


def grad_cases(n_ranks: int, cases) -> None:
    """cases: (schedule, chunks, residuals). Model: 2 layers per stage (1 per stage for dualpipev)."""
    cfg, params, router = tiny_model(2 * n_ranks)
    batch = make_batch(math.lcm(*[c for _, c, _ in cases]))
    ref_fn = jax.jit(jax.value_and_grad(step_lib.loss_fn, has_aux=True), static_argnums=(4,))
    (ref_loss, ref_aux), ref_grads = ref_fn(params, {}, router, batch, cfg, LAM, ALPHA)
    for name, chunks, residuals in cases:
        t0 = time.time()
        fn = make_pipeline_loss(cfg, mesh_of(n_ranks), name, chunks, alpha=ALPHA, residuals=residuals)
        loss, aux, grads = jax.block_until_ready(jax.jit(fn)(params, router, batch, LAM))
        same_counts = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), aux["counts"], ref_aux["counts"])
        print(json.dumps({
            "name": name, "ranks": n_ranks, "chunks": chunks, "residuals": residuals,
            "stages": fn.pipeline.plan.schedule.num_stages, "loss": float(loss), "ref_loss": float(ref_loss),
            "loss_rel": _rel(loss, ref_loss),
            "terms_rel": max(_rel(aux[k], ref_aux[k]) for k in ("ce", "mtp", "balance")),
            "grad_diff": grad_diff(grads, ref_grads),
            "same_tree": jax.tree.structure(grads) == jax.tree.structure(ref_grads),
            "counts_equal": all(jax.tree.leaves(same_counts)), "seconds": round(time.time() - t0, 1)}), flush=True)


def _train_config():
    from tests.train.helpers import micro_experiment
    t = micro_experiment(steps=10, lr=1e-3, balance_alpha=ALPHA).train
    return t


def _specs(tree, *keys) -> dict:
    """{path: (PartitionSpec string, global shape, per-device shard shape)} of the leaves whose path contains
    all `keys` (sharding checks)."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = jax.tree_util.keystr(path)
        if all(k in name for k in keys):
            out[name] = (str(leaf.sharding.spec), leaf.shape, leaf.addressable_shards[0].data.shape)
    return out


def step_cases(cases, batch_size: int = 8, sgd: bool = False, n_layers: int = 4, **overrides) -> None:
    """cases: (schedule, mesh axes {pipe, data, fsdp, expert}, chunks); overrides: ModelConfig fields
    (e.g. moe_impl="ep"). The pipelined train step == make_train_step on one device (one step). sgd: the
    optimizer is SGD with momentum and lr 1, whose first update is exactly -gradient (its momentum is the
    sharded moment) and its momentum holds the gradient ("grad_*" fields compare it); else the experiments'
    AdamW, whose first update is about -lr·sign(gradient). Also counts the all_to_alls of the step's program
    (expert parallelism inside the stages)."""
    import optax
    from dsv3_jax.train import layout
    from dsv3_jax.train import optim
    from dsv3_jax.train.state import TrainState
    cfg, params, router = tiny_model(n_layers, **overrides)
    t = _train_config()
    opt = optax.sgd(1.0, momentum=0.9) if sgd else optim.make_optimizer(t)
    fresh = lambda tree: jax.tree.map(jnp.copy, tree)      # the steps donate their state
    state = lambda: TrainState(step=jnp.zeros((), jnp.int32), params=fresh(params), opt_state=opt.init(params),
                               router=fresh(router), rng=jax.random.PRNGKey(0))
    batch = make_batch(batch_size)
    ref_state, ref_m = step_lib.make_train_step(cfg, opt, t)(state(), batch)
    for name, axes, chunks in cases:
        t0 = time.time()
        mesh = mesh_of(**axes)
        state_sh, batch_sh = layout.state_shardings(cfg, opt, mesh, T), sharding.batch_sharding(mesh)
        with jax.set_mesh(mesh):     # as train/loop.py runs its step
            step = make_pipeline_train_step(cfg, opt, t, mesh, name, chunks, state_sh, batch_sh)
            args = (jax.device_put(state(), state_sh), jax.device_put(batch, batch_sh))
            a2a = step.lower(*args).as_text().count("all_to_all")
            new, m = jax.block_until_ready(step(*args))
        dp = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), new.params, ref_state.params)
        grads = lambda s: [np.asarray(a, np.float64) for a in jax.tree.leaves(s.opt_state)]  # moments of g
        g, g_ref = grads(new), grads(ref_state)
        rel = [float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30)) for a, b in zip(g, g_ref)]
        print(json.dumps({
            "name": name, "mesh": axes, "chunks": chunks, "moe_impl": cfg.moe_impl,
            "metric_rel": {k: _rel(m[k], ref_m[k]) for k in m if np.ndim(ref_m[k]) == 0},
            "load_equal": bool(np.array_equal(m["load_max"], ref_m["load_max"])),
            "param_max_abs": max(jax.tree.leaves(dp)), "grad_max_rel": max(rel + [0.0]),
            "grad_diff": grad_diff(g, g_ref), "all_to_all": a2a,
            "lr": float(ref_m["lr"]),
            "router_equal": all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)),
                                                             new.router, ref_state.router))),
            "extra_ref_keys": sorted(set(ref_m) - set(m)), "missing_keys": sorted(set(m) - set(ref_m)),
            "step": int(new.step), "moment_specs": _specs(new.opt_state, "routed_experts", "w1"),
            "embed_specs": _specs(new.opt_state, "embedding"), "seconds": round(time.time() - t0, 1)}),
            flush=True)
