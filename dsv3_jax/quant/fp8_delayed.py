"""Per-tensor delayed-scaling FP8 (TransformerEngine-style baseline for the ablation; V3 report §3.3 contrasts
it with its fine-grained online recipe).

    y [M, N] = x [M, K] · w [K, N]:  x, w per-tensor E4M3 (forward), dy per-tensor E5M2 (backward)

Scales are "delayed": each tensor's dequant scale comes from the max over an amax HISTORY of earlier steps,
s = max(history) / FP_MAX, and the current amax is pushed into the history for later steps (on the very first
step, when the history is all zeros, the current amax is used instead, so the first step neither overflows
nor flushes gradients to zero: a documented simplification of TE's initial scale = 1).

State: the histories are explicit arrays `DelayedMeta(x, w, g)` ([L] float32 each, newest first) passed in and
differentiated like a parameter. Under `jax.grad`, the COTANGENT returned for the meta is its updated value
("overwrite with gradient", the convention of flax.linen.fp8_ops): a train step must replace the meta with
its gradient instead of applying an optimizer update. Each meta must be used by exactly one matmul per step
(cotangents of shared uses would be summed).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from dsv3_jax.quant.fp8 import E4M3, E5M2, amax_to_scale, quantize_tensor

DEFAULT_HISTORY = 16
_TINY_FLOOR = 1e-30  # guards all-zero tensors only


class DelayedMeta(NamedTuple):
    """amax histories [L] (float32, newest first) of the activation, the weight and the output gradient."""

    x: jax.Array
    w: jax.Array
    g: jax.Array


def init_delayed_meta(history_len: int = DEFAULT_HISTORY) -> DelayedMeta:
    """All-zero histories: the first step falls back to the current amax (see module docstring)."""
    if history_len < 1:
        raise ValueError(f"history_len: expected >= 1, got {history_len}")
    z = jnp.zeros((history_len,), jnp.float32)
    return DelayedMeta(z, z, z)


def delayed_scale(history, current_amax, dtype):
    """s = max(history) / FP_MAX, or the current amax on the first step (empty history)."""
    past = jnp.max(history)
    return amax_to_scale(jnp.where(past > 0, past, current_amax), dtype, amax_floor=_TINY_FLOOR)


def push_amax(history, amax):
    """Newest-first ring update: [amax, h0, ..., h_{L-2}]."""
    return jnp.concatenate([amax.reshape(1).astype(jnp.float32), history[:-1]])


def quantize_delayed(x, history, dtype):
    """Per-tensor quantize with the delayed scale -> (q, s, updated history)."""
    amax = jnp.max(jnp.abs(x)).astype(jnp.float32)
    s = delayed_scale(history, amax, dtype)
    return quantize_tensor(x, s, dtype=dtype), s, push_amax(history, amax)


def fp8_dot(a, b, dims):
    """FP8 x FP8 dot with fp32 output (cuBLASLt FP8 GEMM on Hopper; plain upcast on CPU)."""
    return jax.lax.dot_general(a, b, (dims, ((), ())), preferred_element_type=jnp.float32)


def _fwd(x, w, meta):
    xq, sx, hx = quantize_delayed(x, meta.x, E4M3)
    wq, sw, hw = quantize_delayed(w, meta.w, E4M3)
    y = (fp8_dot(xq, wq, ((1,), (0,))) * (sx * sw)).astype(x.dtype)
    return y, (xq, sx, wq, sw, hx, hw, meta.g, jnp.zeros((0,), x.dtype), jnp.zeros((0,), w.dtype))


def _bwd(res, dy):
    xq, sx, wq, sw, hx, hw, hg, x_proto, w_proto = res
    gq, sg, hg_new = quantize_delayed(dy, hg, E5M2)
    dx = (fp8_dot(gq, wq, ((1,), (1,))) * (sg * sw)).astype(x_proto.dtype)  # [M, K]
    dw = (fp8_dot(xq, gq, ((0,), (0,))) * (sx * sg)).astype(w_proto.dtype)  # [K, N]
    return dx, dw, DelayedMeta(hx, hw, hg_new)  # meta cotangent = updated histories


@jax.custom_vjp
def _delayed_2d(x, w, meta):
    return _fwd(x, w, meta)[0]


_delayed_2d.defvjp(_fwd, _bwd)


def delayed_linear(x, w, meta: DelayedMeta):
    """y [..., N] = x [..., K] · w [K, N] with per-tensor delayed scaling; see the module docstring for `meta`."""
    from dsv3_jax.quant.fp8_linear import check_linear_shapes
    check_linear_shapes(x, w, "delayed_linear")
    if not isinstance(meta, DelayedMeta):
        raise ValueError(f"delayed_linear: meta must be a DelayedMeta (init_delayed_meta()), got {type(meta)}")
    y = _delayed_2d(x.reshape(-1, x.shape[-1]), w, meta)
    return y.reshape(*x.shape[:-1], w.shape[1])
