"""`dsv3-train --config=configs/tiny.py --workdir=runs/tiny [--config.train.steps=300]`: train, resuming from the
newest usable checkpoint of the workdir.

Only parses flags and calls `dsv3_jax.train.loop.train` (the CLI and the library share one code path). Multi-host:
start one process per host (or per GPU) with --coordinator_address=HOST:PORT --num_processes=N --process_id=I,
or the environment variables JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, or under SLURM /
Open MPI with none of them (parallel/distributed.py); the mesh comes from --config.mesh.*.

Output: the resolved config (stderr), then the data, a compile line, a line per train.log_every steps (loss,
tokens/s after compilation, TFLOP/s, MFU, ETA), an eval line per evaluation, a line per checkpoint and a summary
table (stdout); the numbers go to workdir/metrics.jsonl, workdir/summary.json and TensorBoard
(`tensorboard --logdir WORKDIR`). --config.train.profile_steps=[a,b] writes a jax.profiler trace of steps a..b
to WORKDIR/profile (TensorBoard's profile plugin from xprof, or ui.perfetto.dev). The persistent compilation
cache is on (train/compile_cache.py). On the CPU, glibc keeps freed memory for the next step
(train/host_memory.py: the step's temporaries are not page-faulted in again at every step); --system_malloc keeps
glibc's defaults.

Exit status: 0 when train.steps are done; 1 on bad input or a non-finite step (one `dsv3-train: error:` line,
naming the field or the last good checkpoint); 2 on unknown flags; 128 + the signal number (143 for SIGTERM,
130 for SIGINT) when a signal stopped the run after saving a checkpoint: rerun the same command to resume.
"""

from __future__ import annotations

import sys

from dsv3_jax import config_args


def make_parser():
    p = config_args.make_parser("dsv3-train", __doc__, config="required", log_info=True)
    p.add_argument("--workdir", metavar="DIR", help="directory for checkpoints, metrics and config.json; reused to resume")
    p.add_argument("--coordinator_address", metavar="HOST:PORT", help="multi-host: HOST:PORT of process 0")
    p.add_argument("--num_processes", type=int, metavar="N", help="multi-host: number of processes")
    p.add_argument("--process_id", type=int, metavar="I", help="multi-host: this process's index in [0, N)")
    add_compile_cache_flags(p)
    p.add_argument("--system_malloc", action="store_true", help="keep glibc's malloc defaults on the CPU (by default "
                   "freed memory is kept for the next step: train/host_memory.py)")
    return p


def setup_host_memory(args) -> bool:
    """Keep freed memory for the next step (train/host_memory.py) on a CPU run unless --system_malloc; whether
    it is on. Must run before JAX starts a backend."""
    from dsv3_jax.train import host_memory

    if args.system_malloc or not host_memory.runs_on_cpu():
        return False
    on = host_memory.keep_freed_memory()
    config_args.LOG.info("host malloc: %s", "freed memory kept for the next step (--system_malloc turns it off)"
                         if on else "glibc's defaults (no glibc here)")
    return on


def add_compile_cache_flags(p) -> None:
    p.add_argument("--compile_cache_dir", metavar="DIR", help="persistent XLA compilation cache (default: "
                   "$JAX_COMPILATION_CACHE_DIR, else ~/.cache/dsv3_jax/xla)")
    p.add_argument("--no_compile_cache", action="store_true", help="compile everything again (no cache)")


def setup_compile_cache(args) -> str | None:
    """The cache directory in use, or None with --no_compile_cache (logged at INFO)."""
    from dsv3_jax.train import compile_cache

    if args.no_compile_cache:
        compile_cache.disable()
        config_args.LOG.info("compilation cache: off (--no_compile_cache)")
        return None
    directory = compile_cache.enable(args.compile_cache_dir)
    config_args.LOG.info("compilation cache: %s (--no_compile_cache turns it off)", directory)
    return directory


def main(argv=None) -> None:
    """Console-script entry point: exits with the status above."""
    parser = make_parser()
    args, overrides = config_args.parse(parser, argv)
    try:
        if not args.workdir and not args.print_config:
            raise ValueError("--workdir=DIR is required (checkpoints and metrics go there)")
        exp = config_args.experiment(args, overrides)
        if args.print_config:
            config_args.print_config(exp)
            sys.exit(0)
    except ValueError as e:
        print(f"dsv3-train: error: {e}", file=sys.stderr)
        sys.exit(1)
    sys.exit(_train(exp, args))


def _train(exp, args) -> int:
    import signal

    import jax

    from dsv3_jax.analysis.flops import training_flops_per_token
    from dsv3_jax.analysis.hardware import peak_flops
    from dsv3_jax.parallel import distributed
    from dsv3_jax.train.loop import NonFiniteError, train

    setup_host_memory(args)  # before anything starts a backend: JAX's threads take their malloc arenas then
    setup_compile_cache(args)
    try:
        distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
        flops = training_flops_per_token(exp.model, exp.train.seq_len, include_mtp=True)
        peak = peak_flops(jax.devices()[0].device_kind, "bf16" if exp.model.fp8 == "none" else "fp8")
        summary = train(exp, args.workdir, flops_per_token=flops, peak_flops=peak)
    except (ValueError, NonFiniteError) as e:
        print(f"dsv3-train: error: {e}", file=sys.stderr)
        return 1
    interrupted = summary.get("interrupted")
    if interrupted:  # the loop printed where the checkpoint is; the status tells a scheduler to requeue
        return 128 + signal.Signals[interrupted].value
    return 0


if __name__ == "__main__":
    main()
