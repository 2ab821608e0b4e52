"""Pipeline parallelism: schedules (1F1B, ZB1P, DualPipe, DualPipeV), a timeline simulator and a
shard_map executor. Spec: docs/paper.md §4 (github deepseek-ai/DualPipe; DeepSeek-V3 report Table 2).

    from dsv3_jax.parallel.pipeline import make_schedule
    from dsv3_jax.parallel.pipeline.simulate import Durations, simulate
    schedule = make_schedule("dualpipe", pp=8, chunks=20)       # plain data, per-rank op lists
    timeline = simulate(schedule, Durations(f=1, b=2, w=1, fb=2.5))
    timeline.bubble, timeline.peak_activations

simulate.py (a `python -m` CLI) and executor.py (jax) are imported explicitly, not from here. The executor's
per-rank program is program.py (tick scan) and stage_math.py (F/B/W/F&B branches); model_layout.py and
model_stages.py cut DeepSeekV3 into stages, model_experts.py keeps their routed experts split over the
expert axis (moe_impl="ep"); train/pipeline_step.py is the pipelined train step.
"""

from dsv3_jax.parallel.pipeline.ops import Op, Schedule, check_schedule, dependencies
from dsv3_jax.parallel.pipeline.schedules import (SCHEDULE_NAMES, dualpipe, dualpipev, make_schedule,
                                                  one_f_one_b, zb1p)


__all__ = ["Op", "Schedule", "check_schedule", "dependencies", "SCHEDULE_NAMES", "dualpipe", "dualpipev",
           "make_schedule", "one_f_one_b", "zb1p"]
