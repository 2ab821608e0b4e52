"""Grouped SwiGLU as ONE batched matmul over the experts: each expert's sorted rows are copied into a slot of a
[E, C, D] buffer and multiplied by its own weights, read in place, [E, C, D] x [E, D, F].

The decoding form of the blocked backend. A decoding step has a few rows per expert (k per token), so a loop of
per-expert GEMMs pays its iterations' overhead and a batched matmul over per-block gathered weights pays a copy
of every weight it reads; here the only copies are of rows. The capacity C is picked AT RUN TIME from a static
ladder (`capacities`) with `lax.switch`: the smallest rung that holds the fullest expert, so no row is ever
dropped and the padding is at most a rung's step. A group larger than every rung (more rows than tokens, which
top-k routing never produces) takes the last branch, the loop of block_loop.py: exact for any input. Slots
past an expert's row count hold other rows, computed and never read back.

Legend: M sorted rows, D model dim, F expert hidden, E experts, C capacity (slots per expert).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from dsv3_jax import sharding
from dsv3_jax.layers.moe import block_loop

RUNG_RATIO = 1.25  # capacity ladder step: at most 25% padding above the fullest expert
MAX_RUNGS = 4  # rungs below the hard bound (each is one more compiled branch)


def capacities(m: int, n_experts: int, max_rows: int) -> tuple[int, ...]:
    """The capacity ladder for m rows over n_experts groups of at most max_rows rows each: MAX_RUNGS rungs from
    the balanced mean plus one standard deviation, μ + √μ with μ = m / E (a balanced router's fullest group is
    rarely below it), each RUNG_RATIO× the one before (at least one more), then max_rows itself."""
    mean = m / n_experts
    rung, rungs = max(1, math.ceil(mean + math.sqrt(mean))), []
    while rung < max_rows and len(rungs) < MAX_RUNGS:
        rungs.append(rung)
        rung = max(rung + 1, math.ceil(rung * RUNG_RATIO))
    return tuple(rungs) + (max(1, max_rows),)


def expected_capacity(m: int, n_experts: int, max_rows: int) -> int:
    """The rung a balanced router typically runs: the first that holds μ + 2√μ + 1 rows, about the fullest of
    E binomial groups of mean μ = m / E."""
    mean = m / n_experts
    need = mean + 2 * math.sqrt(mean) + 1
    return next((c for c in capacities(m, n_experts, max_rows) if c >= need), max(1, max_rows))


class Slots:
    """Where the sorted rows go: slot (e, c) reads sorted row first_row[e] + c (clipped into range), and sorted
    row r sits in slot (group[r], local[r])."""

    def __init__(self, sizes, m: int):
        self.first_row = jnp.cumsum(sizes) - sizes
        self.group = jnp.repeat(jnp.arange(sizes.shape[0]), sizes, total_repeat_length=m)
        self.local = jnp.arange(m) - self.first_row[self.group]
        self.m = m

    def fill(self, rows, cap: int):
        """rows [M, X] -> [E, C, X]."""
        index = jnp.minimum(self.first_row[:, None] + jnp.arange(cap)[None, :], self.m - 1)
        return rows.at[index].get(mode="promise_in_bounds")

    def read(self, buffer):
        """buffer [E, C, X] -> its M valid rows [M, X] in sorted order."""
        return buffer.at[self.group, self.local].get(mode="promise_in_bounds")


def _dot(spec, a, b, dtype):
    return jnp.einsum(spec, a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32)


def _to_weight(g, w):
    """The weight gradient g as w's: inside shard_map, w may be invariant along axes the tokens vary over (an
    EP rank's local experts are shared by its data shards); its cotangent is the sum over those axes (the
    transpose of the pvary)."""
    extra = tuple(sorted(sharding.varying_axes(g) - sharding.varying_axes(w)))
    return (jax.lax.psum(g, extra) if extra else g).astype(w.dtype)


def _branch(sizes, caps):
    """Index of the smallest rung holding the fullest expert; len(caps) when none does (the loop branch)."""
    return jnp.searchsorted(jnp.asarray(caps, jnp.int32), jnp.max(sizes)).astype(jnp.int32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def capacity_swiglu(xs, sizes, w1, w2, w3, caps: tuple[int, ...], block: int, dtype):
    """ys [M, D], row r through its group's SwiGLU (the same function as block_loop.looped_swiglu); rows are
    grouped contiguously by `sizes` [E]; w1, w3 [E, D, F], w2 [E, F, D]; `block` is the loop branch's block."""
    slots = Slots(sizes, xs.shape[0])

    def batched(cap):
        xb = slots.fill(xs, cap)
        a, b = _dot("ecd,edf->ecf", xb, w1, dtype), _dot("ecd,edf->ecf", xb, w3, dtype)
        return slots.read(_dot("ecf,efd->ecd", jax.nn.silu(a) * b, w2, dtype)).astype(dtype)

    def looped():
        return block_loop.looped_swiglu(xs, sizes, w1, w2, w3, block, dtype).astype(dtype)

    return jax.lax.switch(_branch(sizes, caps), [functools.partial(batched, c) for c in caps] + [looped])


def _fwd(xs, sizes, w1, w2, w3, caps, block, dtype):
    # Residuals are the inputs only: the backward recomputes the two up-projections (a decoding-sized step).
    return capacity_swiglu(xs, sizes, w1, w2, w3, caps, block, dtype), (xs, sizes, w1, w2, w3)


def _bwd(caps, block, dtype, res, dy):
    xs, sizes, w1, w2, w3 = res
    slots = Slots(sizes, xs.shape[0])

    def batched(cap):
        xb = slots.fill(xs, cap)
        valid = (jnp.arange(cap)[None, :] < sizes[:, None])[..., None]
        g_out = jnp.where(valid, slots.fill(dy, cap), 0)  # slots past a group's rows carry no gradient
        a, b = _dot("ecd,edf->ecf", xb, w1, dtype), _dot("ecd,edf->ecf", xb, w3, dtype)
        s = jax.nn.sigmoid(a)
        act = a * s
        d2 = _dot("ecf,ecd->efd", act * b, g_out, dtype)
        dg = _dot("ecd,efd->ecf", g_out, w2, dtype)
        da, db = dg * b * (s + act * (1 - s)), dg * act  # d silu(a)/da = s·(1 + a·(1 − s))
        d1, d3 = _dot("ecd,ecf->edf", xb, da, dtype), _dot("ecd,ecf->edf", xb, db, dtype)
        dx = _dot("ecf,edf->ecd", da, w1, dtype) + _dot("ecf,edf->ecd", db, w3, dtype)
        return (slots.read(dx), *(_to_weight(g, w) for g, w in ((d1, w1), (d2, w2), (d3, w3))))

    def looped():
        _, vjp = jax.vjp(lambda x, a, b, c: block_loop.looped_swiglu(x, sizes, a, b, c, block, dtype),
                         xs, w1, w2, w3)
        dx, *grads = vjp(dy.astype(dtype))  # block_loop's backward already sums over the invariant axes
        return (dx.astype(jnp.float32), *(g.astype(w.dtype) for g, w in zip(grads, (w1, w2, w3))))

    dx, *grads = jax.lax.switch(_branch(sizes, caps), [functools.partial(batched, c) for c in caps] + [looped])
    return (dx.astype(xs.dtype), None, *grads)


capacity_swiglu.defvjp(_fwd, _bwd)
