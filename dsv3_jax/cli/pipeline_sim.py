"""`dsv3-pipeline-sim --schedule dualpipe --pp 8 --chunks 20 [--plot out.png]`: simulate a pipeline schedule and
print its report as JSON (bubble, memory; dsv3_jax/parallel/pipeline/simulate.py), optionally plotting the
timeline (plot.py, needs matplotlib)."""

from __future__ import annotations

import json

from dsv3_jax import config_args
from dsv3_jax.parallel.pipeline import simulate
from dsv3_jax.parallel.pipeline.plot import plot_timeline
from dsv3_jax.parallel.pipeline.schedules import SCHEDULE_NAMES, make_schedule


def run_cli(argv: list[str] | None = None) -> dict:
    """Parse flags, print the report as JSON (and write --plot), return the report."""
    p = config_args.make_parser("dsv3-pipeline-sim", __doc__)
    p.add_argument("--schedule", required=True, choices=SCHEDULE_NAMES)
    p.add_argument("--pp", type=int, required=True, help="pipeline stages (dualpipev runs them on pp/2 ranks)")
    p.add_argument("--chunks", type=int, required=True, help="micro-batches per step")
    p.add_argument("--f", type=float, default=1.0, help="forward chunk time")
    p.add_argument("--b", type=float, default=2.0, help="FULL backward chunk time (input + weight gradient)")
    p.add_argument("--w", type=float, default=1.0, help="weight-gradient chunk time")
    p.add_argument("--fb", type=float, default=None, help="overlapped F&B pair time (default f + b)")
    p.add_argument("--plot", default=None, help="write the timeline as a PNG here (needs matplotlib)")
    args, _ = config_args.parse(p, argv)
    try:
        durations = simulate.Durations(args.f, args.b, args.w, args.fb)
        out = simulate.report(args.schedule, args.pp, args.chunks, durations)
        if args.plot:
            plot_timeline(simulate.simulate(make_schedule(args.schedule, args.pp, args.chunks), durations), args.plot)
    except ValueError as e:
        p.error(str(e))
    print(json.dumps(out))
    return out


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (returns None so that `sys.exit(main())` exits 0)."""
    run_cli(argv)


if __name__ == "__main__":
    main()
