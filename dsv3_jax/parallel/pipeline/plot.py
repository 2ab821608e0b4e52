"""Timeline PNG in the style of the schedule figure of github deepseek-ai/DualPipe (README, images/schedules.png).

One row per device, time to the right; F, B, split B ("backward for input") and W cells in their own colours,
an overlapped F&B pair as one cell with a heavy black border. Cells of a rank's second parameter slot
(DualPipe's reverse direction, DualPipeV's return leg of the V) are drawn lighter. Labels are micro-batch ids,
counted per direction for DualPipe as in the figure. matplotlib is imported lazily (`pip install matplotlib`).
"""

from __future__ import annotations

from dsv3_jax.parallel.pipeline.ops import Op, Schedule
from dsv3_jax.parallel.pipeline.simulate import Timeline

COLORS = {  # (slot 0, slot 1)
    "F": ("#f4a340", "#fbd7a6"),
    "B": ("#4caf50", "#a8d8aa"),
    "Bs": ("#26a69a", "#9fd9d3"),
    "W": ("#5c6bc0", "#b3bbe6"),
}


def _mb_label(schedule: Schedule, mb: int) -> str:
    if schedule.placement == "dual":
        return str(mb % (schedule.chunks // 2))
    return str(mb)


def _cells(schedule: Schedule, op: Op, start: float, end: float) -> list[tuple[float, float, str, str]]:
    """(start, width, colour, label) for each half of an op (an FB has two halves)."""
    if op.kind == "FB":
        mid = start + (end - start) / 2
        return (_cells(schedule, Op("F", op.mb, op.stage), start, mid)
                + _cells(schedule, Op("B", op.b_mb, op.b_stage), mid, end))
    key = "Bs" if op.split else op.kind
    slot = schedule.locate(op.mb, op.stage)[1]
    return [(start, end - start, COLORS[key][slot], _mb_label(schedule, op.mb))]


def plot_timeline(timeline: Timeline, path: str, dpi: int = 90) -> None:
    """Render `timeline` to a PNG at `path`."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch, Rectangle
    except ImportError as e:
        raise ImportError("plotting needs matplotlib: pip install matplotlib") from e
    sch = timeline.schedule
    fig, ax = plt.subplots(figsize=(min(4 + timeline.makespan * 0.16, 22), 1.2 + 0.42 * sch.num_ranks))
    for r, entries in enumerate(timeline.entries):
        for e in entries:
            for x, wdt, col, lab in _cells(sch, e.op, e.start, e.end):
                ax.add_patch(Rectangle((x, r + 0.1), wdt, 0.8, facecolor=col, edgecolor="#555555", lw=0.4))
                if wdt >= 0.6:
                    ax.text(x + wdt / 2, r + 0.5, lab, ha="center", va="center", fontsize=6)
            if e.op.kind == "FB":
                ax.add_patch(Rectangle((e.start, r + 0.1), e.end - e.start, 0.8, fill=False, lw=1.4))
    ax.set_xlim(0, timeline.makespan)
    ax.set_ylim(sch.num_ranks, 0)
    ax.set_yticks([r + 0.5 for r in range(sch.num_ranks)], [f"Device {r}" for r in range(sch.num_ranks)])
    ax.set_xlabel("time")
    ax.set_title(f"{sch.name}: {sch.num_stages} stages, {sch.num_ranks} devices, {sch.chunks} micro-batches; "
                 f"bubble {timeline.bubble:.3g}, makespan {timeline.makespan:.3g}", fontsize=9)
    handles = [Patch(facecolor=COLORS[k][0], label=t) for k, t in
               (("F", "forward"), ("B", "backward"), ("Bs", "backward for input"), ("W", "backward for weights"))]
    handles.append(Patch(facecolor="white", edgecolor="black", lw=1.4, label="overlapped F&B"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.12 - 1.2 / sch.num_ranks),
              ncol=5, fontsize=7, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
