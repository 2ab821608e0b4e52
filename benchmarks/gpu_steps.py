"""Steps 1-4 of benchmarks/gpu_suite.py (kernels and collectives; steps 5-7, the model, are in
gpu_model_steps.py): each `step(dry_run) -> list of row dicts` (a row with status "FAIL" fails the step).
Real runs use the shapes of the suite's docstring; dry runs tiny shapes that any backend handles.
Legend: M rows (tokens), N output dim, K contraction dim, E experts.
"""

from __future__ import annotations

import functools
import statistics
import time

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from dsv3_jax.config import ModelConfig

ON_GPU = jax.default_backend() == "gpu"

# configs/small.py's model (tests/benchmarks/test_gpu_suite.py checks it is equal), without ml-collections.
SMALL = dict(vocab_size=384, dim=1024, inter_dim=2816, moe_inter_dim=256, n_layers=12, n_dense_layers=1,
             n_heads=16, n_routed_experts=64, n_shared_experts=1, n_activated_experts=6, n_expert_groups=8,
             n_limited_groups=4, score_func="sigmoid", route_scale=2.5, router_bias=True, q_lora_rank=384,
             kv_lora_rank=256, qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64, max_seq_len=4096,
             original_seq_len=1024, rope_theta=10000.0, rope_factor=4.0, beta_fast=32, beta_slow=1, mscale=1.0,
             mtp_depth=1, dtype="bfloat16", remat="dots")
TINY = dict(SMALL, vocab_size=64, dim=64, inter_dim=96, moe_inter_dim=16, n_layers=2, n_heads=2,
            n_routed_experts=8, n_activated_experts=2, n_expert_groups=4, n_limited_groups=2, q_lora_rank=16,
            kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8, max_seq_len=512,
            original_seq_len=64, dtype="float32", remat="none")


