"""Multi-head Latent Attention (V3 report §2.1.1, eq. 1-11; DeepSeek-V3 inference/model.py class MLA).

Queries: optional low-rank compression (q_lora_rank > 0: wq_a -> q_norm -> wq_b, else a plain wq), split per
head into a no-position part q_nope and a decoupled rope part q_pe. Keys/values: wkv_a compresses x into the
latent c_kv [C] (then kv_norm) plus ONE rope key k_pe [R] shared by all heads; wkv_b expands c_kv into
per-head k_nope and v.

One forward for every mode: `MLA(x, positions, mask, cache)` returns (y, cache).
  * no cache (training, eval): the naive path, keys and values expanded per head;
  * latent cache (decoding, the default): only kv_norm(c_kv) and k_pe are cached per token; W_UK is absorbed
    into the query and W_UV into the output so attention runs over the latent (docs/numerics.md "MLA absorb");
  * per-head cache: the expanded k = [k_nope; k_pe] and v are cached (the naive layout; with an FP8 recipe it
    has exactly the training forward's numerics, because wkv_b runs through the same FP8 matmul).
Both are exact in real arithmetic; tests/layers/test_mla.py checks them against each other.

Legend: B batch, T query positions, S key positions (cache slots), D model dim, H heads, N qk nope dim,
R rope dim, K = N + R qk head dim, V value head dim, C kv latent (kv_lora_rank), Q q latent (q_lora_rank).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from dsv3_jax import param_tree as pt
from dsv3_jax.layers import attention_core
from dsv3_jax.layers.kv_cache import CacheSlot
from dsv3_jax.layers.linear import fp8_kernel, kernel_of, matmul_fn, normal_init, operand_views_fn, weight
from dsv3_jax.layers.norms import rms_norm
from dsv3_jax.layers.recompute import region, regions_on
from dsv3_jax.layers.rope import apply_rope, frequencies_for

Params = Mapping[str, jnp.ndarray]
MatMul = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]


def mla_down(x, p: Params, mm: MatMul):
    """x [B,T,D] -> the down-projections (wq_a(x) [B,T,Q], or wq(x) [B,T,H·K] without q_lora; wkv_a(x)
    [B,T,C+R]): the only products of x itself, so the attention norm and these two are one recompute region."""
    return mm(x, p["wq_a"] if "wq_a" in p else p["wq"]), mm(x, p["wkv_a"])


def queries_up(q_in, p: Params, positions, freqs, n_heads: int, nope_dim: int, eps: float, mm: MatMul):
    """mla_down's query part -> q_nope [B,T,H,N], q_pe [B,T,H,R] (q_norm, wq_b up-projection, rope). Eq. 7-9."""
    q = mm(rms_norm(q_in, p["q_norm"], eps), p["wq_b"]) if "wq_a" in p else q_in
    q = q.reshape(q.shape[:2] + (n_heads, -1))
    q_nope, q_pe = q[..., :nope_dim], q[..., nope_dim:]
    return q_nope, apply_rope(q_pe, positions, freqs)


def latents_up(kv, p: Params, positions, freqs, kv_lora_rank: int, eps: float):
    """wkv_a(x) [B,S,C+R] -> kv_norm(c_kv) [B,S,C] and the rope key k_pe [B,S,R]. Eq. 1, 3."""
    c_kv, k_pe = kv[..., :kv_lora_rank], kv[..., kv_lora_rank:]
    return rms_norm(c_kv, p["kv_norm"], eps), apply_rope(k_pe, positions, freqs)


def mla_queries(x, p: Params, positions, freqs, n_heads: int, nope_dim: int, eps: float, mm: MatMul):
    """x [B,T,D] -> q_nope [B,T,H,N], q_pe [B,T,H,R] (rope applied). Eq. 6-9 (or plain wq if no q_lora)."""
    return queries_up(mla_down(x, p, mm)[0], p, positions, freqs, n_heads, nope_dim, eps, mm)


def mla_latents(x, p: Params, positions, freqs, kv_lora_rank: int, eps: float, mm: MatMul):
    """x [B,S,D] -> kv_norm(c_kv) [B,S,C] and the shared rope key k_pe [B,S,R]. Eq. 1, 3.

    These two are everything the latent cache keeps per token."""
    return latents_up(mm(x, p["wkv_a"]), p, positions, freqs, kv_lora_rank, eps)


