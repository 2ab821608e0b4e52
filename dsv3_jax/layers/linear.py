"""Linear layers and the embedding / output head.

Every Linear of MLA, the dense MLP and the experts goes through `matmul` here, so the FP8 recipe (quant/) can
be injected in one place; the embedding, the output head and the router stay in high precision
(V3 report §3.3). Kernels are stored [in, out] in float32 (master weights) and cast to the compute dtype.
A kernel may also be a `quant.fp8_weight.FP8Weight` (an FP8 checkpoint loaded with keep_fp8=True): every
matmul here then runs the weight-only blockwise FP8 product (dequantized per 128x128 block inside the matmul),
and `kernel_of` / the operand views give its dequantized kernel.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax.numpy as jnp

from dsv3_jax import param_tree as pt
from dsv3_jax import sharding
from dsv3_jax.quant.fp8_delayed import init_delayed_meta
from dsv3_jax.quant.fp8_weight import is_fp8_weight, weight_only_matmul, weight_only_ragged_dot
from dsv3_jax.quant.recipe import FP8_RECIPES, make_matmul, make_operand_views, make_ragged_dot, tokens_matmul

FP8_META_COLLECTION = pt.FP8_META  # per-tensor delayed FP8: amax histories, updated as their gradient


class MetaKernel(NamedTuple):
    """A matmul kernel paired with its amax histories (a stateful recipe: cfg.fp8="per_tensor_delayed"); `mm` unpacks it, so the
    pure layer functions pass weights through unchanged whatever the recipe."""

    kernel: jnp.ndarray
    meta: Any  # quant.fp8_delayed.DelayedMeta


def kernel_of(w):
    """The bare kernel of a weight that may be a MetaKernel or an FP8Weight (dequantized, float32), for code
    that uses a kernel outside `mm`."""
    if is_fp8_weight(w):
        return w.dequantize(jnp.float32)
    return w.kernel if isinstance(w, MetaKernel) else w


def _weight_only(cfg):
    """FP8Weight kernels run weight-only: activations stay in the compute dtype, so no FP8 recipe may be on."""
    if cfg.fp8 != "none":
        raise ValueError(f"ModelConfig.fp8={cfg.fp8!r} with FP8Weight kernels (an FP8 checkpoint loaded with "
                         "keep_fp8=True): those run the weight-only FP8 matmul; set fp8='none', or load with "
                         "keep_fp8=False to dequantize them")


def fp8_kernel(module: nn.Module, name: str, kernel, cfg):
    """Attach the `fp8_meta` histories of `name` to `kernel` when the recipe keeps state; else `kernel`.

    Each such kernel must feed exactly one matmul per step (its meta's gradient is its next value)."""
    if not FP8_RECIPES.get(cfg.fp8).stateful:
        return kernel
    meta = module.variable(FP8_META_COLLECTION, name, init_delayed_meta, cfg.fp8_amax_history).value
    return MetaKernel(kernel, meta)


def _kernel_and_meta(w, cfg):
    """(kernel, FP8 histories or None). A bare kernel under per_tensor_delayed gets empty histories, i.e.
    scales from the current amax: the inference paths hold plain param dicts and quantize per tensor online."""
    if isinstance(w, MetaKernel):
        return w.kernel, w.meta
    return w, init_delayed_meta(cfg.fp8_amax_history) if FP8_RECIPES.get(cfg.fp8).stateful else None


def matmul(x: jnp.ndarray, kernel: jnp.ndarray, dtype) -> jnp.ndarray:
    """x [..., I] · kernel [I, O] in the compute dtype (fp32 accumulation where the backend supports it)."""
    if is_fp8_weight(kernel):
        return weight_only_matmul(x, kernel, dtype)
    return tokens_matmul(x, kernel, dtype)


def matmul_fn(cfg):
    """The `mm(x, w)` every Linear of MLA and the MLPs uses, chosen once from the config (cfg.fp8; "none" is
    `matmul`); w is a kernel or a MetaKernel."""
    mm = make_matmul(cfg.fp8, dtype=jnp.dtype(cfg.dtype), impl=cfg.fp8_impl)

    def fn(x, w):
        if is_fp8_weight(w):
            _weight_only(cfg)
            return weight_only_matmul(x, w, jnp.dtype(cfg.dtype))
        return mm(x, *_kernel_and_meta(w, cfg))
    return fn


def operand_views_fn(cfg):
    """`views(w) -> (kernel, act)`: the fp32 kernel a Linear of cfg's FP8 recipe multiplies by, and the map
    from its input to the activation it multiplies (identities without FP8); w is a kernel or a MetaKernel.
    For code that regroups a Linear's product (MLA's absorbed decode path) with the Linear's numerics."""
    views = make_operand_views(cfg.fp8, dtype=jnp.dtype(cfg.dtype))

    def fn(w):
        if is_fp8_weight(w):  # weight-only: the kernel the FP8 product multiplies by, activations as they are
            _weight_only(cfg)
            return w.dequantize(jnp.float32), lambda x: x.astype(jnp.dtype(cfg.dtype))
        return views(*_kernel_and_meta(w, cfg))
    return fn


def grouped_matmul_fn(cfg):
    """The grouped GEMM `gmm(x [M,K], w [E,K,N], group_sizes [E])` of the routed experts (cfg.fp8)."""
    gmm = make_ragged_dot(cfg.fp8, dtype=jnp.dtype(cfg.dtype))

    def fn(x, w, sizes):
        if is_fp8_weight(w):
            _weight_only(cfg)
            return weight_only_ragged_dot(x, w, sizes, jnp.dtype(cfg.dtype))
        kernel, meta = _kernel_and_meta(w, cfg)
        return gmm(x, kernel, sizes, meta)
    return fn


def normal_init(std: float):
    return nn.initializers.normal(stddev=std)


def weight(module: nn.Module, name: str, shape, axes, init, mesh=None):
    """A float32 parameter with logical axis names `axes`, as the layer multiplies it: on a mesh, its ZeRO
    split gathered at use (sharding.weight_at_use); `mesh` is the layer's activation mesh (None: one device)."""
    w = module.param(name, nn.with_logical_partitioning(init, tuple(axes)), shape, jnp.float32)
    return sharding.weight_at_use(w, tuple(axes), mesh)


class Linear(nn.Module):
    """y = x · W with W [in, out] carrying logical axis names `axes`."""

    features: int
    axes: Sequence[str | None]
    init_std: float
    dtype: jnp.dtype = jnp.float32
    mesh: Any = None  # the activation mesh: weights gathered at use (linear.weight)

    @nn.compact
    def __call__(self, x):
        kernel = weight(self, "kernel", (x.shape[-1], self.features), self.axes, normal_init(self.init_std),
                        self.mesh)
        return matmul(x, kernel, self.dtype)


class Embed(nn.Module):
    """Token embedding table [V, D] (kept in high precision, V3 report §3.3)."""

    vocab_size: int
    dim: int
    init_std: float
    dtype: jnp.dtype = jnp.float32
    mesh: Any = None  # the activation mesh: the table gathered at use (linear.weight)

    def setup(self):
        self.embedding = weight(self, "embedding", (self.vocab_size, self.dim), ("vocab", "embed"),
                                normal_init(self.init_std), self.mesh)

    def __call__(self, tokens: jnp.ndarray) -> jnp.ndarray:
        return jnp.take(self.embedding, tokens, axis=0).astype(self.dtype)


class Head(nn.Module):
    """Output projection D -> V; logits are returned in float32 (losses are fp32, docs/numerics.md)."""

    vocab_size: int
    init_std: float
    dtype: jnp.dtype = jnp.float32
    mesh: Any = None  # the activation mesh: the kernel gathered at use (linear.weight)

    @nn.compact
    def __call__(self, h: jnp.ndarray) -> jnp.ndarray:
        kernel = weight(self, "kernel", (h.shape[-1], self.vocab_size), ("embed", "vocab"),
                        normal_init(self.init_std), self.mesh)
        return tokens_matmul(h, kernel, self.dtype, out_dtype=jnp.float32)


def checked_tokens(tokens: jnp.ndarray, name: str = "tokens") -> jnp.ndarray:
    """Validate a token batch's rank and dtype (values are checked by the data pipeline)."""
    if tokens.ndim != 2:
        raise ValueError(f"{name}: expected int32 [B, T], got shape {tuple(tokens.shape)}")
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"{name}: expected an integer dtype, got {tokens.dtype}")
    return tokens.astype(jnp.int32)