def median_seconds(fn, *args, repeats: int = 10, warmup: int = 2) -> float:
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# ----- 1. kernels -------------------------------------------------------------------------------------------
def _oracle_operands(m, n, k, seed):
    """FP8 operands quantized in float64 numpy (1x128 rows of A, 128x128 blocks of B) and C = A·Bᵀ in float64."""
    rng = np.random.default_rng(seed)

    def quant(x, rows):
        r, c = x.shape
        pr, pc = -(-r // rows) * rows, -(-c // 128) * 128
        xp = np.zeros((pr, pc))
        xp[:r, :c] = x
        blocks = xp.reshape(pr // rows, rows, pc // 128, 128)
        s = np.maximum(np.abs(blocks).max(axis=(1, 3)), 1e-4) / 448.0
        q = (blocks / s[:, None, :, None]).astype(ml_dtypes.float8_e4m3fn).reshape(pr, pc)[:r, :c]
        return q, s
    aq, a_s = quant(rng.standard_normal((m, k)) * 2, 1)
    bq, b_s = quant(rng.standard_normal((n, k)) * 0.1, 128)
    a = aq.astype(np.float64) * np.repeat(a_s, 128, axis=1)[:, :k]
    b = bq.astype(np.float64) * np.repeat(np.repeat(b_s, 128, axis=0), 128, axis=1)[:n, :k]
    args = tuple(jnp.asarray(v) for v in (aq, a_s.astype(np.float32), bq, b_s.astype(np.float32)))
    return args, a @ b.T


def _rel(out, want) -> float:
    out = np.asarray(out, np.float64)
    return float(np.linalg.norm(out - want) / np.linalg.norm(want))


def kernels(dry_run: bool) -> list[dict]:
    """Each kernel vs the jnp reference and the numpy oracle on odd shapes (relative error gate 1e-3)."""
    from pallas_kernels.act_quant.reference import act_quant_reference
    from pallas_kernels.fp8_gemm import api
    from pallas_kernels.fp8_gemm.reference import fp8_gemm_reference
    rows = []
    impls = ["triton"] + (["mosaic_gpu"] if ON_GPU or _has_mosaic_interpreter() else [])
    for m, n, k in [(200, 300, 330), (130, 136, 200), (300, 520, 700)][: 2 if dry_run else 3]:
        args, want = _oracle_operands(m, n, k, seed=m)
        ref = fp8_gemm_reference(*args, out_dtype=jnp.float32)
        for impl in impls:
            out = api.fp8_gemm(*args, impl=impl, interpret=not ON_GPU, out_dtype=jnp.float32)
            err_ref, err_oracle = _rel(out, np.asarray(ref, np.float64)), _rel(out, want)
            rows.append(dict(case=f"fp8_gemm {impl} {m}x{n}x{k}", vs_reference=err_ref, vs_oracle=err_oracle,
                             status="PASS" if max(err_ref, err_oracle) < 1e-3 else "FAIL"))
    from pallas_kernels.act_quant.triton import act_quant_triton
    x = jax.random.normal(jax.random.key(0), (128, 384), jnp.float32) * 4
    q, s_t = act_quant_triton(x, interpret=not ON_GPU)
    qr, sr = act_quant_reference(x)
    flips = float(np.mean(np.asarray(q, np.float32) != np.asarray(qr, np.float32)))
    scale_err = float(np.max(np.abs(np.asarray(s_t.T) - np.asarray(sr)) / np.asarray(sr)))
    rows.append(dict(case="act_quant triton 128x384", vs_reference=scale_err, vs_oracle=flips,
                     status="PASS" if scale_err < 1e-6 and flips < 5e-3 else "FAIL"))
    return rows


def _has_mosaic_interpreter() -> bool:
    import importlib.util
    return importlib.util.find_spec("jax._src.pallas.mosaic_gpu.interpret") is not None


# ----- 2. FP8 GEMM speed -------------------------------------------------------------------------------------
def fp8_gemm(dry_run: bool) -> list[dict]:
    """TFLOP/s of the blockwise FP8 GEMM vs XLA bf16 and XLA per-tensor FP8 (same inputs, same run)."""
    from pallas_kernels.fp8_gemm import bench
    if dry_run or not ON_GPU:
        return [_lowering_row()]
    return [bench.bench_shape(m, n, k) for m, n, k in ((4096, 7168, 16384), (8192, 8192, 8192))]


def _lowering_row() -> dict:
    """The Mosaic GPU kernel lowered for CUDA at 256x256x1024 (what a CPU can check)."""
    from pallas_kernels.fp8_gemm import mosaic_gpu as mg
    cfg, (m, n, k) = mg.TileConfig(), (256, 256, 1024)
    kb = k // 128
    spec = jax.ShapeDtypeStruct
    exported = jax.export.export(jax.jit(functools.partial(mg.fp8_gemm_mosaic, cfg=cfg)), platforms=["cuda"])(
        spec((m, k), jnp.float8_e4m3fn), spec((kb, m), jnp.float32), spec((n, k), jnp.float8_e4m3fn),
        spec((kb, n // 128, mg.WG_M), jnp.float32))
    ok = "mosaic" in exported.mlir_module().lower()
    return dict(case=f"mosaic_gpu lowers for CUDA {m}x{n}x{k}", status="PASS" if ok else "FAIL")


# ----- 3. grouped GEMM ---------------------------------------------------------------------------------------
def grouped(dry_run: bool) -> list[dict]:
    """An MoE layer's grouped GEMM (E experts, top-k, D -> F) vs a dense bf16 matmul of the same FLOPs."""
    from dsv3_jax.quant.fp8_grouped import blockwise_ragged_dot
    e, k, d, f, tokens = (8, 2, 256, 128, 256) if dry_run else (256, 8, 7168, 2048, 4096)
    m = tokens * k
    rng = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(rng[0], (m, d), jnp.bfloat16)
    w = (jax.random.normal(rng[1], (e, d, f), jnp.float32) * d ** -0.5).astype(jnp.bfloat16)
    sizes = jnp.asarray(np.random.default_rng(0).multinomial(m, np.ones(e) / e), jnp.int32)
    dense_w = w[0]
    flops = 2.0 * m * d * f
    cases = {
        "ragged_dot bf16": (jax.jit(lambda x, w, s: jax.lax.ragged_dot(x, w, s, preferred_element_type=jnp.float32)),
                            (x, w, sizes)),
        "blockwise FP8 grouped": (jax.jit(lambda x, w, s: blockwise_ragged_dot(x, w.astype(jnp.float32), s)),
                                  (x, w, sizes)),
        "dense bf16 matmul (baseline)": (jax.jit(lambda x, w: jnp.dot(x, w, preferred_element_type=jnp.float32)),
                                         (x, dense_w)),
    }
    times = {name: median_seconds(fn, *args, repeats=3 if dry_run else 10) for name, (fn, args) in cases.items()}
    base = times["dense bf16 matmul (baseline)"]
    return [dict(case=f"{name}, E={e} top-{k} {d}->{f}, {m} rows", tflops=flops / t / 1e12, vs_dense=base / t)
            for name, t in times.items()]


# ----- 4. expert-parallel ragged_all_to_all ------------------------------------------------------------------
def ep_ragged(dry_run: bool) -> list[dict]:
    """gpu_check's comparison of the forced EP paths on one device (expert axis of size 1)."""
    from benchmarks import gpu_check
    from dsv3_jax import sharding
    cfg = ModelConfig(**dict(TINY, moe_impl="ep", dtype="float32"))
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    params, router, batch = gpu_check.inputs(cfg, 4, 16 if dry_run else 128)
    pairs = [(("ragged", "compute"), ("local", "compute"))]
    if dry_run:  # the emulated collective once: compiles are what a CPU dry run pays for
        out = gpu_check.run_paths(cfg, params, router, batch, mesh, payloads=("compute",), dispatches=("ragged",))
    else:
        out = gpu_check.run_paths(cfg, params, router, batch, mesh)
        pairs += [(("ragged", "compute"), ("all_to_all", "compute")), (("ragged", "fp8"), ("all_to_all", "fp8"))]
    rows = []
    for a, b in pairs:
        good = bool(np.allclose(out[a], out[b], rtol=1e-4))
        rows.append(dict(case=f"{'/'.join(a)} vs {'/'.join(b)}", loss=out[a][0], grad_norm=out[a][1],
                         native=ON_GPU, status="PASS" if good else "FAIL"))
    return rows

