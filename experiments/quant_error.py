"""Quantization error of FP8 / LogFMT / BF16 on the real activations of a trained model.

    python -m experiments.quant_error --workdir=runs/tiny [--batches=4] [--out=experiments/results]

The tensors measured are the inputs of the FP8 GEMMs (V3 report §3.3) and the MoE dispatch payload, per
layer of the main stack, on validation batches:
  attn_in        attn_norm output: input of wq_a / wkv_a
  q_latent       q_norm(x·wq_a): input of wq_b           kv_latent  kv_norm(c_kv): input of wkv_b
  attn_out       attention output: input of wo (the report caches it in E5M6, §3.3 "exceptions")
  dense_ffn_in   ffn_norm output of the dense layers: input of w1 / w3
  moe_dispatch   ffn_norm output of the MoE layers: the tokens dispatched to experts (FP8 dispatch, §3.3)
  *_swiglu       silu(x·w1) ⊙ (x·w3), the input of w2 (dense MLP, shared expert, routed experts per assignment)
They are captured without touching the model: the scanned stack is run one Block at a time with its slice of
the parameters, the attention module's output comes from flax `capture_intermediates`, and the RMSNorm outputs
(the block applies each norm inside its consumers), the attention inputs and the SwiGLU hiddens are recomputed
from the params with the model's own pure functions (norms.py, mla.py, router.py).
The forward runs in float32 without FP8 (whatever the checkpoint was trained with), so every format, BF16
included, is measured against unrounded values.

Formats (each a quantize-dequantize round trip along the channel axis, 1x128 tiles):
  E4M3 / E5M2 with online amax scales (quant/fp8.py; "pow2": scales rounded up to 2^k, as the dispatch uses),
  LogFMT-8 / LogFMT-10 (Insights §3.2, quant/logfmt.py), and a plain cast to BF16.
Metrics per tensor kind, summed over layers and batches: rel_l2 = ||x - x̂|| / ||x||; max_rel = max over
nonzero elements of |x - x̂| / |x| (1.0 means some element was flushed to zero); flushed = the fraction of
nonzero elements decoded as exactly zero.
Claim compared with (docs/paper.md §3, Insights §3.2): LogFMT-8 is more accurate than E4M3 and E5M2.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
from collections import defaultdict

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dsv3_jax import param_tree as pt
from dsv3_jax.layers.attention_core import causal_mask
from dsv3_jax.layers.block import Block
from dsv3_jax.layers.linear import matmul_fn
from dsv3_jax.layers.mla import attend_naive, mla_latents, mla_queries
from dsv3_jax.layers.moe import router
from dsv3_jax.layers.norms import rms_norm
from dsv3_jax.layers.rope import frequencies_for
from dsv3_jax.quant.fp8 import E4M3, E5M2, TILE, dequantize_tiles, quantize_tiles
from dsv3_jax.quant.logfmt import logfmt_roundtrip

KINDS = ("attn_in", "q_latent", "kv_latent", "attn_out", "dense_ffn_in", "moe_dispatch",
         "dense_swiglu", "shared_swiglu", "routed_swiglu")


def _fp8(x, dtype, pow2=False):
    q, s = quantize_tiles(x, dtype=dtype, pow2=pow2)
    return dequantize_tiles(q, s, dtype=x.dtype)


FORMATS = {
    "BF16": lambda x: x.astype(jnp.bfloat16).astype(x.dtype),
    "E4M3 1x128": functools.partial(_fp8, dtype=E4M3),
    "E4M3 1x128 pow2": functools.partial(_fp8, dtype=E4M3, pow2=True),
    "E5M2 1x128": functools.partial(_fp8, dtype=E5M2),
    "LogFMT-8": functools.partial(logfmt_roundtrip, n_bits=8),
    "LogFMT-10": functools.partial(logfmt_roundtrip, n_bits=10),
}


def _is_attention(module, method_name):
    return module.name == pt.ATTN and method_name == "__call__"


def _norm_output(cfg, p, name: str, x_in):
    """The block's norm `name` on x_in, recomputed with its own scale (the block hands each norm to its
    consumers, which apply it inside their recompute regions: layers/recompute.py)."""
    return rms_norm(x_in, p[name]["scale"], cfg.norm_eps)


def attention_inputs(cfg, p, x, positions, mask) -> dict:
    """Inputs of MLA's Linears for the normed block input x [B,T,D] (mla.py functions, eq. 1-11)."""
    mm, freqs = matmul_fn(cfg), frequencies_for(cfg)
    out = {"attn_in": x}
    if "wq_a" in p:
        out["q_latent"] = rms_norm(mm(x, p["wq_a"]), p["q_norm"], cfg.norm_eps)
    q_nope, q_pe = mla_queries(x, p, positions, freqs, cfg.n_heads, cfg.qk_nope_head_dim, cfg.norm_eps, mm)
    c_kv, k_pe = mla_latents(x, p, positions, freqs, cfg.kv_lora_rank, cfg.norm_eps, mm)
    o = attend_naive(q_nope, q_pe, c_kv, k_pe, p["wkv_b"], mask, cfg.softmax_scale, mm)
    out.update(kv_latent=c_kv, attn_out=o.reshape(o.shape[:2] + (-1,)))
    return out


