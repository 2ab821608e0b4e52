"""The pipelined train step: train/step.py's step with the loss and gradients computed by the pipeline executor.

    loss = CE + (λ/D) Σ_k L_MTP,k + α Σ_layers L_Bal          (V3 report eq. 17-20, 24-25)

The model's blocks run as pipeline stages (parallel/pipeline/model_stages.py) under one of the schedules
1F1B, ZB1P, DualPipe or DualPipeV (V3 report §3.2.1; github deepseek-ai/DualPipe) on the mesh's pipeline
axis, with the batch split over its data axes inside the same shard_map. The state keeps the model's own
parameter layout, so checkpoints, eval and sampling are unchanged; each step lays the block stacks out per
(rank, slot) of the schedule (a local slice of the replicated stacks) and gathers the gradients back.
The optimizer step and the aux-loss-free bias update (b += γ·sign(mean load − load), eq. 16 context, with
loads over the whole global batch) are those of train/step.py.

    step = make_pipeline_train_step(cfg, optimizer, train_cfg, mesh, "dualpipe", chunks=16)
    state, metrics = step(state, batch)           # same contract as make_train_step's function

Layouts. Outside the executor the state keeps train/layout.py's shardings (ZeRO: params and optimizer
moments split over fsdp by their `embed` dim, experts over `expert`); the optimizer update runs there, under
jit, so GSPMD partitions it. The executor's inputs are laid out per (rank, slot) and GSPMD gathers them from
that layout: inside the pipeline every rank holds its stages' full parameters, except that with
moe_impl="ep" and an expert axis > 1 the routed experts stay split over the expert axis and each MoE layer
dispatches/combines its tokens by all_to_all over it (V3 report §3.2: PP with EP; model_experts.py). With
other moe_impl the experts are replicated in a stage and the expert axis only splits the batch. The EP
layers' comm bytes are dropped (no comm metrics). cfg.remat is not applied (the executor's "recompute" mode
already recomputes each stage in B and W).
"""

from __future__ import annotations

import functools
import math

import jax

from dsv3_jax import sharding
from dsv3_jax.layers.moe.ep import make_expert_parallel
from dsv3_jax.parallel.pipeline import SCHEDULE_NAMES, make_schedule
from dsv3_jax.parallel.pipeline.executor import build_pipeline
from dsv3_jax.parallel.pipeline.model_experts import param_axes, zero_shared_tails
from dsv3_jax.parallel.pipeline.model_layout import (STACKS, auto_kind, merge_counts, merge_grads, split_shared,
                                                     split_stages, stage_layout)
from dsv3_jax.parallel.pipeline.model_stages import (make_first_fn, make_loss_fn, make_stage_fn, micro_batches,
                                                     working_weights)
from dsv3_jax.train import layout as train_layout
from dsv3_jax.train.state import TrainState
from dsv3_jax.train.step import apply_gradients, step_weights


def mesh_axes(mesh) -> tuple[str, tuple[str, ...]]:
    """(pipeline axis, data axes of size > 1) of `mesh`, from sharding.py's logical rules."""
    (pipe,) = sharding.mesh_axes_for("stage")
    if pipe not in mesh.shape:
        raise ValueError(f"mesh {dict(mesh.shape)} has no pipeline axis {pipe!r}")
    return pipe, tuple(a for a in sharding.batch_axes() if a in mesh.shape and mesh.shape[a] > 1)


def is_pipelined(mesh) -> bool:
    """True when the mesh's pipeline axis has more than one rank (the training loop's switch)."""
    pipe = mesh_axes(mesh)[0]
    return mesh.shape[pipe] > 1


def num_stages(schedule_name: str, pipe_size: int) -> int:
    """Model stages of a schedule on `pipe_size` ranks: DualPipeV folds 2 stages per rank into a V."""
    if schedule_name not in SCHEDULE_NAMES:
        raise ValueError(f"train.pipeline_schedule must be one of {SCHEDULE_NAMES}; got {schedule_name!r}")
    return 2 * pipe_size if schedule_name == "dualpipev" else pipe_size


def _check_model(cfg) -> None:
    if cfg.fp8 == "per_tensor_delayed":
        raise ValueError("ModelConfig.fp8='per_tensor_delayed' is not supported inside pipeline stages "
                         "(mesh.pipe > 1): its amax histories would need threading through the executor; "
                         "use fp8 'blockwise' (stateless) or 'none'")


def _expert_parallel(cfg, mesh, shared_tails=None):
    """(the stages' expert-parallel context, the executor's param_axes): with moe_impl="ep" and an expert axis
    > 1 the routed experts stay split over it inside the executor's shard_map (manual over every axis);
    shared_tails: the shared params' ZeRO split inside the executor (model_experts.zero_shared_tails)."""
    ctx = make_expert_parallel(cfg, mesh)
    if ctx.exchange == "local":
        return None, (None if shared_tails is None else param_axes(None, shared_tails))
    return ctx.inside_shard_map(), param_axes(ctx.axis, shared_tails)


