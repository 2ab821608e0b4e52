"""The programs `dsv3-plan` compiles: the REAL train step (plain or pipelined), prefill and decode steps, each on
abstract arguments that carry the shardings the training loop / a server would give them (docs/paper.md §8).

    train     train/step.make_train_step with train/layout.state_shardings (the loop's own set-up)
    pipeline  train/pipeline_step.make_pipeline_train_step (DualPipe / DualPipeV / 1F1B / ZB1P on mesh.pipe)
    prefill   DeepSeekV3.extend of a prompt chunk into a latent cache of `context` slots
    decode    DeepSeekV3.extend of one token per sequence (infer/decode.py's decode step) on that cache

Prefill and decode run the model with the mesh's expert-parallel context (infer/decode.py builds the model
without one, so it cannot use a mesh yet); their weights are the serving copy: every matrix in the compute
dtype, the router gate, norms and biases in float32 (numerics.md: the matmuls cast their kernels anyway).
Each builder returns a Program: the jitted function, its abstract arguments and the analytic estimate.
Legend: B global batch (sequences), T sequence / prompt tokens, S cache slots.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from dsv3_jax import param_tree as pt
from dsv3_jax import sharding
from dsv3_jax.analysis import memory as analytic
from dsv3_jax.analysis.params import param_counts
from dsv3_jax.infer.cache import cache_bytes_per_token, init_cache
from dsv3_jax.layers.moe.ep import make_expert_parallel
from dsv3_jax.model import DeepSeekV3
from dsv3_jax.parallel.pipeline import make_schedule
from dsv3_jax.parallel.pipeline.plan import COL, IDLE, build_plan
from dsv3_jax.train import layout as train_layout
from dsv3_jax.train import optim, pipeline_step, step as step_lib
from dsv3_jax.train.state import init_state


@dataclasses.dataclass
class Program:
    name: str
    jitted: Any
    args: tuple
    analytic: dict[str, float]  # bytes per device by part, with "total"
    tokens_per_device: float  # tokens one device processes per step (for per-token figures)
    notes: list[str]
    ticks: dict | None = None  # pipelined programs: the tick switch's weights (parallel/plan/hlo.py)


def _abstract(tree, shardings):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings)


def _train_setup(cfg, train_cfg, mesh, seq_len: int, batch: int):
    t = train_cfg
    t.seq_len, t.batch_size = seq_len, batch
    opt = optim.make_optimizer(t)
    ssh = train_layout.state_shardings(cfg, opt, mesh, seq_len)
    state = _abstract(jax.eval_shape(lambda: init_state(cfg, opt, 0, seq_len)), ssh)
    bsh = sharding.batch_sharding(mesh)
    data = {k: jax.ShapeDtypeStruct((batch, seq_len), jnp.int32, sharding=bsh) for k in ("inputs", "targets")}
    return t, opt, ssh, bsh, state, data


def _shards(mesh) -> int:
    return math.prod(dict(mesh.shape)[a] for a in sharding.batch_axes())


def _per_device(tokens: int, mesh) -> float:
    """Tokens each device's layers process per step: the tensor axis replicates tokens; batch shards and
    pipeline ranks split them."""
    return tokens * dict(mesh.shape).get("tensor", 1) / mesh.size


def train_program(cfg, train_cfg, mesh, seq_len: int, batch: int) -> Program:
    """The plain (unpipelined) train step of the training loop on `mesh`."""
    t, opt, ssh, bsh, state, data = _train_setup(cfg, train_cfg, mesh, seq_len, batch)
    fn = step_lib.make_train_step(cfg, opt, t, ssh, bsh, compiler_options={})  # XLA's defaults: a GPU plan
    sizes = dict(mesh.shape)
    est = analytic.plan_training_memory(cfg, sizes, seq_len, batch // _shards(mesh), t.get("bf16_moments", False))
    return Program("train", fn, (state, data), est, _per_device(batch * seq_len, mesh),
                   [f"moe_impl={cfg.moe_impl}, ep_dispatch={cfg.ep_dispatch}, remat={cfg.remat}"])


def pipeline_program(cfg, train_cfg, mesh, seq_len: int, batch: int, schedule: str, chunks: int,
                     residuals: str) -> Program:
    """The pipelined train step (train/pipeline_step.py) with `schedule` over mesh.pipe."""
    t, opt, ssh, bsh, state, data = _train_setup(cfg, train_cfg, mesh, seq_len, batch)
    fn = pipeline_step.make_pipeline_train_step(cfg, opt, t, mesh, schedule, chunks, ssh, bsh, residuals=residuals)
    sizes = dict(mesh.shape)
    micro = batch // (chunks * _shards(mesh))
    ticks = tick_weights(schedule, mesh, chunks)
    est = analytic.plan_pipeline_memory(cfg, sizes, seq_len, micro, schedule, residuals,
                                        t.get("bf16_moments", False), ticks["buffers"])
    return Program(f"pipeline ({schedule})", fn, (state, data), est, _per_device(batch * seq_len, mesh),
                   [f"{schedule}: {chunks} micro-batches of {micro} sequence(s) per data shard, "
                    f"residuals={residuals}", f"moe_impl={cfg.moe_impl}, ep_dispatch={cfg.ep_dispatch}, "
                                               f"remat={cfg.remat}"], ticks)


def tick_weights(schedule: str, mesh, chunks: int) -> dict:
    """The executor's tick switch: its trip count and how often the busiest rank runs each branch (the
    branches it compiles, in order: parallel/pipeline/program.py)."""
    pipe = dict(mesh.shape)[sharding.mesh_axes_for("stage")[0]]
    plan = build_plan(make_schedule(schedule, pipeline_step.num_stages(schedule, pipe), chunks or 2 * pipe))
    kinds = plan.table[..., COL["kind"]]
    present = sorted(set(np.unique(kinds).tolist()) | {IDLE})
    busiest = int(np.argmax((kinds != IDLE).sum(axis=1)))
    return {"trip": int(plan.num_ticks), "counts": [int((kinds[busiest] == k).sum()) for k in present],
            "buffers": int(plan.num_buffers) + 1}


SERVING_FP32 = (pt.GATE, "scale", pt.BIAS)  # kept in float32 when serving (router, norms)


def _serving(cfg, boxed):
    """The serving copy of the abstract params: matrices in the compute dtype, gate/norms in float32."""
    dt = jnp.dtype(cfg.dtype)

    def one(path, a):
        names = pt.key_names(path)
        keep = a.ndim < 2 or any(n in SERVING_FP32 for n in names)
        return a if keep else jax.ShapeDtypeStruct(a.shape, dt)
    return jax.tree_util.tree_map_with_path(one, boxed)


def _serving_state(cfg, mesh, batch: int, context: int):
    boxed = jax.eval_shape(DeepSeekV3(cfg).init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
    shard = sharding.tree_shardings(boxed, mesh)
    variables = _serving(cfg, nn.unbox(boxed))
    variables = {k: v for k, v in variables.items() if k in (pt.PARAMS, pt.ROUTER)}
    variables = _abstract(variables, {k: nn.unbox(shard[k]) for k in variables})
    cache = jax.eval_shape(lambda: init_cache(cfg, batch, context))
    rows = sharding.batch_axes()
    entry = NamedSharding(mesh, sharding.divisible_spec((1, batch), (None, "activation_batch"), mesh))
    lengths = NamedSharding(mesh, sharding.divisible_spec((batch,), ("activation_batch",), mesh))
    del rows
    cache = cache.replace(groups=_abstract(cache.groups, jax.tree.map(lambda _: entry, cache.groups)),
                          lengths=jax.ShapeDtypeStruct(cache.lengths.shape, cache.lengths.dtype, sharding=lengths))
    return variables, cache


def _serving_estimate(cfg, mesh, variables, cache) -> dict[str, float]:
    """Analytic bytes per device: each weight / cache entry's bytes over the mesh axes it is split over."""
    def per_device(a):
        spec = a.sharding.spec
        split = math.prod(math.prod(dict(mesh.shape)[x] for x in ((s,) if isinstance(s, str) else s))
                          for s in spec if s is not None)
        return a.size * a.dtype.itemsize / split
    weights = sum(per_device(a) for a in jax.tree.leaves(variables))
    kv = sum(per_device(a) for a in jax.tree.leaves(cache.groups))
    return {"weights": weights, "kv_cache": kv, "total": weights + kv}


