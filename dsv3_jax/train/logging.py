"""Observability: metrics.jsonl + TensorBoard event files, and a one-line progress bar."""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np


def to_python(metrics: dict) -> dict:
    """Scalars to floats, per-layer vectors to lists (JSON-friendly)."""
    out = {}
    for k, v in metrics.items():
        a = np.asarray(v)
        out[k] = float(a) if a.ndim == 0 else a.astype(float).tolist()
    return out


class MetricsWriter:
    """Appends rows to workdir/metrics.jsonl and scalars to TensorBoard (tensorboardX) event files."""

    def __init__(self, workdir: str):
        os.makedirs(workdir, exist_ok=True)
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._file = open(self.path, "a", encoding="utf-8")
        try:
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
        except ImportError:  # tensorboardX is a dependency; keep jsonl working if it is missing
            self._tb = None

    def write(self, step: int, metrics: dict, prefix: str = "train"):
        row = {"step": step, "kind": prefix, **to_python(metrics)}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k in ("step", "kind"):
                    continue
                if isinstance(v, list):
                    for i, x in enumerate(v):
                        self._tb.add_scalar(f"{prefix}/{k}/{i}", x, step)
                else:
                    self._tb.add_scalar(f"{prefix}/{k}", v, step)

    def close(self):
        self._file.close()
        if self._tb is not None:
            self._tb.close()


class Progress:
    """`step/total loss tok/s lr ETA`, redrawn in place on a terminal, one line per update otherwise."""

    def __init__(self, total: int, start: int, tokens_per_step: int, stream=sys.stderr):
        self.total, self.start, self.tokens_per_step, self.stream = total, start, tokens_per_step, stream
        self.t0 = time.time()
        self.tty = getattr(stream, "isatty", lambda: False)()

    def update(self, step: int, loss: float, lr: float):
        done = step - self.start
        elapsed = max(time.time() - self.t0, 1e-9)
        rate = done / elapsed
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        line = (f"step {step}/{self.total} loss {loss:.4f} {rate * self.tokens_per_step:,.0f} tok/s "
                f"lr {lr:.2e} ETA {eta:,.0f}s")
        self.stream.write(("\r" + line + " " * 4) if self.tty else line + "\n")
        self.stream.flush()

    def close(self):
        if self.tty:
            self.stream.write("\n")
