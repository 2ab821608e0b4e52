"""The `dsv3-plan` worker: runs inside the process parallel/plan/spawn.py starts with N fake CPU devices, builds
the requested programs (plan_programs.py), measures them (parallel/plan/measure.py), extrapolates reduced
depths (parallel/plan/extrapolate.py) and writes the plan entries (parallel/plan/report.py) as JSON.

Defaults for a mesh with an expert axis > 1: moe_impl="ep" with the bounded "rounds" exchange
(layers/moe/ep_rounds.py: the same program on CPU and GPU, so the CPU compile has the GPU's memory shape).
"""

from __future__ import annotations

import json
import math
import os

from dsv3_jax import sharding
from dsv3_jax.analysis import memory as analytic
from dsv3_jax.cli import plan_programs
from dsv3_jax.cli.report import load_config
from dsv3_jax.experiment_config import model_config
from dsv3_jax.parallel.layout import setup_mesh
from dsv3_jax.parallel.plan import hardware, hlo, report
from dsv3_jax.parallel.plan.extrapolate import extrapolate
from dsv3_jax.parallel.plan.measure import measure
from dsv3_jax.parallel.plan.spawn import DUMP_ENV, write_result


def _measure(req, prog):
    return measure(prog.name, prog.jitted, prog.args, ticks=prog.ticks, dump_dir=os.environ.get(DUMP_ENV),
                   n_buffers=req.get("buffers") or 12)


def model_for(req: dict, cd, n_moe: int | None = None):
    """The ModelConfig of the request: overrides, EP defaults on an expert axis, optionally n_moe MoE layers."""
    cfg = model_config(cd)
    over = dict(req["overrides"])
    if cfg.n_moe_layers and over.get("moe_impl", cfg.moe_impl) in ("auto", "ragged", "ep"):
        # The GPU program on CPU: the bounded EP exchange's batched einsum over the local experts (also on one
        # device) instead of ragged_dot, which XLA:CPU lowers densely (docs/paper.md §8).
        over.setdefault("moe_impl", "ep")
        over.setdefault("ep_dispatch", "rounds")
    if n_moe is not None:
        over["n_layers"] = cfg.n_dense_layers + n_moe
    return cfg.replace(**over)


def build(req: dict, cd, cfg):
    """(mesh, cfg, programs) for the request."""
    mesh, cfg = setup_mesh(req["mesh"], cfg, req["batch"])
    if req["program"] == "train":
        return mesh, cfg, [plan_programs.train_program(cfg, cd.train, mesh, req["seq_len"], req["batch"])]
    if req["program"] == "pipeline":
        return mesh, cfg, [plan_programs.pipeline_program(cfg, cd.train, mesh, req["seq_len"], req["batch"],
                                                          req["schedule"], req["chunks"], req["residuals"])]
    return mesh, cfg, plan_programs.serving_programs(cfg, mesh, req["batch"], req["context"], req["prompt"])


def _entry(req, prog, cfg, full_cfg, memory, flops, totals, collectives, remats, extra):
    acc = hardware.accelerator(req["accelerator"])
    moe_layers = full_cfg.n_moe_layers + (full_cfg.mtp_depth if full_cfg.n_moe_layers else 0)
    extra = dict(extra, training=req["program"] in ("train", "pipeline"))
    return report.plan_entry(prog.name, memory, flops, totals, collectives, remats, prog.analytic,
                             req["device_memory"], acc, cfg.fp8 != "none", full_cfg, prog.tokens_per_device,
                             moe_layers, prog.notes, extra)


def plan(req: dict) -> dict:
    cd = load_config(req["config"], req.get("config_overrides", ()))
    full = model_for(req, cd)
    if not req["layers"]:
        mesh, cfg, progs = build(req, cd, full)
        entries = []
        for p in progs:
            m = _measure(req, p)
            entries.append(_entry(req, p, cfg, cfg, m.memory(), m.flops, hlo.totals(m.collectives),
                                  report.collective_list(m.collectives), m.remats,
                                  {"compile_seconds": m.compile_s, "xla_cost_analysis_flops": m.xla_flops,
                                   "largest_buffers": m.buffers}))
        return {"plans": entries}
    low, high = req["layers"], req["layers"] + 1
    runs = {}
    for depth in (low, high):
        mesh, cfg, progs = build(req, cd, model_for(req, cd, depth))
        runs[depth] = (cfg, progs, [_measure(req, p) for p in progs])
    entries = []
    for i, prog in enumerate(runs[high][1]):
        a, b = runs[low][2][i], runs[high][2][i]
        ex = extrapolate(a, b, low, high, full.n_moe_layers)
        full_prog = plan_programs.Program(prog.name, None, (), _analytic_full(req, cd, full, i),
                                          prog.tokens_per_device, prog.notes + [f"extrapolated from {low} and {high} MoE layers to "
                                                        f"{full.n_moe_layers} (per-layer deltas)"])
        extra = {"per_layer": ex["per_layer"], "depths": ex["depths"],
                 "measured": {str(low): a.memory(), str(high): b.memory()},
                 "compile_seconds": a.compile_s + b.compile_s, "largest_buffers": b.buffers}
        entries.append(_entry(req, full_prog, runs[high][0], full, ex["memory"], ex["flops"], ex["collective_totals"],
                              report.collective_list(b.collectives), a.remats + b.remats, extra))
    return {"plans": entries}


def _analytic_full(req, cd, full_cfg, index: int) -> dict:
    """The analytic estimate at the config's full depth (computed without compiling anything)."""
    sizes = {a: int(req["mesh"].get(a, 1)) for a in sharding.MESH_AXES}
    shards = math.prod(sizes[a] for a in sharding.batch_axes())
    if req["program"] == "train":
        return analytic.plan_training_memory(full_cfg, sizes, req["seq_len"], req["batch"] // shards,
                                             cd.train.get("bf16_moments", False))
    mesh, cfg, progs = build(req, cd, full_cfg)  # serving estimates read the abstract arrays' shardings
    return progs[index].analytic


def work(request_path: str) -> int:
    with open(request_path, encoding="utf-8") as f:
        req = json.load(f)
    write_result(plan(req))
    return 0