def absorbed_weights(wkv_b, n_heads: int, nope_dim: int):
    """wkv_b [..., C, H·(N+V)] -> W_UK [..., H, N, C], W_UV [..., H, C, V] (eq. 2 and 5's up-projections),
    heads-major so that the absorbed products batch over heads with the weights read in place. Inference
    variables hold them precomputed (layer_split.py); otherwise they are cut here, a copy per call."""
    wkv_b = kernel_of(wkv_b)
    w = wkv_b.reshape(wkv_b.shape[:-1] + (n_heads, -1))  # [..., C, H, N+V]
    return jnp.moveaxis(w[..., :nope_dim], -3, -1), jnp.moveaxis(w[..., nope_dim:], -3, -2)


def expand_kv(c_kv, k_pe, wkv_b, n_heads: int, nope_dim: int, mm: MatMul):
    """Per-head keys k [B,S,H,K] = [c_kv W_UK; k_pe] and values v [B,S,H,V] = c_kv W_UV (eq. 2, 4, 5): one
    wkv_b matmul, then the per-head split; the one rope key is shared by every head."""
    kv = mm(c_kv, wkv_b).reshape(c_kv.shape[:2] + (n_heads, -1))  # [B,S,H,N+V]
    k_nope, v = kv[..., :nope_dim], kv[..., nope_dim:]
    k_pe = jnp.broadcast_to(k_pe[:, :, None, :], k_pe.shape[:2] + (n_heads, k_pe.shape[-1]))
    return jnp.concatenate([k_nope, k_pe.astype(k_nope.dtype)], axis=-1), v


def attend_per_head(q_nope, q_pe, k, v, mask, scale: float, causal: bool = False):
    """Softmax attention of q = [q_nope; q_pe] over per-head keys k [B,S,H,K] and values v -> o [B,T,H,V].
    causal: the mask is causal over a full sequence (training), so blocks above the diagonal are skipped."""
    q = jnp.concatenate([q_nope, q_pe.astype(q_nope.dtype)], axis=-1)
    attend = attention_core.causal_attention if causal else attention_core.softmax_attention
    return attend(q, k.astype(q.dtype), v.astype(q.dtype), mask, scale)


def attend_naive(q_nope, q_pe, c_kv, k_pe, wkv_b, mask, scale: float, mm: MatMul, causal: bool = False):
    """Expand per-head keys/values from the latent and attend -> o [B,T,H,V]. Eq. 2, 4, 5, 10."""
    k, v = expand_kv(c_kv, k_pe, wkv_b, q_nope.shape[2], q_nope.shape[3], mm)
    return attend_per_head(q_nope, q_pe, k, v, mask, scale, causal)


def attend_absorbed(q_nope, q_pe, c_kv, k_pe, w_uk, w_uv, mask, scale: float):
    """Attend over the latent with W_UK [H,N,C] absorbed into q and W_UV [H,C,V] into the output (absorbed_weights)
    -> o [B,T,H,V].

    scores = (q_nope W_UKᵀ)·c_kv + q_pe·k_pe; o = (p·c_kv) W_UV (inference/model.py, attn_impl "absorb").
    The products run in fp32 on the weights and c_kv as given; under an FP8 recipe mla() passes wkv_b and c_kv
    as the recipe's wkv_b GEMM quantizes them (operand views), so the result equals the training forward's FP8
    numerics."""
    dtype = q_nope.dtype

    def core(q_nope, q_pe, mask, c_kv, k_pe):  # long prompts: over blocks of queries (attention_core.py)
        b, t, h = q_nope.shape[:3]
        # The T·H query rows of a sequence share its latent keys, so the scores and the latent output are
        # batched GEMMs over B with x = (t, h) as rows; with h as a batch axis instead (bthc,bsc->bhts) XLA:CPU
        # transposes operands and outputs around small per-head GEMMs (measured: a decoding step at batch 16
        # about 10% shorter this way, the same tokens).
        rows = lambda a: a.reshape(b, t * h, a.shape[-1]).astype(jnp.float32)  # noqa: E731
        q_lat = jnp.einsum("bthn,hnc->bthc", q_nope, w_uk.astype(dtype), preferred_element_type=jnp.float32)
        scores = (jnp.einsum("bxc,bsc->bxs", rows(q_lat), c_kv.astype(jnp.float32))
                  + jnp.einsum("bxr,bsr->bxs", rows(q_pe), k_pe.astype(jnp.float32))) * scale
        visible = mask[:, :, None]  # [B,T,1,S]
        scores = jnp.where(visible, scores.reshape(b, t, h, -1), attention_core.NEG_INF)
        probs = jnp.where(visible, jax.nn.softmax(scores, axis=-1), 0.0)
        o_lat = jnp.einsum("bxs,bsc->bxc", rows(probs), c_kv.astype(jnp.float32)).reshape(b, t, h, -1)
        return jnp.einsum("bthc,hcv->bthv", o_lat, w_uv.astype(jnp.float32)).astype(dtype)
    return attention_core.over_query_blocks(core, (q_nope, q_pe, mask), (c_kv, k_pe), c_kv.shape[1],
                                            q_nope.shape[2])


