"""Pipeline bubbles for the report: V3 report Table 2 (DualPipe README) vs the schedule simulator.

The formulas and the simulator live in dsv3_jax/parallel/pipeline (formulas.py, simulate.py); this module only
adapts them to report rows. Durations follow the DualPipe README notation: F forward chunk, B FULL backward,
W its weight-gradient part, F&B an overlapped pair (default F + B). The simulated bubble equals the formula
exactly when B - W == F and W <= F (and max(F, B) <= F&B <= F + B for DualPipe); otherwise the simulator is
the exact bubble of the schedule and the formula an approximation (simulate.py's docstring).

If the pipeline package is absent, `simulator_available()` is False and the report marks the table pending.
"""

from __future__ import annotations

import importlib
import importlib.util

SIMULATOR = "dsv3_jax.parallel.pipeline.simulate"
LABELS = {"1f1b": "1F1B", "zb1p": "ZB1P", "dualpipe": "DualPipe", "dualpipev": "DualPipeV"}


def simulator_available() -> bool:
    """True when dsv3_jax/parallel/pipeline/simulate.py exists (its import errors then propagate)."""
    try:
        return importlib.util.find_spec(SIMULATOR) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def bubble_rows(pp: int, chunks: int, f: float, b: float, w: float, fb: float | None = None) -> list[dict]:
    """For every schedule: {'schedule', 'formula', 'simulated', 'assumptions_hold', 'peak_activations',
    'formula_activations', 'devices'} from `simulate.report`."""
    sim = importlib.import_module(SIMULATOR)
    durations = sim.Durations(f=f, b=b, w=w, fb=fb)
    out = []
    for name, label in LABELS.items():
        r = sim.report(name, pp, chunks, durations)
        out.append({"schedule": label, "formula": r["formula_bubble"], "simulated": r["bubble"],
                    "assumptions_hold": r["formula_assumptions_hold"], "peak_activations": r["peak_activations"],
                    "formula_activations": r["formula_activations"], "devices": r["devices"]})
    return out