def swiglu_hidden(x, w1, w3):
    """silu(x·w1) ⊙ (x·w3) in float32: the input of w2 (mlp.py swiglu)."""
    return jax.nn.silu(x @ w1) * (x @ w3)


def ffn_inputs(cfg, p, bias, h, moe: bool) -> dict:
    """Inputs of the FFN's Linears for the normed input h [B,T,D] of a dense or an MoE layer."""
    if not moe:
        return {"dense_ffn_in": h, "dense_swiglu": swiglu_hidden(h, p[pt.MLP]["w1"], p[pt.MLP]["w3"])}
    m, tokens = p[pt.MOE_FFN], h.reshape(-1, h.shape[-1])
    r = router.route(tokens, m["gate"], bias, score_func=cfg.score_func, n_groups=cfg.n_expert_groups,
                     topk_groups=cfg.n_limited_groups, k=cfg.n_activated_experts, route_scale=cfg.route_scale)
    e = m[pt.ROUTED]
    hid = jax.nn.silu(jnp.einsum("nd,edf->nef", tokens, e["w1"])) * jnp.einsum("nd,edf->nef", tokens, e["w3"])
    out = {"moe_dispatch": h, "routed_swiglu": jnp.take_along_axis(hid, r.experts[..., None], axis=1)}
    if pt.SHARED in m:
        out["shared_swiglu"] = swiglu_hidden(tokens, m[pt.SHARED]["w1"], m[pt.SHARED]["w3"])
    return out


def _slice(tree, i):
    return jax.tree.map(lambda a: a[i], tree)


def capture(cfg, variables, tokens):
    """Run the main stack one Block at a time -> ({kind: [activations]}, final hidden [B,T,D] = out.hidden)."""
    params, routers = variables["params"], variables.get("router", {})
    b, t = tokens.shape
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    mask = causal_mask(positions, positions)
    x = jnp.take(params[pt.EMBED]["embedding"], tokens, axis=0)
    acts = defaultdict(list)
    for stack, n in pt.stack_sizes(cfg).items():
        moe = pt.stack_is_moe(stack)
        for i in range(n):
            p = _slice(params[stack], i)
            lv = {"params": p, **({"router": _slice(routers[stack], i)} if moe and stack in routers else {})}
            (x_next, _, _), st = Block(cfg, moe).apply(lv, x, positions, mask,
                                                      capture_intermediates=_is_attention,
                                                      mutable=["intermediates"])
            attn_out = st["intermediates"][pt.ATTN]["__call__"][0][0]
            bias = lv[pt.ROUTER][pt.MOE_FFN][pt.BIAS] if pt.ROUTER in lv else None
            found = {}
            if cfg.attention == "mla":
                found.update(attention_inputs(cfg, p[pt.ATTN], _norm_output(cfg, p, pt.ATTN_NORM, x),
                                              positions, mask))
            found.update(ffn_inputs(cfg, p, bias, _norm_output(cfg, p, pt.FFN_NORM, x + attn_out), moe))
            for kind, a in found.items():
                acts[kind].append(a.reshape(-1, a.shape[-1]))
            x = x_next
    return {k: jnp.concatenate(v) for k, v in acts.items()}, x


def to_tiles(a):
    """[N, C] -> [N·ceil(C/128), 128]: the zero-padded 1x128 tiles every format quantizes independently (the
    padding is what quant/ does to edge tiles: zeros never change a tile's amax or log range)."""
    return jnp.pad(a, ((0, 0), (0, -a.shape[-1] % TILE))).reshape(-1, TILE)


def error_sums(x, x_hat, segments, n_segments: int) -> dict:
    """Per segment of rows: squared error, squared norm, max relative error, flushed and nonzero counts."""
    x, x_hat = x.astype(jnp.float32), x_hat.astype(jnp.float32)
    nz = x != 0
    rel = jnp.where(nz, jnp.abs(x - x_hat) / jnp.where(nz, jnp.abs(x), 1.0), 0.0)
    rows = {"err2": jnp.sum((x - x_hat) ** 2, -1), "ref2": jnp.sum(x * x, -1),
            "flushed": jnp.sum(nz & (x_hat == 0), -1), "nonzero": jnp.sum(nz, -1)}
    out = {k: jax.ops.segment_sum(v, segments, n_segments) for k, v in rows.items()}
    out["max_rel"] = jax.ops.segment_max(jnp.max(rel, -1), segments, n_segments)
    return out


@functools.partial(jax.jit, static_argnums=0)
def batch_errors(cfg, variables, tokens):
    """{kind: {format: error sums}} for one batch of tokens [B, T]. All kinds' tiles are stacked so each format
    runs once (a small compile)."""
    acts, _ = capture(cfg, variables, tokens)
    tiles = [to_tiles(a) for a in acts.values()]
    segments = np.repeat(np.arange(len(tiles)), [len(t) for t in tiles])
    x = jnp.concatenate(tiles)
    sums = {f: error_sums(x, fn(x), segments, len(tiles)) for f, fn in FORMATS.items()}
    return {k: {f: {m: v[i] for m, v in s.items()} for f, s in sums.items()} for i, k in enumerate(acts)}


