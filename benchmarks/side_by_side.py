"""dsv3_jax vs Hugging Face transformers (PyTorch eager) on the SAME DeepSeek-V3 checkpoint, side by side.

    python -m benchmarks.side_by_side                 # dim 256, 4 layers, 16 experts top-4: the README table
    python -m benchmarks.side_by_side --tiny          # seconds: a smoke run (the test suite runs it)

A random DeepseekV3ForCausalLM is built with transformers at the requested size, saved with save_pretrained and
loaded into dsv3_jax with load_hf_checkpoint, so both frameworks run identical float32 weights. Measured, each
in ONE run with the repeats of the two frameworks interleaved (ours, theirs, ours, ...) and medians taken:
  * training forward+backward tokens/s (next-token cross-entropy over a [B, T] batch; gradients of every
    parameter), and the two losses, which must agree;
  * prefill tokens/s (one forward over the prompts with the KV cache built);
  * greedy decoding tokens/s at batch 1 and 16 (prompt 32 tokens, `--new` new tokens), and whether the greedy
    tokens are identical.
dsv3_jax runs with `moe_impl="auto"` (the fastest exact expert path for the backend) unless --moe_impl is given;
transformers with its defaults (eager attention, its own MoE loop). Prints a markdown table with the ratio
ours / theirs, the device, versions and date; --json writes the numbers.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

SIZES = {  # the README size, and a smoke size
    "default": dict(vocab=4096, dim=256, layers=4, dense=1, heads=8, experts=16, topk=4, groups=4, topk_groups=2,
                    moe_inter=256, inter=768, q_lora=128, kv_lora=64, nope=32, rope=16, v=32),
    "tiny": dict(vocab=128, dim=32, layers=2, dense=1, heads=2, experts=8, topk=2, groups=4, topk_groups=2,
                 moe_inter=16, inter=48, q_lora=16, kv_lora=12, nope=8, rope=4, v=8),
}


def hf_model(size: dict, max_len: int, seed: int = 0):
    import torch
    import transformers
    s = size
    cfg = transformers.DeepseekV3Config(
        vocab_size=s["vocab"], hidden_size=s["dim"], intermediate_size=s["inter"],
        moe_intermediate_size=s["moe_inter"], num_hidden_layers=s["layers"], first_k_dense_replace=s["dense"],
        num_attention_heads=s["heads"], num_key_value_heads=s["heads"], n_routed_experts=s["experts"],
        num_experts_per_tok=s["topk"], n_group=s["groups"], topk_group=s["topk_groups"], n_shared_experts=1,
        routed_scaling_factor=2.5, q_lora_rank=s["q_lora"], kv_lora_rank=s["kv_lora"], qk_nope_head_dim=s["nope"],
        qk_rope_head_dim=s["rope"], v_head_dim=s["v"], max_position_embeddings=max_len, initializer_range=0.02,
        tie_word_embeddings=False, num_nextn_predict_layers=0, bos_token_id=None, eos_token_id=None,
        pad_token_id=None, rope_parameters=dict(rope_type="default", rope_theta=10000.0))
    torch.manual_seed(seed)
    model = transformers.DeepseekV3ForCausalLM(cfg).float().eval()
    with torch.no_grad():
        for name, p in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                p.copy_(0.01 * torch.rand_like(p))
    return model


def median_interleaved(fns: dict, repeats: int) -> dict:
    """{name: median seconds} with the callables' repeats interleaved (one warm-up call each first)."""
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def training(cfg, variables, hf, batch: int, seq: int, repeats: int):
    """(ours tok/s, theirs tok/s, our loss, their loss) of forward+backward on one random batch."""
    import torch
    from dsv3_jax import losses
    from dsv3_jax.layer_split import join_params, split_params
    from dsv3_jax.model import DeepSeekV3
    from dsv3_jax.train.compile_options import train_compiler_options

    tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, (batch, seq + 1)).astype(np.int32)
    x, y = jnp.asarray(tokens[:, :-1]), jnp.asarray(tokens[:, 1:])
    model = DeepSeekV3(cfg)
    params = split_params(cfg, variables["params"])  # the layout the trainer steps in (train/state.py)

    def loss(params):
        out = model.apply({**variables, "params": join_params(cfg, params)}, x)
        return losses.cross_entropy(out.logits, y)

    grad = jax.jit(jax.value_and_grad(loss), compiler_options=train_compiler_options())  # the trainer's
    tx, ty = torch.from_numpy(tokens[:, :-1]).long(), torch.from_numpy(tokens[:, 1:]).long()

    def theirs():
        hf.zero_grad(set_to_none=True)
        out = hf(tx).logits
        value = torch.nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), ty.reshape(-1))
        value.backward()
        return float(value.detach())

    ours = lambda: jax.block_until_ready(grad(params))
    hf.train()
    t = median_interleaved({"ours": ours, "theirs": theirs}, repeats)
    our_loss, their_loss = float(grad(params)[0]), theirs()
    hf.eval()
    n = batch * seq
    return n / t["ours"], n / t["theirs"], our_loss, their_loss


