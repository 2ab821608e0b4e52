"""Throughput of a training run: compile time, tokens/s after compilation, TFLOP/s and MFU.

- The first train step traces, compiles (or loads from the persistent compilation cache) and runs the step:
  `CompileWatch` reads jax.monitoring's events during it (XLA compile seconds, cache hits/misses), and that
  step is left out of every rate, so tokens/s and the ETA never average in the compile.
- Model FLOPs per token come from the caller (the CLI computes them with dsv3_jax/analysis/flops.py, fwd + bwd,
  causal attention, MTP modules included); TFLOP/s = tokens/s × FLOPs/token.
- MFU = TFLOP/s / (one device's dense peak × devices). The caller passes the peak too: the CLI reads it from
  dsv3_jax/analysis/hardware.py (H100/H200/H800, BF16, and FP8 when model.fp8 is set); a device without an
  entry there (a CPU, say) reports MFU "n/a" rather than a guess.
"""

from __future__ import annotations

import dataclasses
import time

import jax

def devices_text() -> str:
    """`8 × NVIDIA H100 80GB HBM3 (gpu)` / `1 × cpu`."""
    devices = jax.devices()
    kind = devices[0].device_kind
    return f"{len(devices)} × {kind}" + ("" if kind.lower() == devices[0].platform else f" ({devices[0].platform})")


class CompileWatch:
    """Context manager: XLA compile seconds and persistent-cache hits/misses recorded by jax while open."""

    def __init__(self):
        self.compile_seconds, self.cache_hits, self.cache_misses = 0.0, 0, 0

    def _duration(self, name, seconds, **_):
        if name == "/jax/core/compile/backend_compile_duration":
            self.compile_seconds += seconds

    def _event(self, name, **_):
        if name == "/jax/compilation_cache/cache_hits":
            self.cache_hits += 1
        elif name == "/jax/compilation_cache/cache_misses":
            self.cache_misses += 1

    def __enter__(self):
        jax.monitoring.register_event_duration_secs_listener(self._duration)
        jax.monitoring.register_event_listener(self._event)
        return self

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self._duration)
        jax.monitoring.unregister_event_listener(self._event)
        return False

    def describe(self) -> str:
        """`XLA 17.5 s` / `loaded from the compilation cache` / `...; 2 of 3 from the cache`."""
        if self.cache_hits and not self.cache_misses:
            return "loaded from the compilation cache"
        text = f"XLA compile {self.compile_seconds:.1f} s"
        if self.cache_hits:
            text += f", {self.cache_hits} of {self.cache_hits + self.cache_misses} programs from the cache"
        elif self.cache_misses:
            text += ", written to the compilation cache"
        return text


@dataclasses.dataclass
class StepTimer:
    """Seconds of each train step after the first (compiling) one; a window since the last report."""

    tokens_per_step: int
    flops_per_token: float | None = None
    peak_tflops: float | None = None
    steps: int = 0
    seconds: float = 0.0
    window_steps: int = 0
    window_seconds: float = 0.0

    def record(self, seconds: float) -> None:
        self.steps, self.seconds = self.steps + 1, self.seconds + seconds
        self.window_steps, self.window_seconds = self.window_steps + 1, self.window_seconds + seconds

    @property
    def seconds_per_step(self) -> float | None:
        return self.seconds / self.steps if self.steps else None

    def tokens_per_second(self, window: bool = False) -> float | None:
        steps, seconds = (self.window_steps, self.window_seconds) if window else (self.steps, self.seconds)
        return steps * self.tokens_per_step / seconds if steps and seconds > 0 else None

    def take_window(self) -> float | None:
        """tokens/s over the steps since the previous call (then a new window starts)."""
        rate = self.tokens_per_second(window=True)
        self.window_steps, self.window_seconds = 0, 0.0
        return rate

    def tflops(self, tokens_per_second: float | None) -> float | None:
        if tokens_per_second is None or not self.flops_per_token:
            return None
        return tokens_per_second * self.flops_per_token / 1e12

    def mfu(self, tokens_per_second: float | None) -> float | None:
        tf = self.tflops(tokens_per_second)
        return None if tf is None or not self.peak_tflops else tf / self.peak_tflops

    def rates(self, tokens_per_second: float | None) -> dict:
        """{"tokens_per_second", "tflops", "mfu"} for metrics.jsonl / TensorBoard (the ones that are known)."""
        values = {"tokens_per_second": tokens_per_second, "tflops": self.tflops(tokens_per_second),
                  "mfu": self.mfu(tokens_per_second)}
        return {k: v for k, v in values.items() if v is not None}

    def rate_text(self, tokens_per_second: float | None) -> str:
        """`2,950 tok/s 0.0443 TFLOP/s MFU n/a` (or `MFU 41.2%`)."""
        if tokens_per_second is None:
            return "tok/s n/a"
        text = f"{tokens_per_second:,.0f} tok/s"
        tf = self.tflops(tokens_per_second)
        if tf is not None:
            mfu = self.mfu(tokens_per_second)
            text += f" {tf:.3g} TFLOP/s MFU " + ("n/a" if mfu is None else f"{100 * mfu:.1f}%")
        return text


class Stopwatch:
    """`with sw:` adds the block's wall seconds to sw.total and counts it."""

    def __init__(self):
        self.total, self.count, self.last = 0.0, 0, 0.0

    def __enter__(self):
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.last = time.perf_counter() - self._t0
        self.total, self.count = self.total + self.last, self.count + 1
        return False