def measurement_config(cfg):
    """The model in float32 without FP8 (the activations before any rounding); the MoE through the "blocked"
    experts, which compute the same sums as "ragged" and are the fast path on CPU (layers/moe/dispatch.py)."""
    return dataclasses.replace(cfg, dtype="float32", fp8="none", moe_impl="blocked")


def measure(cfg, variables, batches) -> dict:
    """{kind: {format: {rel_l2, max_rel, flushed}}} over an iterable of token batches [B, T]."""
    cfg = measurement_config(cfg)
    variables = {k: v for k, v in nn.unbox(variables).items() if k in ("params", "router")}
    total = {}
    for tokens in batches:
        e = jax.device_get(batch_errors(cfg, variables, jnp.asarray(tokens, jnp.int32)))
        for kind, fs in e.items():
            for f, sums in fs.items():
                acc = total.setdefault(kind, {}).setdefault(f, dict.fromkeys(sums, 0.0))
                for m, v in sums.items():
                    acc[m] = max(acc[m], float(v)) if m == "max_rel" else acc[m] + float(v)
    return {k: {f: _metrics(total[k][f]) for f in FORMATS} for k in KINDS if k in total}


def _metrics(s: dict) -> dict:
    return {"rel_l2": (s["err2"] / s["ref2"]) ** 0.5, "max_rel": s["max_rel"],
            "flushed": s["flushed"] / max(s["nonzero"], 1.0)}


def markdown_tables(results: dict) -> str:
    """One table per metric: rows = tensor kinds, columns = formats; the best 8/10-bit format in bold."""
    formats = list(next(iter(results.values())))
    out = []
    for metric, title in (("rel_l2", "relative error ||x - x̂|| / ||x||"),
                          ("max_rel", "max elementwise relative error |x - x̂| / |x|"),
                          ("flushed", "fraction of nonzero elements flushed to 0")):
        lines = [f"**{title}**", "", "| tensor | " + " | ".join(formats) + " |", "|---" * (len(formats) + 1) + "|"]
        for kind, fs in results.items():
            values = [fs[f][metric] for f in formats if f != "BF16"]
            best = min(values) if min(values) < max(values) else None  # no bold when all tie
            cells = [(f"**{fs[f][metric]:.3g}**" if f != "BF16" and fs[f][metric] == best else
                      f"{fs[f][metric]:.3g}") for f in formats]
            lines.append(f"| {kind} | " + " | ".join(cells) + " |")
        out.append("\n".join(lines))
    return "\n\n".join(out)


def plot_errors(results: dict, path: str, title: str = "quantization error on real activations"):
    """Grouped bar chart of rel_l2 per tensor kind and format (log scale)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    kinds, formats = list(results), list(next(iter(results.values())))
    width = 0.8 / len(formats)
    fig, ax = plt.subplots(figsize=(9, 4), dpi=100)
    for j, f in enumerate(formats):
        ax.bar([i + j * width for i in range(len(kinds))], [results[k][f]["rel_l2"] for k in kinds], width, label=f)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(kinds))], kinds, rotation=30, ha="right")
    ax.set_yscale("log")
    ax.set_ylim(top=8 * max(m["rel_l2"] for fs in results.values() for m in fs.values()))  # room for the legend
    ax.set_ylabel("||x - x̂|| / ||x||")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=len(formats), loc="upper center")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def val_token_batches(cd, n_batches: int):
    """The first `n_batches` validation input batches of the run's data config (the loop's eval order)."""
    from dsv3_jax.data.pipeline import make_datasets
    _, val = make_datasets(cd.data, cd.train, cd.model.max_seq_len)
    return [b["inputs"] for b in val(n_batches)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="runs/tiny")
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--out", default="experiments/results")
    a = p.parse_args(argv)
    if not os.path.isdir(os.path.join(a.workdir, "checkpoints")):
        raise SystemExit(f"{a.workdir}: no trained checkpoint. Create it with\n"
                         f"  dsv3-train --config=configs/tiny.py --workdir={a.workdir}")
    from dsv3_jax.train.restore import load_workdir
    cd, cfg, state = load_workdir(a.workdir)
    results = measure(cfg, state.variables(), val_token_batches(cd, a.batches))
    header = (f"# Quantization error on real activations\n\nCheckpoint {a.workdir} at step {int(state.step)}, "
              f"{a.batches} validation batches of {cd.train.batch_size}×{cd.train.seq_len} tokens, "
              f"jax {jax.__version__} on {jax.devices()[0].platform}.\n\n")
    table = markdown_tables(results)
    print(table)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "quant_error.md"), "w", encoding="utf-8") as f:
        f.write(header + table + "\n")
    plot_errors(results, os.path.join(a.out, "quant_error.png"))


if __name__ == "__main__":
    main()
