"""Payload formats of the EP exchange and a straight-through exchange for quantized payloads.

DeepSeek-V3 quantizes the MoE dispatch to FP8 (1x128 tiles, power-of-2 scales) and keeps the combine in
BF16 (V3 report §3.3 "low-precision communication"); Insights §3.2 studies LogFMT-8/10 for the same
payloads. Here a payload is encoded, each component (values, scales) is moved by the same collective, and
decoded on the receiver. The quantizers are dsv3_jax.quant.fp8 / dsv3_jax.quant.logfmt.

Gradients: rounding to FP8 has no useful derivative, so `exchange` is a custom_vjp whose backward moves the
cotangent back through the reverse collective in its own dtype (straight-through): the backward of a
dispatch is a combine, which DeepSeek also keeps in high precision. The same rule serves unquantized
payloads, where it is the exact transpose (the collective is a permutation of rows), so one hand-written
reverse (tested on CPU) backs every path. `move(parts, plan, reverse)` is the collective.
Legend: R rows moved, D model dim, Db = ceil(D/128) tiles.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from dsv3_jax.quant import fp8, logfmt
from dsv3_jax.registry import Registry


class Payload(NamedTuple):
    """One dispatch format: encode x [R, D] into arrays with leading axis R, decode them, and the bytes one
    token of D values takes on the wire (values plus per-128 scales, fp32)."""
    encode: Callable
    decode: Callable  # (parts, dtype) -> [R, D]
    token_bytes: Callable  # (dim, compute itemsize) -> int


def _logfmt(bits: int) -> Payload:
    return Payload(lambda x: logfmt.logfmt_encode(x, bits),
                   lambda parts, dtype: logfmt.logfmt_decode(*parts, n_bits=bits, dtype=dtype),
                   lambda dim, _: dim * (1 if bits <= 8 else 2) + 8 * -(-dim // 128))  # codes + (lo, step)


# ModelConfig.ep_payload: "compute" sends the compute dtype; "fp8" 1x128 E4M3 tiles with power-of-2 scales
# (V3 report §3.3); LogFMT-8/10 (Insights §3.2).
EP_PAYLOADS = Registry("ep_payload", "EP dispatch payload")
EP_PAYLOADS.register("compute", Payload(lambda x: (x,), lambda parts, dtype: parts[0].astype(dtype),
                                        lambda dim, itemsize: dim * itemsize))
EP_PAYLOADS.register("fp8", Payload(lambda x: fp8.quantize_tiles(x, pow2=True),
                                    lambda parts, dtype: fp8.dequantize_tiles(*parts, dtype=dtype),
                                    lambda dim, _: dim + 4 * -(-dim // 128)))  # E4M3 + one fp32 scale per tile
EP_PAYLOADS.register("logfmt8", _logfmt(8))
EP_PAYLOADS.register("logfmt10", _logfmt(10))


def encode(x, payload: str):
    """x [R, D] -> a tuple of arrays with leading axis R: (x,), (q, s) or (codes, lo, step)."""
    return EP_PAYLOADS.get(payload).encode(x)


def decode(parts, payload: str, dtype):
    """Inverse of `encode` in `dtype`."""
    return EP_PAYLOADS.get(payload).decode(parts, dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def exchange(payload: str, move, reverse: bool, x, plan):
    """Move rows x [R, D] with `move(parts, plan, reverse)`, sending them in `payload` format; the
    backward pass moves the cotangent with `move(..., not reverse)` unquantized."""
    parts = move(encode(x, payload), plan, reverse)
    return decode(parts, payload, x.dtype)


def _exchange_fwd(payload, move, reverse, x, plan):
    return exchange(payload, move, reverse, x, plan), plan


def _exchange_bwd(payload, move, reverse, plan, g):
    (gx,) = move((g,), plan, not reverse)
    return gx, None


exchange.defvjp(_exchange_fwd, _exchange_bwd)


# ModelConfig.ep_combine: the dtype expert outputs travel back in (V3 report §3.3: BF16 combine).
EP_COMBINES = Registry("ep_combine", "EP combine dtype")
EP_COMBINES.register("compute", None)
EP_COMBINES.register("bfloat16", jnp.bfloat16)


def combine_cast(y, combine: str):
    """y in the dtype it travels back in: the compute dtype, or bfloat16."""
    dtype = EP_COMBINES.get(combine)
    return y if dtype is None else y.astype(dtype)


def combine_bytes(dim: int, combine: str, compute_itemsize: int) -> int:
    """Bytes of one token's combined result on the wire."""
    dtype = EP_COMBINES.get(combine)
    return dim * (compute_itemsize if dtype is None else jnp.dtype(dtype).itemsize)
