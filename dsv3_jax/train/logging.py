"""Observability files: metrics.jsonl + TensorBoard event files + summary.json (the console is console.py).

metrics.jsonl holds one strict-JSON object per line, {"step", "kind": "train" | "eval", metric: value, ...}: a
NaN/inf value is written as null and its name listed under "nonfinite". Each step appears once per kind: a
resumed run first drops the rows past the step it resumed from (written by the interrupted run after its
last checkpoint; a line cut off by kill -9 is dropped too), and TensorBoard is told to purge those steps
(SummaryWriter purge_step).
"""

from __future__ import annotations

import json
import math
import os

import numpy as np


def to_python(metrics: dict) -> dict:
    """Scalars to floats, per-layer vectors to lists; NaN/inf to None, their names under "nonfinite"."""
    out, bad = {}, []
    for k, v in metrics.items():
        a = np.asarray(v, dtype=float)
        if not np.all(np.isfinite(a)):
            bad.append(k)
        clean = lambda x: float(x) if math.isfinite(x) else None
        out[k] = clean(float(a)) if a.ndim == 0 else [clean(x) for x in a.reshape(-1).tolist()]
    if bad:
        out["nonfinite"] = bad
    return out


def truncate_rows(path: str, last_step: int) -> int:
    """Keep the rows of a metrics.jsonl with step <= last_step (and drop unparsable lines); returns how many
    rows were dropped. Atomic: the file is rewritten to a temporary name and renamed."""
    if not os.path.exists(path):
        return 0
    kept, dropped = [], 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
                keep = isinstance(row, dict) and int(row["step"]) <= last_step
            except (ValueError, KeyError, TypeError):
                keep = False
            if keep:
                kept.append(line if line.endswith("\n") else line + "\n")
            else:
                dropped += 1
    if dropped:
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.writelines(kept)
        os.replace(path + ".tmp", path)
    return dropped


class MetricsWriter:
    """Appends rows to workdir/metrics.jsonl and scalars to TensorBoard (tensorboardX) event files.
    `resume_step`: the step the run starts from (0 for a fresh run); later rows are dropped first."""

    def __init__(self, workdir: str, resume_step: int = 0):
        os.makedirs(workdir, exist_ok=True)
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.dropped = truncate_rows(self.path, resume_step)
        self._file = open(self.path, "a", encoding="utf-8")
        try:
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=resume_step + 1)
        except ImportError:  # tensorboardX is a dependency; keep jsonl working if it is missing
            self._tb = None

    def write(self, step: int, metrics: dict, prefix: str = "train"):
        row = {"step": step, "kind": prefix, **to_python(metrics)}
        self._file.write(json.dumps(row, allow_nan=False) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k in ("step", "kind", "nonfinite") or v is None:
                    continue
                for i, x in (enumerate(v) if isinstance(v, list) else [(None, v)]):
                    if x is not None:
                        self._tb.add_scalar(f"{prefix}/{k}" + ("" if i is None else f"/{i}"), x, step)

    def close(self):
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def write_summary(workdir: str, summary: dict) -> str:
    """workdir/summary.json: the end-of-run numbers (final eval, step, throughput) as strict JSON."""
    path = os.path.join(workdir, "summary.json")
    row = to_python({k: v for k, v in summary.items() if not isinstance(v, str)})
    row.update({k: v for k, v in summary.items() if isinstance(v, str)})
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(row, f, indent=1, allow_nan=False)
    os.replace(path + ".tmp", path)
    return path
