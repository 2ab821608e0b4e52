"""Steps 5-7 of benchmarks/gpu_suite.py: the model's train step (bf16 and FP8 blockwise), decoding with the
latent vs the per-head cache, and the side-by-side comparison with transformers. Each `step(dry_run) -> rows`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from benchmarks.gpu_steps import SMALL, TINY, median_seconds
from dsv3_jax.analysis.flops import training_flops_per_token
from dsv3_jax.analysis.hardware import peak_flops
from dsv3_jax.config import ModelConfig
from dsv3_jax.model import DeepSeekV3


def _train_step(cfg: ModelConfig, batch: int, seq: int):
    """(jitted train step, state, batch) of `cfg` on random tokens."""
    from dsv3_jax.experiment_config import TrainConfig
    from dsv3_jax.train import optim, step as step_lib
    from dsv3_jax.train.state import init_state
    t = TrainConfig(steps=1000, batch_size=batch, seq_len=seq)
    opt = optim.make_optimizer(t)
    state = init_state(cfg, opt, 0, seq)
    train_step = step_lib.make_train_step(cfg, opt, t)
    tokens = jax.random.randint(jax.random.key(1), (batch, seq + 1), 0, cfg.vocab_size)
    return train_step, state, {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}


def _train_step_seconds(cfg: ModelConfig, batch: int, seq: int, repeats: int) -> float:
    """Median seconds of one jitted train step (loss, gradients, AdamW, bias update) on random tokens."""
    train_step, state, data = _train_step(cfg, batch, seq)
    holder = [state]

    def one():
        holder[0], metrics = train_step(holder[0], data)  # the state is donated: carry it along
        return metrics["loss"]
    return median_seconds(one, repeats=repeats)


def train(dry_run: bool) -> list[dict]:
    """tokens/s, TFLOP/s and MFU of the train step in bf16 and FP8 blockwise; FP8/BF16 step-time ratio."""
    base, (batch, seq, repeats) = (dict(TINY, mtp_depth=0), (2, 32, 2)) if dry_run else (SMALL, (16, 1024, 5))
    rows, seconds = [], {}
    if dry_run:
        rows.append(_lowers_for_cuda(ModelConfig(**dict(base, dtype="bfloat16", fp8="blockwise")), batch, seq))
    for fp8 in ("none", "blockwise"):
        cfg = ModelConfig(**dict(base, dtype="bfloat16" if not dry_run else "float32", fp8=fp8))
        s = seconds[fp8] = _train_step_seconds(cfg, batch, seq, repeats)
        flops = training_flops_per_token(cfg, seq) * batch * seq / s
        peak = peak_flops(jax.devices()[0].device_kind, "fp8" if fp8 != "none" else "bf16")
        rows.append(dict(case=f"train step, fp8={fp8}, {batch}x{seq} tokens", tokens_per_s=batch * seq / s,
                         tflops=flops / 1e12, mfu=flops / peak if peak else "n/a"))
    rows.append(dict(case="FP8 / BF16 step time", tokens_per_s=seconds["blockwise"] / seconds["none"],
                     tflops="", mfu=""))
    return rows


def _lowers_for_cuda(cfg: ModelConfig, batch: int, seq: int) -> dict:
    """The train step exported for CUDA (jax.export): what a CPU can check of the GPU program."""
    train_step, state, data = _train_step(cfg, batch, seq)
    exported = jax.export.export(train_step, platforms=["cuda"])(state, data)
    ok = "stablehlo" in exported.mlir_module()
    return dict(case=f"train step (bf16, fp8=blockwise) lowers for CUDA", tokens_per_s="", tflops="", mfu="",
                status="PASS" if ok else "FAIL")


def decode(dry_run: bool) -> list[dict]:
    """decode_step tokens/s with the latent (absorb) vs the per-head (naive) cache, and the HBM GB/s that the
    cache and weight bytes read per step imply."""
    from dsv3_jax.infer import bench
    from dsv3_jax.infer.cache import cache_bytes_per_token
    base = dict(TINY) if dry_run else dict(SMALL, max_seq_len=32768 + 64)
    cfg = ModelConfig(**base)
    variables = jax.jit(DeepSeekV3(cfg).init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
    variables = bench.compute_dtype_params(cfg, {"params": variables["params"], "router": variables["router"]})
    weight_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(variables))
    itemsize = jnp.dtype(cfg.dtype).itemsize
    grid = [(2, 64)] if dry_run else [(1, 4096), (1, 32768), (64, 4096), (64, 32768)]
    rows = []
    for batch, context in grid:
        row = dict(case=f"batch {batch}, context {context}")
        for name, absorb in (("absorb", True), ("naive", False)):
            cache = batch * context * cache_bytes_per_token(cfg, absorb=absorb, bytes_per_value=itemsize)
            if cache > 0.5 * _memory_bytes():
                row[f"{name}_tok_s"], row[f"{name}_GB_s"] = "skipped (cache too large)", ""
                continue
            s = bench.time_decode(cfg, variables, batch, context, absorb, iters=3 if dry_run else 20)
            row[f"{name}_tok_s"], row[f"{name}_GB_s"] = batch / s, (cache + weight_bytes) / s / 1e9
        rows.append(row)
    return rows


def _memory_bytes() -> float:
    stats = jax.devices()[0].memory_stats() or {}
    return float(stats.get("bytes_limit", 16e9))


def side_by_side(dry_run: bool) -> list[dict]:
    """benchmarks/side_by_side.py on this device (skipped without torch and transformers)."""
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        return [dict(case="side by side with transformers", status=f"skipped ({e})")]
    from benchmarks import side_by_side as sbs
    r = sbs.run("tiny" if dry_run else "default", "auto", 2 if dry_run else 8, 16 if dry_run else 256,
                8 if dry_run else 64, 2 if dry_run else 7)
    agree = {"train": r["train"]["losses_agree"], "decode_b1": r["decode_b1"]["same_tokens"],
             "decode_b16": r["decode_b16"]["same_tokens"]}
    return [dict(case=name, ours=r[name]["ours"], theirs=r[name]["theirs"], ratio=r[name]["ours"] / r[name]["theirs"],
                 status="PASS" if agree.get(name, True) else "FAIL")
            for name in ("train", "prefill_b1", "prefill_b16", "decode_b1", "decode_b16")]

