"""Grouped SwiGLU as ONE batched matmul over the experts: each expert's sorted rows are copied into a slot of a
[E, C, D] buffer and multiplied by its own weights, read in place, [E, C, D] x [E, D, F].

The decoding form of the blocked backend. A decoding step has a few rows per expert (k per token), so a loop of
per-expert GEMMs pays its iterations' overhead and a batched matmul over per-block gathered weights pays a copy
of every weight it reads; here the only copies are of rows. The capacity C is picked AT RUN TIME from a static
ladder (`capacities`) with `lax.switch`: the smallest rung that holds the fullest expert, so no row is ever
dropped and the padding is at most a rung's step. A group larger than every rung (a badly balanced batch, or
more rows than tokens, which top-k routing never produces) takes the last branch, the loop of block_loop.py:
exact for any input. Slots past an expert's row count hold other rows, computed and never read back. The rows
are gathered straight from the tokens and the outputs straight into assignment order (no sorted copy), and
the forward keeps the two up-projections for the backward.

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
TOP_RUNG_RATIO = 1.5  # the hard bound max_rows is a rung only this close above the ladder


def capacities(m: int, n_experts: int, max_rows: int) -> tuple[int, ...]:
    """The capacity ladder for m rows over n_experts groups of at most max_rows rows each: MAX_RUNGS rungs from
    the balanced mean plus one standard deviation, μ + √μ with μ = m / E (a balanced router's fullest group is
    rarely below it), each RUNG_RATIO× the one before (at least one more), then max_rows itself if it is at
    most TOP_RUNG_RATIO× the last (decoding: a few rows per expert). Groups above the top rung take the loop
    branch, so no branch's buffer exceeds about 2·m rows."""
    mean = m / n_experts
    rung, rungs = max(1, math.ceil(mean + math.sqrt(mean))), []
    while rung < max_rows and len(rungs) < MAX_RUNGS:
        rungs.append(rung)
        rung = max(rung + 1, math.ceil(rung * RUNG_RATIO))
    if not rungs or max_rows <= TOP_RUNG_RATIO * rungs[-1]:
        rungs.append(max(1, max_rows))
    return tuple(rungs)


def expected_capacity(m: int, n_experts: int, max_rows: int) -> int:
    """The rung a balanced router typically runs: the first that holds μ + 2√μ + 1 rows, about the fullest of
    E binomial groups of mean μ = m / E."""
    mean = m / n_experts
    need = mean + 2 * math.sqrt(mean) + 1
    caps = capacities(m, n_experts, max_rows)
    return next((c for c in caps if c >= need), caps[-1])