def mla_output(o, wo, mm: MatMul):
    """o [B,T,H,V] -> [B,T,D] through wo (eq. 11)."""
    return mm(o.reshape(o.shape[:2] + (-1,)), wo)


def mla(x, p: Params, positions, mask, cfg, cache: CacheSlot | None = None, norm=None):
    """MLA of x [B,T,D] at positions [B,T]; mask [B,T,T] without a cache, [B,T,W] with one (the new tokens'
    entries are written first, then attention reads the layer's first W slots, W <= S: all of them, or those
    a prefill from an empty cache can see). Returns (y [B,T,D], cache).

    norm: the block's attention RMSNorm (norms.RMSNorm), applied to x here so that under
    ModelConfig.remat="paper" it shares a recompute region with the down-projections (layers/recompute.py).
    Then, without a cache, the up-projections (q_norm -> wq_b, kv_norm -> wkv_b), rope and the attention core
    form a second region over the latents: q, k, v (which the attention core would keep) are recomputed from
    wq_a(x) and wkv_a(x) in the backward; the attention output (wo's input) is kept."""
    mm = matmul_fn(cfg)
    freqs = frequencies_for(cfg)
    h, n, scale, eps = cfg.n_heads, cfg.qk_nope_head_dim, cfg.softmax_scale, cfg.norm_eps
    on = regions_on(cfg)
    down = lambda v: mla_down(v, p, mm)  # noqa: E731
    q_in, kv_in = norm(x, then=down, recompute=on) if norm is not None else down(x)
    if cache is None:  # a full sequence: the mask is causal in the token index (model.training_positions)
        def core(q_in, kv_in):
            q_nope, q_pe = queries_up(q_in, p, positions, freqs, h, n, eps, mm)
            c_kv, k_pe = latents_up(kv_in, p, positions, freqs, cfg.kv_lora_rank, eps)
            return attend_naive(q_nope, q_pe, c_kv, k_pe, p["wkv_b"], mask, scale, mm, causal=True)
        return mla_output(region(core, on)(q_in, kv_in), p["wo"], mm), cache
    q_nope, q_pe = queries_up(q_in, p, positions, freqs, h, n, eps, mm)
    c_kv, k_pe = latents_up(kv_in, p, positions, freqs, cfg.kv_lora_rank, eps)
    if cache.latent:
        # Cache c_kv as wkv_b's FP8 GEMM would quantize it (per token: 1x128 tiles or a fixed per-tensor scale),
        # then regroup the product: exactly the per-head numbers (identity views without FP8).
        wkv_b, act = operand_views_fn(cfg)(p["wkv_b"])
        cache = cache.write({"c_kv": act(c_kv), "k_pe": k_pe}, positions)
        kv = cache.read(mask.shape[-1])  # the slots the mask covers
        w_uk, w_uv = _absorbed(p, wkv_b, cfg)
        o = attend_absorbed(q_nope, q_pe, kv["c_kv"], kv["k_pe"], w_uk, w_uv, mask, scale)
    else:
        k, v = expand_kv(c_kv, k_pe, p["wkv_b"], h, n, mm)
        cache = cache.write({"k": k, "v": v}, positions)
        kv = cache.read(mask.shape[-1])
        o = attend_per_head(q_nope, q_pe, kv["k"], kv["v"], mask, scale)
    return mla_output(o, p["wo"], mm), cache