def make_pipeline_loss(cfg, mesh, schedule_name: str, chunks: int, *, alpha: float, residuals="recompute",
                       layout: str = "auto"):
    """fn(params, router, batch, lam) -> (loss, aux, grads): step.loss_fn's value and its gradient, with aux =
    {ce, mtp, balance, counts}; `fn.pipeline` is the built Pipeline (its plan, ticks). chunks 0: 2·ranks.
    layout: model_layout.py's "blocks" or "moe"; "auto" = "blocks" when the layers split evenly."""
    _check_model(cfg)
    pipe, batch_axes = mesh_axes(mesh)
    stages = num_stages(schedule_name, mesh.shape[pipe])
    chunks = chunks or 2 * mesh.shape[pipe]
    layout = stage_layout(cfg, stages, auto_kind(cfg, stages) if layout == "auto" else layout)
    shards = math.prod(mesh.shape[a] for a in batch_axes)
    # The stacks move between the state's ZeRO layout and the executor's rows in explicit steps (relayout.py);
    # the shared params (embedding, prologue, head, MTP) stay ZeRO-split inside the executor.
    specs = train_layout.param_specs(cfg, mesh)
    place = (specs, mesh, pipe)
    tails = zero_shared_tails(specs, [k for k in specs if k not in {STACKS[kind] for kind in layout.slots}],
                              batch_axes) if batch_axes else None
    ctx, axes = _expert_parallel(cfg, mesh, tails)
    pipeline = build_pipeline(make_schedule(schedule_name, stages, chunks),
                              make_stage_fn(cfg, layout, alpha, shards, ctx),
                              make_loss_fn(cfg, alpha, shards, ctx, tails),
                              mesh=mesh, axis_name=pipe, first_fn=make_first_fn(cfg, layout, tails),
                              residuals=residuals, aux=True, batch_axes=batch_axes, param_axes=axes)

    def fn(params, router, batch, lam):
        inputs, targets = micro_batches(batch, chunks, cfg.mtp_depth, lam)
        staged = {STACKS[kind] for kind in layout.slots}   # their working copy moves, not the fp32 masters
        working = {k: working_weights(cfg, v) if k in staged else v for k, v in params.items()}
        stage_params, stage_consts = split_stages(layout, working, router, pipeline.rows, place)
        shared, shared_consts = split_shared(params, router, layout)
        out = pipeline.ranked(stage_params, shared, inputs, targets, (stage_consts, shared_consts))
        grads = merge_grads(layout, out.stage_grads, out.shared_grads, pipeline.home, place)
        counts = merge_counts(layout, out.stage_stats.get("counts"), out.last_stats, pipeline.home)
        aux = dict(ce=out.metrics["ce"], mtp=out.metrics["mtp"], balance=out.aux_loss + out.metrics["balance"],
                   counts=counts)
        return out.loss, aux, grads

    fn.pipeline = pipeline
    return fn


def pipeline_train_step(state: TrainState, batch, *, cfg, optimizer, train_cfg, loss_and_grads):
    """One optimizer step and one bias update (train/step.py's train_step); returns (new state, metrics)."""
    lam, gamma = step_weights(state.step, train_cfg)
    loss, aux, grads = loss_and_grads(state.params, state.router, batch, lam)
    return apply_gradients(state, loss, aux, grads, lam, gamma, cfg=cfg, optimizer=optimizer, train_cfg=train_cfg)


def make_pipeline_train_step(cfg, optimizer, train_cfg, mesh, schedule_name: str, chunks: int = 0,
                             state_sharding=None, batch_sharding=None, residuals: str = "recompute",
                             layout: str = "auto"):
    """jit(pipeline_train_step) with the state donated: make_train_step's contract on a mesh with pipe > 1.

    schedule_name: train.pipeline_schedule ("1f1b" | "zb1p" | "dualpipe" | "dualpipev"); chunks:
    train.pipeline_chunks, micro-batches per step (0: 2·pipe; DualPipe: even and >= 2·pipe; the batch size
    must be a multiple of chunks × the data-axis sizes). state_sharding/batch_sharding as make_train_step's
    (train/layout.py). residuals: "recompute" or "store" (see executor.py). layout: the stage layout
    (model_layout.py: "blocks", "moe", or "auto").
    """
    loss_and_grads = make_pipeline_loss(cfg, mesh, schedule_name, chunks, alpha=train_cfg.balance_alpha,
                                        residuals=residuals, layout=layout)
    step = functools.partial(pipeline_train_step, cfg=cfg, optimizer=optimizer, train_cfg=train_cfg,
                             loss_and_grads=loss_and_grads)
    if state_sharding is None:
        return jax.jit(step, donate_argnums=(0,))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return jax.jit(step, donate_argnums=(0,), in_shardings=(state_sharding, batch_sharding),
                   out_shardings=(state_sharding, replicated))