class Slots:
    """Where the rows go. Sorted row r (rows grouped contiguously by expert, `sizes` [E]) is assignment
    order[r] of the token order[r] // k; slot (e, c) holds sorted row first_row[e] + c (clipped into range; the
    slots past a group's size hold other rows), and assignment a sits in slot (group, local) of inverse[a]."""

    def __init__(self, order, inverse, sizes, k: int):
        m = order.shape[0]
        first_row = jnp.cumsum(sizes) - sizes
        group = jnp.repeat(jnp.arange(sizes.shape[0]), sizes, total_repeat_length=m)
        local = jnp.arange(m) - first_row[group]
        self.first_row, self.sizes, self.order, self.k, self.m = first_row, sizes, order, k, m
        self.group, self.local = group[inverse], local[inverse]  # per assignment

    def rows(self, cap: int):
        """[E, C] sorted row of each slot."""
        return jnp.minimum(self.first_row[:, None] + jnp.arange(cap)[None, :], self.m - 1)

    def tokens(self, x, cap: int):
        """x [N, X] -> [E, C, X]: each slot's token row (one gather, from the tokens themselves)."""
        return x.at[self.order[self.rows(cap)] // self.k].get(mode="promise_in_bounds")

    def assignments(self, a, cap: int):
        """a [M, X] per assignment -> [E, C, X], zero in the slots past a group's size."""
        valid = (jnp.arange(cap)[None, :] < self.sizes[:, None])[..., None]
        return jnp.where(valid, a.at[self.order[self.rows(cap)]].get(mode="promise_in_bounds"), 0)

    def read(self, buffer):
        """buffer [E, C, X] -> [M, X] per assignment (token-major: assignment j of token t at t·k + j)."""
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


def _looped(x, order, inverse, sizes, w1, w2, w3, k, block, dtype):
    xs = x.at[order // k].get(mode="promise_in_bounds")
    ys = block_loop.looped_swiglu(xs, sizes, w1, w2, w3, block, dtype)
    return ys.at[inverse].get(mode="promise_in_bounds").astype(dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8, 9, 10))
def capacity_swiglu(x, order, inverse, sizes, w1, w2, w3, k: int, caps: tuple[int, ...], block: int, dtype):
    """y [M, D] per assignment (token-major): assignment a = t·k + j of token t through its expert's SwiGLU.
    order/inverse [M]: the stable sort of the assignments by expert and its inverse, sizes [E] the group sizes
    (dispatch.sort_assignments); w1, w3 [E, D, F], w2 [E, F, D]; `block` is the loop branch's block."""
    slots = Slots(order, inverse, sizes, k)

    def batched(cap):
        xb = slots.tokens(x, cap)
        a, b = _dot("ecd,edf->ecf", xb, w1, dtype), _dot("ecd,edf->ecf", xb, w3, dtype)
        return slots.read(_dot("ecf,efd->ecd", jax.nn.silu(a) * b, w2, dtype)).astype(dtype)

    looped = functools.partial(_looped, x, order, inverse, sizes, w1, w2, w3, k, block, dtype)
    return jax.lax.switch(_branch(sizes, caps), [functools.partial(batched, c) for c in caps] + [looped])


def _forward(x, order, inverse, sizes, w1, w2, w3, k, caps, block, dtype):
    """(y [M, D], the up-projections a = x·W1, b = x·W3 [M, F] fp32) per assignment, token-major."""
    slots = Slots(order, inverse, sizes, k)

    def batched(cap):
        xb = slots.tokens(x, cap)
        a, b = _dot("ecd,edf->ecf", xb, w1, dtype), _dot("ecd,edf->ecf", xb, w3, dtype)
        y = slots.read(_dot("ecf,efd->ecd", jax.nn.silu(a) * b, w2, dtype)).astype(dtype)
        return y, slots.read(a), slots.read(b)

    def looped():
        xs = x.at[order // k].get(mode="promise_in_bounds")
        ys, (_, _, h1, h3, *_) = block_loop._forward(xs, sizes, w1, w2, w3, block, dtype)
        back = lambda v: v.at[inverse].get(mode="promise_in_bounds")  # noqa: E731
        return back(ys).astype(dtype), back(h1), back(h3)

    return jax.lax.switch(_branch(sizes, caps), [functools.partial(batched, c) for c in caps] + [looped])


def _fwd(x, order, inverse, sizes, w1, w2, w3, k, caps, block, dtype):
    # Residuals: the inputs and the two up-projections per assignment (the backward multiplies 6 GEMMs, not 8).
    y, a, b = _forward(x, order, inverse, sizes, w1, w2, w3, k, caps, block, dtype)
    return y, (x, order, inverse, sizes, w1, w2, w3, a, b)


def _bwd(k, caps, block, dtype, res, dy):
    x, order, inverse, sizes, w1, w2, w3, a_rows, b_rows = res
    slots = Slots(order, inverse, sizes, k)
    n = x.shape[0]

    def batched(cap):
        xb = slots.tokens(x, cap)
        g_out = slots.assignments(dy, cap)  # slots past a group's rows carry no gradient
        a, b = slots.assignments(a_rows, cap), slots.assignments(b_rows, cap)
        s = jax.nn.sigmoid(a)
        act = a * s
        d2 = _dot("ecf,ecd->efd", act * b, g_out, dtype)
        dg = _dot("ecd,efd->ecf", g_out, w2, dtype)
        da, db = dg * b * (s + act * (1 - s)), dg * act  # d silu(a)/da = s·(1 + a·(1 − s))
        d1, d3 = _dot("ecd,ecf->edf", xb, da, dtype), _dot("ecd,ecf->edf", xb, db, dtype)
        dx = _dot("ecf,edf->ecd", da, w1, dtype) + _dot("ecf,edf->ecd", db, w3, dtype)
        dx = slots.read(dx).reshape(n, k, -1).sum(1)  # a token's k assignments, summed
        return (dx, *(_to_weight(g, w) for g, w in ((d1, w1), (d2, w2), (d3, w3))))

    def looped():
        _, vjp = jax.vjp(lambda *a: _looped(a[0], order, inverse, sizes, *a[1:], k, block, dtype), x, w1, w2, w3)
        dx, *grads = vjp(dy.astype(dtype))  # block_loop's backward already sums over the invariant axes
        return (dx.astype(jnp.float32), *(g.astype(w.dtype) for g, w in zip(grads, (w1, w2, w3))))

    dx, *grads = jax.lax.switch(_branch(sizes, caps), [functools.partial(batched, c) for c in caps] + [looped])
    return (dx.astype(x.dtype), None, None, None, *grads)


capacity_swiglu.defvjp(_fwd, _bwd)
