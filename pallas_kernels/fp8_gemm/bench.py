"""Benchmark of the blockwise FP8 GEMM against XLA's bf16 dot and XLA's per-tensor FP8 dot (same run).

    python -m pallas_kernels.fp8_gemm.bench [--quick] [--sweep] [--no_triton] [--out FILE.md] [--readme README.md]

Shapes: 8192³ and the DeepSeek-V3 shapes M=4096, (N, K) in docs/paper.md §6 (DeepGEMM's table). Every kernel sees
the same random bf16 inputs quantized the V3 way (x 1x128, w 128x128, E4M3); XLA bf16 multiplies the bf16
inputs; XLA FP8 multiplies per-tensor E4M3 copies (cuBLASLt FP8 GEMM). All use B stored [N, K] (K-major).
Correctness is checked before timing: ‖C - C_ref‖/‖C_ref‖ against reference.py (fp32) and DeepGEMM's
diff = 1 - 2Σxy/Σ(x²+y²) (its gate: < 1e-3). Timing: warm-up, then the
median over 20 samples; each sample runs enough back-to-back calls (alternating two input sets, so the
inputs do not sit in L2) to last >= 2 ms, then block_until_ready.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import itertools
import statistics
import time

import jax
import jax.numpy as jnp

from pallas_kernels.act_quant.reference import act_quant_reference
from pallas_kernels.fp8_gemm import api
from pallas_kernels.fp8_gemm.reference import fp8_gemm_reference, quantize_weight_blocks


def _per_tensor(x):
    """(q E4M3, dequant scale) with one scale for the whole tensor (the XLA FP8 dot baseline)."""
    s = jnp.maximum(jnp.max(jnp.abs(x)).astype(jnp.float32), 1e-4) / 448.0
    return jnp.clip(x.astype(jnp.float32) / s, -448.0, 448.0).astype(jnp.float8_e4m3fn), s

SHAPES = [(8192, 8192, 8192)] + [(4096, n, k) for n, k in
                                 [(2112, 7168), (24576, 1536), (32768, 512), (7168, 16384), (4096, 7168), (7168, 2048)]]
QUICK = [(8192, 8192, 8192), (4096, 7168, 16384)]
DIMS = (((1,), (1,)), ((), ()))  # contract K of A [M, K] with K of B [N, K]


def time_fn(f, arg_sets, samples: int = 20, min_sample_s: float = 2e-3) -> float:
    """Median seconds per call (see module docstring)."""
    for args in arg_sets:
        jax.block_until_ready(f(*args))
    t0 = time.perf_counter()
    jax.block_until_ready(f(*arg_sets[0]))
    inner = max(1, int(min_sample_s / max(time.perf_counter() - t0, 1e-6)))
    times = []
    for _ in range(samples):
        t0 = time.perf_counter()
        outs = [f(*arg_sets[i % len(arg_sets)]) for i in range(inner)]
        jax.block_until_ready(outs)
        times.append((time.perf_counter() - t0) / inner)
    return statistics.median(times)


def make_inputs(m, n, k, seed):
    kx, kw = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(kx, (m, k), jnp.bfloat16)
    w = jax.random.normal(kw, (n, k), jnp.bfloat16)
    aq, a_s = act_quant_reference(x)
    bq, b_s = quantize_weight_blocks(w)
    (xt, sx), (wt, sw) = _per_tensor(x), _per_tensor(w)
    return dict(x=x, w=w, aq=aq, a_s=a_s, bq=bq, b_s=b_s, xt=xt, wt=wt, s=sx * sw)


def errors(out, ref):
    o, r = out.astype(jnp.float32), ref.astype(jnp.float32)
    rel = jnp.linalg.norm(o - r) / jnp.linalg.norm(r)
    diff = 1 - 2 * jnp.sum(o * r) / jnp.sum(o * o + r * r)
    return float(rel), float(diff)


def kernel_tflops(prepared, cfg, flops, check=None):
    """TFLOP/s of the Mosaic kernel on prepared operands; with check=(ref_fn, d0) also its errors."""
    from pallas_kernels.fp8_gemm import mosaic_gpu as mg
    kern = jax.jit(functools.partial(mg.fp8_gemm_mosaic, cfg=cfg))
    ref = check() if check else None
    errs = errors(kern(*prepared[0])[: ref.shape[0], : ref.shape[1]], ref) if check else None
    return flops / time_fn(kern, prepared) / 1e12, errs


def bench_shape(m, n, k, cfg_overrides=None, triton=True):
    """One row of the table: TFLOP/s of each implementation and the kernel's errors."""
    from pallas_kernels.fp8_gemm import mosaic_gpu as mg
    sets = [make_inputs(m, n, k, seed) for seed in (0, 1)]
    flops = 2.0 * m * n * k
    prepared = [api.prepare_mosaic(d["aq"], d["a_s"], d["bq"], d["b_s"]) for d in sets]
    cfg = mg.TileConfig(**{**prepared[0][1].__dict__, **(cfg_overrides or {})})
    d0 = sets[0]
    ref = lambda: jax.jit(fp8_gemm_reference, static_argnames="out_dtype")(
        d0["aq"], d0["a_s"], d0["bq"], d0["b_s"], out_dtype=jnp.float32)
    row = {"M": m, "N": n, "K": k}
    row["blockwise"], (row["rel_err"], row["diff"]) = kernel_tflops([p[0] for p in prepared], cfg, flops, ref)
    bf16 = jax.jit(lambda a, b: jax.lax.dot_general(a, b, DIMS))
    row["xla_bf16"] = flops / time_fn(bf16, [(d["x"], d["w"]) for d in sets]) / 1e12
    fp8 = jax.jit(lambda a, b, s: (jax.lax.dot_general(a, b, DIMS, preferred_element_type=jnp.float32) * s)
                  .astype(jnp.bfloat16))
    row["xla_fp8_tensor"] = flops / time_fn(fp8, [(d["xt"], d["wt"], d["s"]) for d in sets]) / 1e12
    if triton:
        try:
            tri = jax.jit(functools.partial(api.fp8_gemm, impl="triton"))
            row["triton"] = flops / time_fn(tri, [(d["aq"], d["a_s"], d["bq"], d["b_s"]) for d in sets]) / 1e12
        except Exception as e:  # report, keep benchmarking the rest
            print(f"triton failed at {m}x{n}x{k}: {type(e).__name__}: {str(e)[:200]}")
    row["ratio"] = row["blockwise"] / row["xla_bf16"]
    return row


