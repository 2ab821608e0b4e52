"""What a training run prints (process 0): the compile line, one steady line per log group, one line per
evaluation and per checkpoint, and the end summary as a table. Everything here is presentation: the numbers
come from the loop, and metrics.jsonl / TensorBoard / summary.json hold them in full (train/logging.py).

    compiling the train step (the first step traces, compiles and runs it)...
    train step ready in 21.4 s (XLA compile 18.9 s, written to the compilation cache)
    step  10/600  loss 4.8123  2,934 tok/s 0.0443 TFLOP/s MFU n/a  lr 6.00e-04  ETA 3m12s
    eval step 100: val 3.320 bits/byte, MTP acc 0.441, max/mean expert load 1.71 3.16 3.80 2.22 (2.1 s)
    checkpoint step 200 saved: runs/tiny/checkpoints/200 (0.3 s)
"""

from __future__ import annotations

import math

from dsv3_jax.train.throughput import CompileWatch, StepTimer


def duration(seconds: float) -> str:
    """`41.3 s`, `6m58s`, `1h02m`."""
    if not math.isfinite(seconds):
        return "?"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


def eval_text(metrics: dict) -> str:
    """`val 3.320 bits/byte, MTP acc 0.441, max/mean expert load 1.71 3.16`."""
    parts = [f"val {metrics['val_bits_per_byte']:.3f} bits/byte"]
    if "val_mtp_acc" in metrics:
        parts.append(f"MTP acc {metrics['val_mtp_acc']:.3f}")
    if "val_load_max" in metrics:
        parts.append("max/mean expert load " + " ".join(f"{float(x):.2f}" for x in metrics["val_load_max"]))
    return ", ".join(parts)


class Console:
    """The run's console lines; `write` takes one line (print by default)."""

    def __init__(self, total: int, start: int, timer: StepTimer, eval_every: int, evaluates: bool, write=print):
        self.total, self.start, self.timer, self.write = total, start, timer, write
        self.eval_every, self.evaluates = eval_every, evaluates
        self.width = len(str(total))
        self.eval_seconds: float | None = None  # the latest evaluation's (after the compiling one)

    def compiling(self) -> None:
        self.write("compiling the train step (the first step traces, compiles and runs it)...")

    def compiled(self, seconds: float, watch: CompileWatch) -> None:
        self.write(f"train step ready in {seconds:.1f} s ({watch.describe()}); tok/s and ETA leave it out")

    def _evals_left(self, step: int) -> int:
        if not self.evaluates:
            return 0
        return self.total // self.eval_every - step // self.eval_every + (1 if self.total % self.eval_every else 0)

    def eta(self, step: int) -> float:
        per_step = self.timer.seconds_per_step
        if per_step is None:
            return math.inf
        return (self.total - step) * per_step + self._evals_left(step) * (self.eval_seconds or 0.0)

    def step(self, step: int, loss: float, lr: float) -> float | None:
        """One step line; returns its tokens/s (over the steps since the previous line, compile left out)."""
        rate = self.timer.take_window()
        self.write(f"step {step:>{self.width}}/{self.total}  loss {loss:.4f}  {self.timer.rate_text(rate)}  "
                   f"lr {lr:.2e}  ETA {duration(self.eta(step))}")
        return rate

    def eval(self, step: int, metrics: dict, seconds: float, first: bool) -> None:
        if not first:
            self.eval_seconds = seconds
        note = f"{seconds:.1f} s incl. compile" if first else f"{seconds:.1f} s"
        self.write(f"eval step {step}: {eval_text(metrics)} ({note})")

    def checkpoint(self, step: int, path: str, seconds: float) -> None:
        self.write(f"checkpoint step {step} saved: {path} ({seconds:.1f} s)")


def summary_rows(summary: dict, timer: StepTimer, times: dict, devices: str) -> list[tuple[str, str]]:
    """(label, value) rows of the end-of-run table."""
    rows = [("steps", f"{summary['step']}")]
    if "val_bits_per_byte" in summary:
        base = summary.get("val_unigram_bits_per_byte", math.nan)
        rows.append(("val bits/byte", f"{summary['val_bits_per_byte']:.3f}"
                     + (f"  (byte-unigram baseline {base:.3f})" if math.isfinite(base) else "")))
    if "val_mtp_acc" in summary:
        rows.append(("val MTP 2nd-token acc", f"{summary['val_mtp_acc']:.3f}"))
    if "val_load_max" in summary:
        rows.append(("max/mean expert load", " ".join(f"{float(x):.2f}" for x in summary["val_load_max"])
                     + "  (per MoE layer, last = MTP)"))
    rate = timer.tokens_per_second()
    rows.append(("train throughput", timer.rate_text(rate) + f"  (after compile; {devices})"))
    timing = ", ".join(f"{name} {duration(sec)}" for name, sec in times.items() if name != "wall")
    rows.append(("time", f"{duration(times['wall'])}  ({timing})"))
    return rows


def table(title: str, rows: list[tuple[str, str]]) -> str:
    """A two-column text table under a title."""
    width = max(len(label) for label, _ in rows)
    rule = "-" * min(100, max(len(title), width + 2 + max(len(v) for _, v in rows)))
    return "\n".join([title, rule, *(f"{label:<{width}}  {value}" for label, value in rows), rule])