def _absorbed(p: Params, wkv_b, cfg):
    """W_UK, W_UV for the latent path: the inference variables' precomputed pair (layer_split.py) or cut from
    wkv_b (as the FP8 operand view gives it)."""
    h, n, c, v = cfg.n_heads, cfg.qk_nope_head_dim, cfg.kv_lora_rank, cfg.v_head_dim
    if pt.ABSORBED_UK not in p:
        return absorbed_weights(wkv_b, h, n)
    if cfg.fp8 != "none":
        raise ValueError(f"params attn/{pt.ABSORBED_UK}: precomputed absorbed weights skip the FP8 recipe's "
                         f"quantization of wkv_b; drop them (split_layers adds them only with fp8='none'), got "
                         f"fp8={cfg.fp8!r}")
    for name, want in ((pt.ABSORBED_UK, (h, n, c)), (pt.ABSORBED_UV, (h, c, v))):
        if tuple(p[name].shape) != want:
            raise ValueError(f"params attn/{name}: expected shape {want} (heads, ...; from wkv_b), got "
                             f"{tuple(p[name].shape)}")
    return p[pt.ABSORBED_UK], p[pt.ABSORBED_UV]


def cache_entries(cfg, latent: bool) -> dict[str, tuple[int, ...]]:
    """Per-token, per-layer cache entries: latent {c_kv: (C,), k_pe: (R,)}; per-head {k: (H, K), v: (H, V)}."""
    if latent:
        return {"c_kv": (cfg.kv_lora_rank,), "k_pe": (cfg.qk_rope_head_dim,)}
    return {"k": (cfg.n_heads, cfg.qk_head_dim), "v": (cfg.n_heads, cfg.v_head_dim)}


class MLA(nn.Module):
    """Holds MLA's projections (official names wq_a/q_norm/wq_b or wq, wkv_a/kv_norm/wkv_b, wo)."""

    cfg: "object"
    mesh: Any = None  # the activation mesh: weights gathered at use (linear.weight)

    def setup(self):
        c = self.cfg
        h, k = c.n_heads, c.qk_head_dim

        def w(name, shape, axes, init=None):
            return weight(self, name, shape, axes, init or normal_init(c.init_std), self.mesh)

        p = {}
        if c.q_lora_rank:
            p["wq_a"] = w("wq_a", (c.dim, c.q_lora_rank), ("embed", "q_lora"))
            p["q_norm"] = w("q_norm", (c.q_lora_rank,), ("q_lora",), nn.initializers.ones)
            p["wq_b"] = w("wq_b", (c.q_lora_rank, h * k), ("q_lora", "heads"))
        else:
            p["wq"] = w("wq", (c.dim, h * k), ("embed", "heads"))
        p["wkv_a"] = w("wkv_a", (c.dim, c.kv_lora_rank + c.qk_rope_head_dim), ("embed", "kv_lora"))
        p["kv_norm"] = w("kv_norm", (c.kv_lora_rank,), ("kv_lora",), nn.initializers.ones)
        p["wkv_b"] = w("wkv_b", (c.kv_lora_rank, h * (c.qk_nope_head_dim + c.v_head_dim)), ("kv_lora", "heads"))
        p["wo"] = w("wo", (h * c.v_head_dim, c.dim), ("heads", "embed"))
        weights = {k: v if k.endswith("_norm") else fp8_kernel(self, k, v, c) for k, v in p.items()}
        for name in (pt.ABSORBED_UK, pt.ABSORBED_UV):  # inference variables (layer_split.py)
            if self.has_variable(pt.PARAMS, name):
                weights[name] = self.get_variable(pt.PARAMS, name)
        self.weights = weights

    def __call__(self, x, positions, mask, cache: CacheSlot | None = None, norm=None):
        """x [B,T,D], positions [B,T], mask [B,T,T|S] -> (y [B,T,D], cache); norm: see mla()."""
        return mla(x, self.weights, positions, mask, self.cfg, cache, norm)
