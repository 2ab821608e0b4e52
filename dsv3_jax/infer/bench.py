"""Decode benchmark: tokens/s of decode_step with the MLA latent cache (absorb) vs the full per-head K/V cache
(naive, the baseline) at batch 1 and 64 and context 4K and 32K; speculative (MTP drafts, V3 report §5.4.3) vs
plain decoding at batch 1 with the measured acceptance. Small config by default; --tiny runs on a CPU.

    python -m dsv3_jax.infer.bench                       # configs/small.py, on the GPU
    python -m dsv3_jax.infer.bench --workdir=runs/small  # a trained checkpoint: meaningful acceptance
    python -m dsv3_jax.infer.bench --tiny                # configs/tiny.py, small sizes, CPU smoke run
    python -m dsv3_jax.infer.bench --config.model.moe_impl=dense   # any --config.x=y override (random weights)

Timing: warm-up, block_until_ready, median of --iters single steps; the cache holds random (not zero) entries
and `lengths` = context. Correctness is checked first (absorb and naive prefill+decode logits agree). Random
weights give near-zero acceptance: pass --workdir for a trained model. Prints a markdown table (append it to
the README results).
"""

from __future__ import annotations

import datetime
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from dsv3_jax import config_args
from dsv3_jax.model import DeepSeekV3
from dsv3_jax.infer.cache import cache_bytes_per_token, init_cache
from dsv3_jax.infer.decode import decode_step, prefill
from dsv3_jax.infer.generate import generate
from dsv3_jax.layer_split import split_layers
from dsv3_jax.infer.speculative import speculative_generate


def compute_dtype_params(cfg, variables):
    """Matmul weights cast once to the compute dtype (the layers cast them at every use anyway); norms, the
    router gate and biases stay fp32 (V3 report §3.3)."""
    def cast(path, x):
        name = getattr(path[-1], "key", "")
        return x.astype(cfg.dtype) if x.ndim >= 2 and name != "gate" else x
    return {"params": jax.tree_util.tree_map_with_path(cast, variables["params"]),
            "router": variables.get("router", {})}


def random_cache(cfg, batch: int, context: int, extra: int, absorb: bool, seed: int = 0):
    """A cache of max_len context + extra with random entries and lengths = context."""
    cache = init_cache(cfg, batch, context + extra, absorb=absorb)
    keys = iter(jax.random.split(jax.random.key(seed), 64))
    groups = jax.tree.map(lambda x: jax.random.normal(next(keys), x.shape, x.dtype), cache.groups)
    return cache.replace(groups=groups, lengths=jnp.full((batch,), context, jnp.int32))


def time_decode(cfg, variables, batch: int, context: int, absorb: bool, iters: int) -> float:
    """Median seconds of one decode_step (batch tokens) at the given context."""
    cache = random_cache(cfg, batch, context, iters + 4, absorb)
    tokens = jax.random.randint(jax.random.key(1), (batch,), 0, cfg.vocab_size)
    for _ in range(3):
        cache, logits = decode_step(cfg, variables, cache, tokens)
    logits.block_until_ready()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        cache, logits = decode_step(cfg, variables, cache, tokens)
        logits.block_until_ready()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def check_absorb_equals_naive(cfg, variables, tol: float):
    """Prefill + one decode step in both layouts on random prompts; max |Δlogits| relative to max |logits|."""
    tokens = jax.random.randint(jax.random.key(2), (2, 32), 0, cfg.vocab_size)
    lengths = jnp.asarray([32, 17])
    outs = []
    for absorb in (True, False):
        cache, _ = prefill(cfg, variables, tokens, lengths, init_cache(cfg, 2, 40, absorb=absorb))
        outs.append(np.asarray(decode_step(cfg, variables, cache, tokens[:, 0])[1], np.float32))
    err = float(np.abs(outs[0] - outs[1]).max() / np.abs(outs[1]).max())
    if not err <= tol:
        raise AssertionError(f"absorb vs naive decode logits differ: relative error {err:.3g} > {tol}")
    return err


def fits(cfg, batch: int, context: int, absorb: bool, budget: float) -> bool:
    bytes_per_value = jnp.dtype(cfg.dtype).itemsize
    return batch * context * cache_bytes_per_token(cfg, absorb=absorb, bytes_per_value=bytes_per_value) <= budget


def decode_rows(cfg, variables, batches, contexts, iters, budget):
    """Markdown rows: batch, context, absorb tok/s, naive tok/s, ratio, cache GB per layout."""
    rows = []
    for batch in batches:
        for context in contexts:
            res = {}
            for absorb in (True, False):
                gb = batch * context * cache_bytes_per_token(cfg, absorb=absorb,
                                                             bytes_per_value=jnp.dtype(cfg.dtype).itemsize) / 1e9
                if fits(cfg, batch, context, absorb, budget):
                    res[absorb] = (batch / time_decode(cfg, variables, batch, context, absorb, iters), gb)
                else:
                    res[absorb] = (None, gb)
            fmt = lambda r: f"{r[0]:,.1f}" if r[0] else f"skipped (cache {r[1]:.1f} GB)"
            ratio = f"{res[True][0] / res[False][0]:.2f}x" if res[True][0] and res[False][0] else "-"
            rows.append(f"| {batch} | {context} | {fmt(res[True])} | {fmt(res[False])} | {ratio} | "
                        f"{res[True][1]:.2f} / {res[False][1]:.2f} |")
            print(rows[-1], flush=True)
    return rows