def decoding(cfg, variables, hf, batch: int, prompt: int, new: int, repeats: int):
    """(ours decode tok/s, theirs, ours prefill tok/s, theirs, same greedy tokens)."""
    import torch
    from dsv3_jax.infer.cache import init_cache
    from dsv3_jax.infer.decode import prefill
    from dsv3_jax.infer.generate import generate
    from dsv3_jax.layer_split import split_layers

    variables = split_layers(cfg, variables)  # once, as the generate CLI does (layer_split.py)
    prompts = np.random.default_rng(2).integers(0, cfg.vocab_size, (batch, prompt)).astype(np.int32)
    tp = torch.from_numpy(prompts).long()
    lengths = np.full((batch,), prompt, np.int32)

    def ours():
        return generate(cfg, variables, [list(p) for p in prompts], max_new_tokens=new)

    def theirs():
        with torch.no_grad():
            return hf.generate(tp, max_new_tokens=new, min_new_tokens=new, do_sample=False, use_cache=True,
                               pad_token_id=0)

    def our_prefill():
        cache = init_cache(cfg, batch, prompt + 1)
        jax.block_until_ready(prefill(cfg, variables, prompts, lengths, cache))

    def their_prefill():
        with torch.no_grad():
            hf(tp, use_cache=True)

    t = median_interleaved({"ours": ours, "theirs": theirs}, repeats)
    p = median_interleaved({"ours": our_prefill, "theirs": their_prefill}, repeats)
    same = bool(np.array_equal(np.asarray(ours().tokens), theirs()[:, prompt:].numpy()))
    n = batch * new
    return n / t["ours"], n / t["theirs"], batch * prompt / p["ours"], batch * prompt / p["theirs"], same


def run(size_name: str, moe_impl: str, train_batch: int, train_seq: int, new: int, repeats: int) -> dict:
    import torch
    import transformers
    from dsv3_jax.interop import load_hf_checkpoint

    size = SIZES[size_name]
    hf = hf_model(size, max_len=max(train_seq, 32 + new) + 8)
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(os.path.join(tmp, "hf"), safe_serialization=True)
        cfg, variables = load_hf_checkpoint(os.path.join(tmp, "hf"))
    cfg = cfg.replace(moe_impl=moe_impl)
    variables = jax.tree.map(jnp.asarray, variables)
    rows = {"device": f"{jax.devices()[0].device_kind} ({jax.default_backend()}), {os.cpu_count()} CPUs",
            "versions": f"jax {jax.__version__}, torch {torch.__version__}, transformers {transformers.__version__}, "
                        f"Python {platform.python_version()}",
            "date": datetime.date.today().isoformat(), "size": size, "moe_impl": moe_impl}
    ours, theirs, l1, l2 = training(cfg, variables, hf, train_batch, train_seq, repeats)
    rows["train"] = dict(ours=ours, theirs=theirs, loss_ours=l1, loss_theirs=l2, losses_agree=abs(l1 - l2) < 1e-4)
    for batch in (1, 16):
        d_ours, d_theirs, p_ours, p_theirs, same = decoding(cfg, variables, hf, batch, 32, new, repeats)
        rows[f"decode_b{batch}"] = dict(ours=d_ours, theirs=d_theirs, same_tokens=same)
        rows[f"prefill_b{batch}"] = dict(ours=p_ours, theirs=p_theirs)
    return rows


def markdown(r: dict, train_batch: int, train_seq: int, new: int) -> str:
    line = lambda name, d: f"| {name} | {d['ours']:,.0f} tok/s | {d['theirs']:,.0f} tok/s | **{d['ours'] / d['theirs']:.2f}×** |"
    out = [f"{r['device']}; {r['versions']}; {r['date']}; dsv3_jax moe_impl={r['moe_impl']}", "",
           "| work | dsv3_jax | transformers | ratio |", "|---|---|---|---|",
           line(f"forward+backward, {train_batch} × {train_seq} tokens", r["train"]),
           line("prefill, batch 1 × 32", r["prefill_b1"]), line("prefill, batch 16 × 32", r["prefill_b16"]),
           line(f"greedy decode, batch 1, {new} new tokens", r["decode_b1"]),
           line(f"greedy decode, batch 16, {new} new tokens", r["decode_b16"]), "",
           f"losses {r['train']['loss_ours']:.6f} vs {r['train']['loss_theirs']:.6f} "
           f"({'agree' if r['train']['losses_agree'] else 'DIFFER'}); greedy tokens identical: "
           f"batch 1 {r['decode_b1']['same_tokens']}, batch 16 {r['decode_b16']['same_tokens']}"]
    return "\n".join(out)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="a seconds-long smoke run at tiny sizes")
    p.add_argument("--moe_impl", default="auto")
    p.add_argument("--batch", type=int, default=8, help="training batch (sequences)")
    p.add_argument("--seq", type=int, default=256, help="training sequence length")
    p.add_argument("--new", type=int, default=64, help="new tokens per decode")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--json", default="", help="also write the numbers to this file")
    a = p.parse_args(argv)
    if a.tiny:
        a.batch, a.seq, a.new, a.repeats = 2, 16, 8, 2
    r = run("tiny" if a.tiny else "default", a.moe_impl, a.batch, a.seq, a.new, a.repeats)
    print(markdown(r, a.batch, a.seq, a.new), flush=True)
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump(r, f, indent=1)
    return r


if __name__ == "__main__":
    main()
