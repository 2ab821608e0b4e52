"""Every GPU measurement in one command: `python -m benchmarks.gpu_suite --out DIR` (about 8 minutes on one
H100/H200), and `--dry_run` on a CPU (tiny shapes, seconds; the test suite runs it).

Steps, in this order; after each one DIR/results.json and DIR/results.md are rewritten, so a run cut short
still reports everything finished so far (a failing step is recorded with its error and the rest go on):

  1. kernels     every GPU kernel (blockwise FP8 GEMM: Mosaic GPU and Triton; 1x128 activation quantization:
                 Triton) against its jnp reference and a float64 numpy oracle, on shapes that are not
                 multiples of 128: PASS/FAIL per case. Dry run: the kernels in Pallas interpret mode.
  2. fp8_gemm    blockwise FP8 GEMM TFLOP/s vs XLA bf16 and XLA per-tensor FP8 (pallas_kernels/fp8_gemm/bench.py)
                 on 4096×7168×16384 and 8192³. Dry run: the Mosaic kernel is lowered for CUDA (jax.export).
  3. grouped     an MoE layer's grouped GEMM (256 experts, top-8, 7168 → 2048): bf16 `ragged_dot` and the
                 blockwise FP8 grouped GEMM vs a dense bf16 matmul of the same FLOPs.
  4. ep_ragged   the ragged_all_to_all expert-parallel path against the all_to_all and local paths
                 (benchmarks/gpu_check.py): PASS/FAIL.
  5. train       the train step of configs/small.py's model in bf16 and FP8 blockwise: tokens/s, TFLOP/s, MFU,
                 FP8/BF16 step ratio.
  6. decode      decode_step with the latent (absorb) vs the per-head (naive) cache at 4K and 32K context,
                 batch 1 and 64: tokens/s and achieved HBM GB/s (cache + weight bytes read per step).
  7. side_by_side  benchmarks/side_by_side.py on the GPU, when torch and transformers are installed.

Runs on the GPU host with jax, flax, optax and numpy only (no ml-collections, grain or tensorboardX: the model
configs are ModelConfig literals here, checked equal to configs/ by tests/benchmarks/test_gpu_suite.py).
Timing: warm-up, block_until_ready, median of repeats; every figure is printed next to its same-run baseline.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time
import traceback

import jax

from benchmarks import gpu_model_steps, gpu_steps

STEP_FNS = {"kernels": gpu_steps.kernels, "fp8_gemm": gpu_steps.fp8_gemm, "grouped": gpu_steps.grouped,
            "ep_ragged": gpu_steps.ep_ragged, "train": gpu_model_steps.train, "decode": gpu_model_steps.decode,
            "side_by_side": gpu_model_steps.side_by_side}
STEPS = tuple(STEP_FNS)


def header() -> dict:
    dev = jax.devices()[0]
    return {"device": f"{dev.device_kind} ({dev.platform})", "devices": jax.device_count(),
            "jax": jax.__version__, "date": datetime.date.today().isoformat()}


def markdown(results: dict) -> str:
    h = results["header"]
    out = [f"# GPU suite: {h['device']} × {h['devices']}, jax {h['jax']}, {h['date']}"
           + (" (CPU dry run: tiny shapes, not measurements)" if results["dry_run"] else ""), ""]
    for name in STEPS:
        if name not in results["steps"]:
            continue
        step = results["steps"][name]
        out.append(f"## {name} ({step['seconds']:.1f} s){'' if step['ok'] else ' — FAILED'}")
        if "error" in step:
            out += ["", "```", step["error"][-2000:], "```"]
        rows = step.get("rows", [])
        if rows:
            cols = list(rows[0])
            out += ["", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
            out += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
        out.append("")
    return "\n".join(out)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:,.0f}"
    return str(v)


def write(out_dir: str, results: dict) -> None:
    with open(os.path.join(out_dir, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(out_dir, "results.md"), "w", encoding="utf-8") as f:
        f.write(markdown(results))


def run(out_dir: str, dry_run: bool = False, only: tuple[str, ...] = STEPS) -> dict:
    """Run the steps, rewriting the results after each; returns the results dict."""
    unknown = sorted(set(only) - set(STEPS))
    if unknown:
        raise ValueError(f"--only: unknown steps {unknown}; steps are {STEPS}")
    os.makedirs(out_dir, exist_ok=True)
    results = {"header": header(), "dry_run": dry_run, "steps": {}}
    for name in STEPS:
        if name not in only:
            continue
        t0 = time.perf_counter()
        try:
            rows = STEP_FNS[name](dry_run)
            ok = all(r.get("status", "PASS") != "FAIL" for r in rows)
            results["steps"][name] = {"ok": ok, "rows": rows}
        except Exception:  # a failing step is recorded and the others still run
            results["steps"][name] = {"ok": False, "error": traceback.format_exc()}
        results["steps"][name]["seconds"] = time.perf_counter() - t0
        write(out_dir, results)
        print(f"[gpu_suite] {name}: {'ok' if results['steps'][name]['ok'] else 'FAILED'} "
              f"({results['steps'][name]['seconds']:.1f} s)", flush=True)
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="directory for results.json and results.md")
    p.add_argument("--dry_run", "--dry-run", action="store_true", help="tiny shapes on any backend (CPU: interpret mode)")
    p.add_argument("--only", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)}")
    a = p.parse_args(argv)
    results = run(a.out, a.dry_run, tuple(s for s in a.only.split(",") if s))
    print(markdown(results))
    return 0 if all(s["ok"] for s in results["steps"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
