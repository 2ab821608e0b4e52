"""`dsv3-plan`: compile the real train / prefill / decode step of an experiment config on N fake CPU devices
(abstract arrays, nothing allocated) and report what one device needs (docs/paper.md §8).

    dsv3-plan --config=configs/deepseek_v3.py                   # the paper's training layout (its mesh block)
    dsv3-plan --config=configs/deepseek_v3.py --mesh=fsdp=8,expert=8 --batch=64 --seq_len=1024 --layers=1
    dsv3-plan --config=configs/deepseek_v3.py --program=serve --mesh=expert=64,tensor=4 --batch=256 --context=32768
    dsv3-plan ... --json                                         # one JSON object (keys below)
    python -m dsv3_jax.cli.plan ...                              # the same

Programs: `train` (train/step.py), `pipeline` (train/pipeline_step.py, chosen when the mesh has pipe > 1),
`serve` (a prefill chunk and a decode step with the latent cache; plan_programs.py). `--layers=m` compiles
with m and m+1 MoE layers and extrapolates to the config's depth (parallel/plan/extrapolate.py).
JSON: {"plans": [...], "devices", "mesh", "wall_seconds"} plus the first plan's keys at the top level; a plan
has per_device_bytes {argument, output, alias, temp, total}, analytic_bytes_per_device, xla_over_analytic,
involuntary_rematerializations [{op, shape, from, to, path}], collectives [{kind, bytes, executions,
group_size, wire_bytes, op, path}], collective_totals, flops_per_device, time_bounds, device_memory_bytes,
fits (and per_layer, depths when extrapolated).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

from dsv3_jax import config_args
from dsv3_jax.cli.report import load_config
from dsv3_jax.parallel.plan import hardware
from dsv3_jax.parallel.plan.spawn import run_worker

PROGRAMS = ("auto", "train", "pipeline", "serve")
AXES = ("data", "fsdp", "expert", "pipe", "tensor")


def parse_mesh(text: str | None) -> dict[str, int] | None:
    """'fsdp=8,expert=8' -> {'fsdp': 8, 'expert': 8}; None / '' -> None (the config's mesh block)."""
    if not text:
        return None
    out = {}
    for part in text.split(","):
        name, _, size = part.partition("=")
        if name.strip() not in AXES or not size.strip().isdigit() or int(size) < 1:
            raise ValueError(f"--mesh: expected axis=size pairs over {AXES} with positive sizes, got {text!r}")
        out[name.strip()] = int(size)
    return out


def make_parser() -> argparse.ArgumentParser:
    p = config_args.make_parser("dsv3-plan", __doc__, config="required")
    p.add_argument("--program", default="auto", choices=PROGRAMS)
    p.add_argument("--mesh", default=None, help="axis=size,... (default: the config's mesh block)")
    p.add_argument("--batch", type=int, default=0, help="global batch in sequences (default: train.batch_size)")
    p.add_argument("--seq_len", type=int, default=0, help="training sequence length (default: train.seq_len)")
    p.add_argument("--schedule", default=None, help="pipeline schedule (default: train.pipeline_schedule)")
    p.add_argument("--chunks", type=int, default=-1, help="pipeline micro-batches (default: train.pipeline_chunks)")
    p.add_argument("--residuals", default=None, help="pipeline residuals: recompute | store")
    p.add_argument("--fp8", default=None, help="ModelConfig.fp8 override (none, blockwise, ...)")
    p.add_argument("--moe_impl", default=None, help="ModelConfig.moe_impl override (default: ep on an expert axis)")
    p.add_argument("--ep_dispatch", default=None, help="ModelConfig.ep_dispatch override (default: rounds)")
    p.add_argument("--remat", default=None, help="ModelConfig.remat override: none, full, dots, dots_no_batch or "
                                                 "paper (V3's RMSNorm + MLA up-projection recompute; "
                                                 "layers/block.py REMAT_POLICIES)")
    p.add_argument("--layers", type=int, default=0, help="compile with this many MoE layers (and one more) and "
                                                         "extrapolate to the config's depth")
    p.add_argument("--context", type=int, default=32768, help="serve: cache slots per sequence")
    p.add_argument("--prompt", type=int, default=1024, help="serve: tokens per prefill chunk")
    p.add_argument("--accelerator", default="h800", help=f"one of {sorted(hardware.ACCELERATORS)}")
    p.add_argument("--device_memory", default=None, help="device memory for the verdict (default: the "
                                                         "accelerator's, e.g. 80GB)")
    p.add_argument("--buffers", type=int, default=10, help="list this many of the largest buffers and of those live "
                                                           "at the peak (XLA's buffer assignment; 0: no dump)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds the compile worker may take")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p


def parse_args(argv=None) -> argparse.Namespace:
    """The flags, with the --config.BLOCK.FIELD=VALUE overrides as args.config_overrides."""
    args, overrides = config_args.parse(make_parser(), argv)
    args.config_overrides = list(overrides)
    return args


def build_request(args) -> dict:
    """The worker's request from the flags, validated (errors name the flag)."""
    if not args.config:
        raise ValueError("--config: an experiment config file is required")
    cd = load_config(args.config, args.config_overrides)
    mesh = parse_mesh(args.mesh) or {k: int(v) for k, v in cd.mesh.items()}
    if any(v < 1 for v in mesh.values()):
        raise ValueError(f"--mesh: the config's mesh block {mesh} has a -1 axis; give --mesh explicitly")
    acc = hardware.accelerator(args.accelerator)
    device_memory = hardware.parse_bytes(args.device_memory) if args.device_memory else acc.memory_bytes
    program = args.program
    if program == "auto":
        program = "pipeline" if mesh.get("pipe", 1) > 1 else "train"
    if program == "pipeline" and mesh.get("pipe", 1) < 2:
        raise ValueError(f"--program=pipeline needs a mesh with pipe > 1, got {mesh}")
    if program == "train" and mesh.get("pipe", 1) > 1:
        raise ValueError(f"--program=train runs without a pipeline; the mesh {mesh} has pipe > 1")
    if args.layers < 0 or (args.layers and program == "pipeline"):
        raise ValueError("--layers: a positive MoE layer count, for train/serve plans (a pipeline is planned at "
                         "full depth: its compile does not grow with depth)")
    t = cd.train
    return dict(config=args.config, config_overrides=args.config_overrides, program=program, mesh=mesh, batch=args.batch or int(t.batch_size),
                seq_len=args.seq_len or int(t.seq_len), schedule=args.schedule or t.get("pipeline_schedule", "dualpipe"),
                chunks=args.chunks if args.chunks >= 0 else int(t.get("pipeline_chunks", 0)),
                residuals=args.residuals or t.get("pipeline_residuals", "recompute"),
                overrides={k: v for k, v in (("fp8", args.fp8), ("moe_impl", args.moe_impl),
                                             ("ep_dispatch", args.ep_dispatch), ("remat", args.remat)) if v},
                layers=args.layers, context=args.context, prompt=args.prompt, accelerator=args.accelerator,
                device_memory=device_memory)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        from dsv3_jax.cli.plan_worker import work
        return work(args.worker)
    try:
        if args.print_config:
            config_args.print_config(config_args.experiment(args, args.config_overrides))
            return 0
        request = build_request(args)
    except ValueError as e:
        sys.stderr.write(f"dsv3-plan: error: {e}\n")
        return 2
    t0 = time.perf_counter()
    n = math.prod(request["mesh"].values())
    request["buffers"] = args.buffers
    try:
        result = run_worker("dsv3_jax.cli.plan", request, n, timeout=args.timeout, dump=args.buffers > 0)
    except RuntimeError as e:  # the worker's stderr tail: its error names the flag (e.g. --layers)
        sys.stderr.write(f"dsv3-plan: error: {e}\n")
        return 1
    result.update(devices=n, mesh=request["mesh"], wall_seconds=time.perf_counter() - t0)
    if args.json:
        top = dict(result["plans"][0]) if result["plans"] else {}
        sys.stdout.write(json.dumps({**top, **result}, indent=1) + "\n")
    else:
        from dsv3_jax.parallel.plan.report import table
        sys.stdout.write(f"dsv3-plan {args.config}: {n} fake CPU devices, mesh {request['mesh']}, "
                         f"{result['wall_seconds']:.0f} s\n")
        for entry in result["plans"]:
            sys.stdout.write(table(entry) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