def speculative_row(cfg, variables, new_tokens: int, prompt_len: int):
    """Batch-1 greedy generation of new_tokens: plain vs speculative (second run of each, compiled)."""
    prompt = [list(np.random.default_rng(0).integers(0, min(cfg.vocab_size, 256), prompt_len))]
    variables = split_layers(cfg, variables)
    timed = {}
    for name in ("plain", "speculative"):
        for _ in range(2):  # the first run compiles
            t0 = time.perf_counter()
            if name == "plain":
                out, stats = generate(cfg, variables, prompt, max_new_tokens=new_tokens), None
            else:
                out, stats = speculative_generate(cfg, variables, prompt, max_new_tokens=new_tokens)
            seconds = time.perf_counter() - t0
        timed[name] = (int(out.num_tokens.sum()) / seconds, stats, out.tokens)
    same = bool((timed["plain"][2] == timed["speculative"][2]).all())
    stats = timed["speculative"][1]
    return (f"| 1 | {timed['plain'][0]:,.1f} | {timed['speculative'][0]:,.1f} | "
            f"{timed['speculative'][0] / timed['plain'][0]:.2f}x | {stats.acceptance_rate:.3f} | "
            f"{stats.tokens_per_step:.2f} | {same} |")


def load_model(args):
    """(cfg, variables): a trained workdir, or random weights of the config."""
    if args.workdir:
        if args.overrides:
            raise ValueError(f"{args.overrides[0]}: overrides apply to --config (random weights), not to --workdir")
        from dsv3_jax.infer.restore import load_workdir
        cfg, variables, _ = load_workdir(args.workdir)
        return cfg, variables
    cfg = config_args.experiment(args, args.overrides).model
    variables = jax.jit(DeepSeekV3(cfg).init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
    return cfg, {"params": variables["params"], "router": variables.get("router", {})}


def parse_args(argv=None):
    p = config_args.make_parser("python -m dsv3_jax.infer.bench", __doc__, config="optional")
    p.set_defaults(config="configs/small.py")
    p.add_argument("--workdir", default="", help="trained run to load instead of random weights")
    p.add_argument("--tiny", action="store_true", help="configs/tiny.py and small sizes (CPU smoke run)")
    p.add_argument("--batches", default="1,64")
    p.add_argument("--contexts", default="4096,32768")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--spec_tokens", type=int, default=128)
    p.add_argument("--memory_fraction", type=float, default=0.6, help="skip caches above this share of memory")
    p.add_argument("--date", default=datetime.date.today().isoformat())
    args, args.overrides = config_args.parse(p, argv)
    if args.tiny:
        args.config, args.batches, args.contexts = "configs/tiny.py", "1,4", "64,256"
        args.iters, args.spec_tokens = min(args.iters, 5), min(args.spec_tokens, 16)
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.print_config:
        config_args.print_config(config_args.experiment(args, args.overrides))
        return None
    batches = [int(x) for x in args.batches.split(",")]
    contexts = [int(x) for x in args.contexts.split(",")]
    cfg, variables = load_model(args)
    # Decode past the trained length for timing only; YaRN frequencies are static, the scale is unchanged.
    cfg = cfg.replace(max_seq_len=max(cfg.max_seq_len, max(contexts) + args.iters + 8))
    variables = compute_dtype_params(cfg, variables)
    dev = jax.devices()[0]
    stats = dev.memory_stats() or {}
    budget = args.memory_fraction * stats.get("bytes_limit", 16e9)
    print(f"device: {dev.device_kind} ({dev.platform}), jax {jax.__version__}, date {args.date}, "
          f"dtype {cfg.dtype}, cache {cache_bytes_per_token(cfg)} B/token absorb (bf16) vs "
          f"{cache_bytes_per_token(cfg, absorb=False)} naive")
    err = check_absorb_equals_naive(cfg, variables, 5e-2 if cfg.dtype != "float32" else 1e-4)
    print(f"correctness: absorb vs naive decode logits, relative max error {err:.2e}")
    print("\n| batch | context | absorb tok/s | naive tok/s | absorb/naive | cache GB absorb / naive |")
    print("|---|---|---|---|---|---|", flush=True)
    rows = decode_rows(cfg, variables, batches, contexts, args.iters, budget)
    print("\n| batch | plain tok/s | speculative tok/s | speedup | acceptance | tokens/main step | same tokens |")
    print("|---|---|---|---|---|---|---|", flush=True)
    spec = speculative_row(cfg, variables, args.spec_tokens, 16)
    print(spec)
    if not args.workdir:
        print("(random weights: acceptance is not meaningful; pass --workdir=<trained run>)")
    return rows, spec


if __name__ == "__main__":
    main()
