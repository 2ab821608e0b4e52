"""Pipeline bubbles for the report: V3 report Table 2 (DualPipe README) vs the schedule simulator.

The formulas and the simulator live in dsv3_jax/parallel/pipeline (formulas.py, simulate.py); this module only
adapts them to report rows. Durations follow the DualPipe README notation: F forward chunk, B FULL backward,
W its weight-gradient part, F&B an overlapped pair (default F + B). The simulated bubble equals the formula
exactly when B - W == F and W <= F (and max(F, B) <= F&B <= F + B for DualPipe); otherwise the simulator is
the exact bubble of the schedule and the formula an approximation (simulate.py's docstring).
"""

from __future__ import annotations

from dsv3_jax.parallel.pipeline import simulate as sim

LABELS = {"1f1b": "1F1B", "zb1p": "ZB1P", "dualpipe": "DualPipe", "dualpipev": "DualPipeV"}


def bubble_rows(pp: int, chunks: int, f: float, b: float, w: float, fb: float | None = None) -> list[dict]:
    """For every schedule: {'schedule', 'formula', 'simulated', 'assumptions_hold', 'peak_activations',
    'formula_activations', 'devices'} from `simulate.report`."""
    durations = sim.Durations(f=f, b=b, w=w, fb=fb)
    out = []
    for name, label in LABELS.items():
        r = sim.report(name, pp, chunks, durations)
        out.append({"schedule": label, "formula": r["formula_bubble"], "simulated": r["bubble"],
                    "assumptions_hold": r["formula_assumptions_hold"], "peak_activations": r["peak_activations"],
                    "formula_activations": r["formula_activations"], "devices": r["devices"]})
    return out
