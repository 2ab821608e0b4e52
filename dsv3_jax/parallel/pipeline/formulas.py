"""The published comparison table (github deepseek-ai/DualPipe README; DeepSeek-V3 report Table 2; docs/paper.md §4).

| method    | bubble               | params/device | activations/device | devices |
| 1F1B      | (PP-1)(F+B)          | 1x            | PP                 | PP      |
| ZB1P      | (PP-1)(F+B-2W)       | 1x            | PP                 | PP      |
| DualPipe  | (PP/2-1)(F&B+B-3W)   | 2x            | PP+1               | PP      |
| DualPipeV | (PP/2-1)(F&B+B-3W)   | 2x            | PP+1               | PP/2    |

F: forward chunk, B: FULL backward chunk (input + weight gradient), W: weight-gradient part, F&B: an
overlapped forward+backward pair. PP is the number of pipeline stages. Parameters are counted in units of
one stage's parameters, activations in units of one stage's activations for one micro-batch.
"""

from __future__ import annotations

from dsv3_jax.parallel.pipeline.schedules import SCHEDULE_NAMES


def _check(name: str, pp: int) -> None:
    if name not in SCHEDULE_NAMES:
        raise ValueError(f"name must be one of {SCHEDULE_NAMES}; got {name!r}")
    if not isinstance(pp, int) or pp < 1:
        raise ValueError(f"pp must be an int >= 1; got {pp!r}")


def formula_bubble(name: str, pp: int, f: float, b: float, w: float, fb: float) -> float:
    """Published bubble of schedule `name` with PP = pp stages."""
    _check(name, pp)
    if name == "1f1b":
        return (pp - 1) * (f + b)
    if name == "zb1p":
        return (pp - 1) * (f + b - 2 * w)
    return (pp / 2 - 1) * (fb + b - 3 * w)


def formula_param_copies(name: str) -> int:
    """Stage-parameter sets per device: 1x, or 2x for DualPipe (two copies) and DualPipeV (two stages)."""
    _check(name, 1)
    return 2 if name in ("dualpipe", "dualpipev") else 1


def formula_activations(name: str, pp: int) -> int:
    """Peak in-flight micro-batch activations per device: PP, or PP+1 for DualPipe/DualPipeV."""
    _check(name, pp)
    return pp + 1 if name in ("dualpipe", "dualpipev") else pp


def formula_devices(name: str, pp: int) -> int:
    """Devices used: PP, or PP/2 for DualPipeV."""
    _check(name, pp)
    return pp // 2 if name == "dualpipev" else pp


def formula_assumptions(name: str, f: float, b: float, w: float, fb: float, tol: float = 1e-9) -> bool:
    """Whether the durations satisfy the conditions under which the simulated bubble equals the formula.

    1F1B: always. ZB1P: W <= F <= B-W (the input-gradient pass B-W is at least as long as the forward).
    DualPipe(V): W <= F == B-W and max(F, B) <= F&B <= F+B. Found with simulate.py over random durations and
    checked in tests/parallel/pipeline/test_simulate.py (chunks >= PP for ZB1P).
    """
    _check(name, 1)
    if name == "1f1b":
        return True
    if name == "zb1p":
        return w <= f + tol and b - w >= f - tol
    return w <= f + tol and abs((b - w) - f) <= tol and max(f, b) - tol <= fb <= f + b + tol