def serving_programs(cfg, mesh, batch: int, context: int, prompt: int) -> list[Program]:
    """(prefill of `prompt` tokens into a `context`-slot latent cache, decode of one token) on `mesh`."""
    cfg = cfg.replace(max_seq_len=max(cfg.max_seq_len, context))
    ctx = make_expert_parallel(cfg, mesh)
    model = DeepSeekV3(cfg, ctx)
    variables, cache = _serving_state(cfg, mesh, batch, context)
    tok_sh = NamedSharding(mesh, sharding.divisible_spec((batch, 1), ("activation_batch", None), mesh))
    cache_sh = jax.tree.map(lambda a: a.sharding, cache)
    est = _serving_estimate(cfg, mesh, variables, cache)
    per_tok = cache_bytes_per_token(cfg)
    shards = _shards(mesh)
    est["kv_cache_formula"] = per_tok * batch * context / min(shards, batch)

    def step(variables, cache, tokens):
        logits, _, cache = model.apply(variables, tokens, cache, method=DeepSeekV3.extend)
        return cache.replace(lengths=cache.lengths + tokens.shape[1]), logits[:, -1]

    out_sh = (cache_sh, NamedSharding(mesh, sharding.divisible_spec((batch, 1), ("activation_batch", None), mesh)))
    fn = jax.jit(step, donate_argnums=(1,), out_shardings=out_sh)
    notes = [f"latent cache: {per_tok} B/token x {batch} x {context} slots over {min(shards, batch)} batch shards",
             f"moe_impl={cfg.moe_impl}, ep_dispatch={cfg.ep_dispatch}, serving weights in {cfg.dtype}"]
    progs = []
    for name, t in (("prefill", prompt), ("decode", 1)):
        tokens = jax.ShapeDtypeStruct((batch, t), jnp.int32, sharding=tok_sh)
        progs.append(Program(f"{name} ({t} token{'s' if t > 1 else ''}, cache {context})", fn,
                             (variables, cache, tokens), dict(est), _per_device(batch * t, mesh), list(notes)))
    return progs
