"""Compile-time planning: what one device needs for a real-size step, measured by XLA on fake CPU devices
(docs/paper.md §8). The `dsv3-plan` command (dsv3_jax/cli/plan.py) builds the programs; this package measures
them, one concept per module:

    spawn.py        run the worker in a fresh Python with N fake CPU devices (--xla_force_host_platform_...)
    measure.py      lower + compile on abstract arrays: memory analysis, FLOPs, collectives, rematerializations
    hlo.py          the optimized HLO's collectives (bytes, executions with loop trip counts) and dot FLOPs
    xla_log.py      capture the SPMD partitioner's log; its "Involuntary full rematerialization" records
    buffers.py      XLA's buffer assignment: the largest buffers, those live at the peak, CPU-only upcasts
    extrapolate.py  full depth from two reduced depths (per-layer deltas)
    hardware.py     H800 / H100 / H200 peaks and sizes, --device_memory parsing
    report.py       one program's plan entry (JSON) and its table, time bounds, verdict
"""