def sweep(shapes):
    """Time a few Mosaic tile configs on `shapes` (kernel only); returns the best overrides."""
    from pallas_kernels.fp8_gemm import mosaic_gpu as mg
    cases = []
    for m, n, k in shapes:
        sets = [make_inputs(m, n, k, seed) for seed in (0, 1)]
        prepared = [api.prepare_mosaic(d["aq"], d["a_s"], d["bq"], d["b_s"]) for d in sets]
        cases.append(([p[0] for p in prepared], prepared[0][1], 2.0 * m * n * k))
    best, best_score = {}, 0.0
    for steps, minor, width in itertools.product((4, 5), (0, 1), (8, 16)):
        over = dict(max_concurrent_steps=steps, grid_minor_dim=minor, grid_tile_width=width)
        try:
            tf = [kernel_tflops(args, mg.TileConfig(**{**cfg.__dict__, **over}), fl)[0] for args, cfg, fl in cases]
        except Exception as e:
            print(f"config {over} failed: {type(e).__name__}: {str(e)[:160]}")
            continue
        score = statistics.geometric_mean(tf)
        print(f"sweep {over}: " + ", ".join(f"{t:.0f}" for t in tf) + " TFLOP/s", flush=True)
        if score > best_score:
            best, best_score = over, score
    print(f"best config: {best}")
    return best


def table(rows, header):
    cols = ["M", "N", "K", "blockwise", "xla_bf16", "xla_fp8_tensor", "triton", "ratio", "rel_err", "diff"]
    lines = [header, "", "| M | N | K | blockwise FP8 (Mosaic GPU) TFLOP/s | XLA bf16 | XLA FP8 per-tensor | "
             "Triton blockwise | blockwise / bf16 | rel. err | DeepGEMM diff |", "|" + "---|" * len(cols)]
    fmt = {"ratio": "{:.2f}x", "rel_err": "{:.1e}", "diff": "{:.1e}"}
    for r in rows:
        lines.append("| " + " | ".join(fmt.get(c, "{:.0f}" if isinstance(r.get(c), float) else "{}").format(
            r[c]) if c in r else "-" for c in cols) + " |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="only 8192³ and 4096x7168x16384")
    p.add_argument("--sweep", action="store_true", help="tune the Mosaic tile config on the two bar shapes first")
    p.add_argument("--no_triton", "--no-triton", action="store_true")
    p.add_argument("--out", default=None, help="write the markdown table here")
    p.add_argument("--readme", default=None, help="append the table to this README (e.g. pallas_kernels/README.md)")
    p.add_argument("--date", default=datetime.date.today().isoformat())
    args = p.parse_args()
    dev = jax.devices()[0]
    header = f"device: {dev.device_kind} ({dev.platform}), jax {jax.__version__}, date {args.date}"
    print(header, flush=True)
    over = sweep(QUICK) if args.sweep else None
    rows = []
    for shape in (QUICK if args.quick else SHAPES):
        rows.append(bench_shape(*shape, cfg_overrides=over, triton=not args.no_triton))
        print(rows[-1], flush=True)
    md = table(rows, header + (f", Mosaic config {over}" if over else ""))
    print(md)
    if args.out:
        with open(args.out, "w") as f:
            f.write(md + "\n")
    if args.readme:
        with open(args.readme, "a") as f:
            f.write("\n" + md + "\n")


if __name__ == "__main__":
    main()
