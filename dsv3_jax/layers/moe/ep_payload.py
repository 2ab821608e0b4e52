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

import jax
import jax.numpy as jnp

from dsv3_jax.quant import fp8, logfmt


def encode(x, payload: str):
    """x [R, D] -> a tuple of arrays with leading axis R: (x,), (q, s) or (codes, lo, step)."""
    if payload == "compute":
        return (x,)
    if payload == "fp8":
        return fp8.quantize_tiles(x, pow2=True)  # q [R, D] E4M3, s [R, Db] fp32 (power-of-2)
    if payload.startswith("logfmt"):
        return logfmt.logfmt_encode(x, int(payload[len("logfmt"):]))
    raise ValueError(f"ep_payload: unknown payload {payload!r}")


def decode(parts, payload: str, dtype):
    """Inverse of `encode` in `dtype`."""
    if payload == "compute":
        return parts[0].astype(dtype)
    if payload == "fp8":
        return fp8.dequantize_tiles(*parts, dtype=dtype)
    return logfmt.logfmt_decode(*parts, n_bits=int(payload[len("logfmt"):]), dtype=dtype)


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


def combine_cast(y, combine: str):
    """The dtype results travel back in: the compute dtype, or bfloat16 (V3 report §3.3 BF16 combine)."""
    return y if combine == "compute" else y.astype(jnp.bfloat16)
