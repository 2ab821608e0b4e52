"""Independent float64 numpy reference of DeepSeek-V3, written from the equations (V3 report §2, the official
inference/model.py semantics in docs/paper.md). Never imports dsv3_jax: tests compare the package against it.

Weights use the package's parameter names and the [in, out] kernel layout; that is the only shared contract.
"""

from __future__ import annotations

import math

import numpy as np


def f64(tree):
    if isinstance(tree, dict):
        return {k: f64(v) for k, v in tree.items()}
    return np.asarray(tree, np.float64)


def rms_norm(x, w, eps=1e-6):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def silu(x):
    return x / (1.0 + np.exp(-x))


def softmax(x, axis=-1):
    z = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return z / np.sum(z, axis=axis, keepdims=True)


def yarn_freqs(rope_dim, base, factor, orig, beta_fast, beta_slow, yarn):
    """Frequencies from the YaRN description: theta_i blended between theta_i/factor and theta_i."""
    theta = np.array([base ** (-2.0 * i / rope_dim) for i in range(rope_dim // 2)])
    if not yarn:
        return theta
    corr = lambda rot: rope_dim * math.log(orig / (rot * 2 * math.pi)) / (2 * math.log(base))
    low, high = max(math.floor(corr(beta_fast)), 0), min(math.ceil(corr(beta_slow)), rope_dim - 1)
    out = []
    for i, th in enumerate(theta):
        ramp = min(max((i - low) / (high - low if high != low else 0.001), 0.0), 1.0)
        out.append(th / factor * ramp + th * (1 - ramp))
    return np.array(out)


def rope(x, pos, freqs):
    """Rotate interleaved pairs as complex numbers: (x0 + i x1) · e^{i pos θ}. x [..., T, (H,) R], pos [T]."""
    z = x[..., 0::2] + 1j * x[..., 1::2]
    ang = np.asarray(pos, np.float64)[:, None] * freqs[None, :]
    rot = np.exp(1j * ang)  # [T, R/2]
    z = z * (rot[:, None, :] if x.ndim == 3 else rot)
    out = np.empty_like(x)
    out[..., 0::2], out[..., 1::2] = z.real, z.imag
    return out


def mla(x, p, c, pos, seg=None):
    """One sequence x [T, D] -> [T, D] by the naive MLA equations (eq. 1-11)."""
    t = x.shape[0]
    h, n, r, v = c["n_heads"], c["qk_nope_head_dim"], c["qk_rope_head_dim"], c["v_head_dim"]
    freqs = c["freqs"]
    q = (rms_norm(x @ p["wq_a"], p["q_norm"]) @ p["wq_b"]) if "wq_a" in p else x @ p["wq"]
    q = q.reshape(t, h, n + r)
    q_nope, q_pe = q[..., :n], rope(q[..., n:], pos, freqs)
    kv = x @ p["wkv_a"]
    ckv, k_pe = rms_norm(kv[:, :c["kv_lora_rank"]], p["kv_norm"]), rope(kv[:, c["kv_lora_rank"]:], pos, freqs)
    kvb = (ckv @ p["wkv_b"]).reshape(t, h, n + v)
    k_nope, val = kvb[..., :n], kvb[..., n:]
    out = np.zeros((t, h, v))
    for i in range(t):
        for hh in range(h):
            js = [j for j in range(i + 1) if seg is None or seg[j] == seg[i]]
            s = np.array([(q_nope[i, hh] @ k_nope[j, hh] + q_pe[i, hh] @ k_pe[j]) * c["scale"] for j in js])
            w = softmax(s)
            out[i, hh] = sum(wj * val[j, hh] for wj, j in zip(w, js))
    return out.reshape(t, h * v) @ p["wo"]


def mlp(x, p):
    return (silu(x @ p["w1"]) * (x @ p["w3"])) @ p["w2"]


def route_token(s, bias, c):
    """(chosen experts, weights) for one token's affinities s [E], following eq. 13-16 and the official Gate."""
    e, g, kg, k = len(s), c["n_groups"], c["topk_groups"], c["k"]
    sel = s + (bias if bias is not None else 0.0)
    if g > 1:
        per = e // g
        scores = []
        for gi in range(g):
            grp = sorted(sel[gi * per:(gi + 1) * per], reverse=True)
            scores.append(grp[0] + grp[1] if bias is not None else grp[0])
        keep = sorted(range(g), key=lambda gi: (-scores[gi], gi))[:kg]
        sel = np.array([sel[i] if i // per in keep else -np.inf for i in range(e)])
    chosen = sorted(range(e), key=lambda i: (-sel[i], i))[:k]
    w = np.array([s[i] for i in chosen])
    if c["score_func"] == "sigmoid":
        w = w / w.sum()
    return chosen, w * c["route_scale"]


def moe(x, p, bias, c):
    """x [N, D] -> (y [N, D], chosen experts per token). Per-token loop over the chosen experts."""
    logits = x @ p["gate"]
    s = 1 / (1 + np.exp(-logits)) if c["score_func"] == "sigmoid" else softmax(logits)
    y = np.zeros_like(x)
    chosen_all = []
    for i in range(x.shape[0]):
        chosen, w = route_token(s[i], bias, c)
        chosen_all.append(chosen)
        for e, we in zip(chosen, w):
            ex = {n: p["routed_experts"][n][e] for n in ("w1", "w2", "w3")}
            y[i] += we * mlp(x[i], ex)
    if "shared_experts" in p:
        y += mlp(x, p["shared_experts"])
    return y, chosen_all


def block(x, p, bias, c, pos, seg=None, is_moe=True):
    """One sequence through a pre-norm block."""
    x = x + mla(rms_norm(x, p["attn_norm"]["scale"]), p["attn"], c, pos, seg)
    h = rms_norm(x, p["ffn_norm"]["scale"])
    if is_moe:
        y, _ = moe(h, p["moe"], bias, c)
    else:
        y = mlp(h, p["mlp"])
    return x + y


def layer(tree, i):
    return {k: layer(v, i) if isinstance(v, dict) else v[i] for k, v in tree.items()}


def model(tokens, params, router, c):
    """One sequence tokens [T] -> (logits [T, V], mtp_logits [D, T, V]). params/router are f64 trees."""
    t = len(tokens)
    pos = np.arange(t)
    emb = params["embed"]["embedding"]
    x = emb[tokens]
    for i in range(c["n_dense_layers"]):
        x = block(x, layer(params["dense_layers"], i), None, c, pos, is_moe=False)
    for i in range(c["n_layers"] - c["n_dense_layers"]):
        bias = router["moe_layers"]["moe"]["bias"][i] if router else None
        x = block(x, layer(params["moe_layers"], i), bias, c, pos)
    head = params["head"]["kernel"]
    logits = rms_norm(x, params["norm"]["scale"]) @ head
    mtp, h = [], x
    for k in range(1, c["mtp_depth"] + 1):
        p = params[f"mtp_{k - 1}"]
        ahead = np.concatenate([tokens[k:], np.zeros(k, int)])
        cat = np.concatenate([rms_norm(emb[ahead], p["enorm"]["scale"]), rms_norm(h, p["hnorm"]["scale"])], -1)
        bias = router[f"mtp_{k - 1}"]["block"]["moe"]["bias"] if router else None
        h = block(cat @ p["eh_proj"]["kernel"], p["block"], bias, c, pos, is_moe=c["n_layers"] > c["n_dense_layers"])
        mtp.append(rms_norm(h, p["norm"]["scale"]) @ head)
    return logits, np.array(mtp)


def ref_config(cfg):
    """Plain dict of what the reference needs, with the scale derived independently from the paper's rule."""
    scale = (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim) ** -0.5
    yarn = cfg.max_seq_len > cfg.original_seq_len
    if yarn:
        scale *= (0.1 * cfg.mscale * math.log(cfg.rope_factor) + 1) ** 2
    return dict(
        n_heads=cfg.n_heads, qk_nope_head_dim=cfg.qk_nope_head_dim, qk_rope_head_dim=cfg.qk_rope_head_dim,
        v_head_dim=cfg.v_head_dim, kv_lora_rank=cfg.kv_lora_rank, scale=scale,
        freqs=yarn_freqs(cfg.qk_rope_head_dim, cfg.rope_theta, cfg.rope_factor, cfg.original_seq_len,
                         cfg.beta_fast, cfg.beta_slow, yarn),
        n_groups=cfg.n_expert_groups, topk_groups=cfg.n_limited_groups, k=cfg.n_activated_experts,
        score_func=cfg.score_func, route_scale=cfg.route_scale, n_layers=cfg.n_layers,
        n_dense_layers=cfg.n_dense_layers, mtp_depth=cfg.mtp_depth)


def gqa(x, p, n_heads, n_kv, scale, freqs, pos):
    """Standard grouped-query attention of one sequence x [T, D] with RoPE on the full head dim."""
    t = x.shape[0]
    q = rope((x @ p["wq"]).reshape(t, n_heads, -1), pos, freqs)
    k = rope((x @ p["wk"]).reshape(t, n_kv, -1), pos, freqs)
    v = (x @ p["wv"]).reshape(t, n_kv, -1)
    out = np.zeros((t, n_heads, v.shape[-1]))
    for i in range(t):
        for h in range(n_heads):
            g = h // (n_heads // n_kv)
            w = softmax(np.array([q[i, h] @ k[j, g] * scale for j in range(i + 1)]))
            out[i, h] = sum(w[j] * v[j, g] for j in range(i + 1))
    return out.reshape(t, -1) @ p["wo"]
