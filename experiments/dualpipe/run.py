"""Bubble and memory of 1F1B, ZB1P, DualPipe and DualPipeV, simulated with DeepSeek-V3's measured chunk times.

Durations: Insights into DeepSeek-V3 (arXiv 2505.09343) Table 4, 2048 H800: 1F 1.13 s, 1B 1.99 s, 1W 0.48 s,
read in DualPipe's notation (B = full backward, so a split B takes B - W = 1.51 s). The overlapped F&B pair is
taken as F + B = 3.12 s (overlap hides communication, not compute; the simulator has no communication), and
a second bubble column uses F&B = 2.5 s for an illustrative 20% overlap gain. The DualPipe formula is exact
only when B - W == F (simulate.py); here B - W = 1.51 > F = 1.13, so the simulated DualPipe bubble is lower
than the formula, while 1F1B and ZB1P (exact for W <= F <= B - W) match theirs.

    python experiments/dualpipe/run.py            # writes table.md and timeline PNGs next to this file
"""

from __future__ import annotations

import argparse
import os

from dsv3_jax.parallel.pipeline import formulas, make_schedule
from dsv3_jax.parallel.pipeline.schedules import SCHEDULE_NAMES
from dsv3_jax.parallel.pipeline.simulate import Durations, simulate

F, B, W = 1.13, 1.99, 0.48          # Insights Table 4
FB, FB_OVERLAP = F + B, 2.5
PPS = (4, 8, 16)
PLOTS = {name: (8, 20) for name in SCHEDULE_NAMES}   # (PP, chunks) of DualPipe's README figure


def rows():
    """One dict per (schedule, PP, chunks)."""
    out = []
    for pp in PPS:
        for chunks in (2 * pp, 3 * pp, 4 * pp):
            for name in SCHEDULE_NAMES:
                sched = make_schedule(name, pp, chunks)
                tl = simulate(sched, Durations(F, B, W, FB))
                tl_ov = simulate(sched, Durations(F, B, W, FB_OVERLAP))
                out.append(dict(
                    name=name, pp=pp, devices=sched.num_ranks, chunks=chunks, bubble=tl.bubble,
                    formula=formulas.formula_bubble(name, pp, F, B, W, FB), bubble_ov=tl_ov.bubble,
                    formula_ov=formulas.formula_bubble(name, pp, F, B, W, FB_OVERLAP),
                    makespan=tl.makespan, share=tl.bubble / tl.makespan, act=max(tl.peak_activations),
                    act_formula=formulas.formula_activations(name, pp), params=tl.param_copies))
    return out


def table(data) -> str:
    head = ("| schedule | PP | devices | chunks | bubble (s) | formula (s) | bubble, F&B 2.5 (s) | formula (s) "
            "| makespan (s) | bubble/makespan | peak act. (formula) | params |")
    lines = [head, "|" + "---|" * 12]
    for r in data:
        lines.append(f"| {r['name']} | {r['pp']} | {r['devices']} | {r['chunks']} | {r['bubble']:.2f} | "
                     f"{r['formula']:.2f} | {r['bubble_ov']:.2f} | {r['formula_ov']:.2f} | {r['makespan']:.2f} | "
                     f"{100 * r['share']:.1f}% | {r['act']} ({r['act_formula']}) | {r['params']}x |")
    return "\n".join(lines) + "\n"


def plots(out_dir: str) -> list[str]:
    from dsv3_jax.parallel.pipeline.plot import plot_timeline
    paths = []
    for name, (pp, chunks) in PLOTS.items():
        path = os.path.join(out_dir, f"timeline_{name}.png")
        plot_timeline(simulate(make_schedule(name, pp, chunks), Durations(F, B, W, FB)), path, dpi=80)
        paths.append(path)
    return paths


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)), help="output directory")
    p.add_argument("--no_plots", "--no-plots", action="store_true", help="skip the PNG timelines (no matplotlib needed)")
    args = p.parse_args(argv)
    text = table(rows())
    with open(os.path.join(args.out, "table.md"), "w", encoding="utf-8") as f:
        f.write(text)
    print(text)
    if not args.no_plots:
        for path in plots(args.out):
            print(f"wrote {path} ({os.path.getsize(path) // 1024} KB)")


if __name__ == "__main__":
    main()
