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


BASE_START = 0.875  # two grids: the base ladder starts at this fraction of the mean ...
BASE_RATIO = 1.07  # ... and steps by this ratio, BASE_RUNGS rungs (it holds the (H+1)-th fullest expert)
BASE_RUNGS = 6
OVERFLOW_FRACTIONS = (1 / 16, 1 / 8, 1 / 4, 3 / 8, 1 / 2, 5 / 8, 3 / 4, 1)  # of the mean: the overflow ladder


def two_grid_ladders(m: int, n_experts: int, max_rows: int) -> tuple[tuple[int, ...], tuple]:
    """(base ladder, (H, overflow ladder)) of the two-grid capacity batch (Plan) for m rows over n_experts
    groups of at most max_rows rows, H = n_experts // 2. The base grid holds all but the H fullest groups
    entirely, so its ladder sits around the mean (from BASE_START·μ); the overflow grid holds the H fullest
    groups' excess over it, from a few rows (a balanced router) to the mean (the fullest at about twice it)."""
    mean = m / n_experts
    base, rung = [], max(1, math.ceil(BASE_START * mean))
    while rung < max_rows and len(base) < BASE_RUNGS:
        base.append(rung)
        rung = max(rung + 1, math.ceil(rung * BASE_RATIO))
    if not base or max_rows <= base[-1] * BASE_RATIO:
        base.append(max_rows)
    over = sorted({min(max_rows, max(1, math.ceil(f * mean))) for f in OVERFLOW_FRACTIONS})
    return tuple(base), (n_experts // 2, tuple(over))


def expected_capacity(m: int, n_experts: int, max_rows: int) -> int:
    """The rung a balanced router typically runs: the first that holds μ + 2√μ + 1 rows, about the fullest of
    E binomial groups of mean μ = m / E."""
    mean = m / n_experts
    need = mean + 2 * math.sqrt(mean) + 1
    caps = capacities(m, n_experts, max_rows)
    return next((c for c in caps if c >= need), caps[-1])


class Slots:
    """Where the rows go. Sorted row r (rows grouped contiguously by expert, `sizes` [E]) is assignment
    order[r] of the token order[r] // k; assignment a is row `local` of its expert `group` (inverse[a] in the
    sorted order). `window` lays a [G, C] grid of slots over some of the experts' rows."""

    def __init__(self, order, inverse, sizes, k: int):
        m = order.shape[0]
        first_row = jnp.cumsum(sizes) - sizes
        group = jnp.repeat(jnp.arange(sizes.shape[0]), sizes, total_repeat_length=m)
        local = jnp.arange(m) - first_row[group]
        self.first_row, self.sizes, self.order, self.k, self.m = first_row, sizes, order, k, m
        self.group, self.local = group[inverse], local[inverse]  # per assignment

    def window(self, experts, start, cap: int, index=None) -> "Window":
        """Slots (g, c) for expert experts[g] [G] holding its rows start .. start + cap − 1 (start: a traced
        scalar). index [E]: each expert's g, −1 where it has no slots (default: experts is arange(E))."""
        return Window(self, experts, start, cap, index)


class Window:
    """A [G, C] grid of slots: slot (g, c) holds row start + c of expert experts[g] (sorted row first_row +
    start + c, clipped into range); slots past the expert's size hold other rows, computed and never read."""

    def __init__(self, slots: Slots, experts, start, cap: int, index=None):
        self.s, self.experts, self.start, self.cap = slots, experts, start, cap
        g = experts.shape[0]
        index = jnp.arange(g) if index is None else index
        # Each assignment's slot, clipped into the grid: exact for the assignments the grid holds, another
        # slot's value for the rest (the overflow grid's, which `write` then puts in place).
        self.flat = jnp.clip(index[slots.group] * cap + slots.local - start, 0, g * cap - 1)
        self.valid = start + jnp.arange(cap)[None, :] < slots.sizes[experts][:, None]  # [G, C]

    def rows(self):
        """[G, C] sorted row of each slot."""
        first = self.s.first_row[self.experts] + self.start
        return jnp.minimum(first[:, None] + jnp.arange(self.cap)[None, :], self.s.m - 1)

    def tokens(self, x):
        """x [N, X] -> [G, C, X]: each slot's token row (one gather, from the tokens themselves)."""
        return x.at[self.s.order[self.rows()] // self.s.k].get(mode="promise_in_bounds")

    def assignments(self, a):
        """a [M, X] per assignment -> [G, C, X], zero in the slots past an expert's rows."""
        got = a.at[self.s.order[self.rows()]].get(mode="promise_in_bounds")
        return jnp.where(self.valid[..., None], got, 0)

    def read(self, buffer):
        """buffer [G, C, X] -> [M, X] per assignment (token-major: assignment j of token t at t·k + j), exact
        for the assignments this grid holds."""
        return buffer.reshape(-1, buffer.shape[-1]).at[self.flat].get(mode="promise_in_bounds")

    def write(self, target, buffer):
        """target [M, X] per assignment with this grid's assignments set from buffer [G, C, X] (a scatter of
        its valid slots only: the overflow grid's few rows, in place)."""
        dest = jnp.where(self.valid, self.s.order[self.rows()], self.s.m).reshape(-1)  # m: dropped
        return target.at[dest].set(buffer.reshape(-1, buffer.shape[-1]).astype(target.dtype), mode="drop",
                                   unique_indices=True)


def _dot(spec, a, b, dtype):
    return jnp.einsum(spec, a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32)


def _reduced(g, w):
    """The weight gradient g summed like w's cotangent, in fp32: inside shard_map, w may be invariant along
    axes the tokens vary over (an EP rank's local experts are shared by its data shards); its cotangent is
    the sum over those axes (the transpose of the pvary)."""
    extra = tuple(sorted(sharding.varying_axes(g) - sharding.varying_axes(w)))
    return jax.lax.psum(g, extra) if extra else g


def _index(caps, need):
    """Index of the smallest rung holding `need` rows; len(caps) when none does."""
    return jnp.searchsorted(jnp.asarray(caps, jnp.int32), need).astype(jnp.int32)


class Plan:
    """Which grids run, as traced switch indices. One window (overflow None): every expert's rows in one
    [E, C] grid, C the smallest rung of `caps` holding the fullest expert; index len(caps) is the loop.
    Two windows (overflow = (H, over_caps)): the base grid [E, C] holds every expert's first C rows, C the
    smallest rung holding the (H+1)-th fullest expert (so all but the H fullest fit entirely), and an
    overflow grid [H, C'] over the H fullest holds their rows past C, C' the smallest rung of over_caps
    holding the largest excess. The padding is then E·C + H·C' − M slots instead of E·max − M: with the
    unbalanced routing of a fresh router (the side-by-side checkpoint: fullest expert 1.5× the mean) about a
    quarter fewer. If either grid has no rung, the loop runs everything."""

    def __init__(self, sizes, caps, overflow):
        if overflow is None:
            self.base = _index(caps, jnp.max(sizes))
            return
        h, over_caps = overflow
        by_size = jnp.argsort(-sizes, stable=True)  # fullest first
        base = _index(caps, sizes[by_size[h]])
        cap = jnp.asarray(caps + (0,), jnp.int32)[base]
        over = _index(over_caps, jnp.max(sizes) - cap)
        loop = (base == len(caps)) | (over == len(over_caps))
        self.base, self.over = jnp.where(loop, len(caps), base), jnp.where(loop, 0, over)
        # The overflow grid starts at the base capacity; when the loop runs everything it starts past every
        # row, so it holds none (its switch still runs one branch).
        self.heavy, self.start = by_size[:h], jnp.where(loop, jnp.sum(sizes), cap)
        self.heavy_index = jnp.full(sizes.shape, -1, jnp.int32).at[self.heavy].set(jnp.arange(h, dtype=jnp.int32))


def _window_slots(win, x, w1, w2, w3, dtype, keep: bool):
    """The window's SwiGLU on its slots: (y [G, C, D], and when `keep` a, b [G, C, F]) fp32."""
    xb = win.tokens(x)
    a, b = _dot("ecd,edf->ecf", xb, w1, dtype), _dot("ecd,edf->ecf", xb, w3, dtype)
    y = _dot("ecf,efd->ecd", jax.nn.silu(a) * b, w2, dtype)
    return (y, a, b) if keep else (y,)


def _window_grads(win, x, w1, w2, w3, a_rows, b_rows, dy, dtype):
    """(dx [G, C, D] per slot, dW1, dW2, dW3 of the window's experts), fp32."""
    xb = win.tokens(x)
    g_out = win.assignments(dy)  # slots past an expert's rows carry no gradient
    a, b = win.assignments(a_rows), win.assignments(b_rows)
    s = jax.nn.sigmoid(a)
    act = a * s
    d2 = _dot("ecf,ecd->efd", act * b, g_out, dtype)
    dg = _dot("ecd,efd->ecf", g_out, w2, dtype)
    da, db = dg * b * (s + act * (1 - s)), dg * act  # d silu(a)/da = s·(1 + a·(1 − s))
    d1, d3 = _dot("ecd,ecf->edf", xb, da, dtype), _dot("ecd,ecf->edf", xb, db, dtype)
    dx = _dot("ecf,edf->ecd", da, w1, dtype) + _dot("ecf,edf->ecd", db, w3, dtype)
    return (dx, *(_reduced(g, w) for g, w in ((d1, w1), (d2, w2), (d3, w3))))


def _switch(index, branches):
    return jax.lax.switch(index, branches) if len(branches) > 1 else branches[0]()


def _forward(x, order, inverse, sizes, w1, w2, w3, k, caps, block, dtype, overflow, keep: bool):
    """y [M, D] per assignment, token-major, and when `keep` the up-projections a = x·W1, b = x·W3 [M, F] fp32.
    The base grid's branch reads every assignment from its slots (exact except for the overflow grid's rows);
    the overflow grid's branch then writes its rows in place."""
    slots, plan = Slots(order, inverse, sizes, k), Plan(sizes, caps, overflow)
    experts = jnp.arange(sizes.shape[0])

    def batched(cap):
        win = slots.window(experts, 0, cap)
        return tuple(win.read(v) for v in _window_slots(win, x, w1, w2, w3, dtype, keep))

    def looped():
        xs = x.at[order // k].get(mode="promise_in_bounds")
        ys, (_, _, h1, h3, *_) = block_loop._forward(xs, sizes, w1, w2, w3, block, dtype)
        back = lambda v: v.at[inverse].get(mode="promise_in_bounds")  # noqa: E731
        return (back(ys).astype(jnp.float32), back(h1), back(h3))[:3 if keep else 1]

    out = jax.lax.switch(plan.base, [functools.partial(batched, c) for c in caps] + [looped])
    if overflow is not None:
        heavy = [w[plan.heavy] for w in (w1, w2, w3)]

        def over(cap, out):
            win = slots.window(plan.heavy, plan.start, cap, plan.heavy_index)
            return tuple(win.write(t, v) for t, v in zip(out, _window_slots(win, x, *heavy, dtype, keep)))

        out = _switch(plan.over, [functools.partial(over, c, out) for c in overflow[1]])
    return (out[0].astype(dtype), *out[1:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8, 9, 10, 11))
def capacity_swiglu(x, order, inverse, sizes, w1, w2, w3, k: int, caps: tuple[int, ...], block: int, dtype,
                    overflow: tuple | None = None):
    """y [M, D] per assignment (token-major): assignment a = t·k + j of token t through its expert's SwiGLU.
    order/inverse [M]: the stable sort of the assignments by expert and its inverse, sizes [E] the group sizes
    (dispatch.sort_assignments); w1, w3 [E, D, F], w2 [E, F, D]; `block` is the loop branch's block;
    overflow: None (one grid) or (H, overflow ladder) (a base grid and an overflow grid, see Plan)."""
    return _forward(x, order, inverse, sizes, w1, w2, w3, k, caps, block, dtype, overflow, False)[0]


def _fwd(x, order, inverse, sizes, w1, w2, w3, k, caps, block, dtype, overflow):
    # Residuals: the inputs and the two up-projections per assignment (the backward multiplies 6 GEMMs, not 8).
    y, a, b = _forward(x, order, inverse, sizes, w1, w2, w3, k, caps, block, dtype, overflow, True)
    return y, (x, order, inverse, sizes, w1, w2, w3, a, b)


def _bwd(k, caps, block, dtype, overflow, res, dy):
    x, order, inverse, sizes, w1, w2, w3, a_rows, b_rows = res
    slots, plan = Slots(order, inverse, sizes, k), Plan(sizes, caps, overflow)
    n, experts = x.shape[0], jnp.arange(sizes.shape[0])

    def batched(cap):
        win = slots.window(experts, 0, cap)
        dx, *grads = _window_grads(win, x, w1, w2, w3, a_rows, b_rows, dy, dtype)
        return (win.read(dx), *grads)

    def looped():  # differentiated with respect to the gathered rows: dx per assignment, like the grids'
        xs = x.at[order // k].get(mode="promise_in_bounds")
        _, vjp = jax.vjp(lambda *a: block_loop.looped_swiglu(*a[:1], sizes, *a[1:], block, dtype), xs, w1, w2, w3)
        dxs, *grads = vjp(dy.astype(dtype).at[order].get(mode="promise_in_bounds"))
        # block_loop's backward already sums the weight gradients over the invariant axes
        return tuple(g.astype(jnp.float32) for g in (dxs.at[inverse].get(mode="promise_in_bounds"), *grads))

    dx, *grads = jax.lax.switch(plan.base, [functools.partial(batched, c) for c in caps] + [looped])
    if overflow is not None:
        heavy = [w[plan.heavy] for w in (w1, w2, w3)]

        def over(cap, dx, grads):
            win = slots.window(plan.heavy, plan.start, cap, plan.heavy_index)
            d, *g = _window_grads(win, x, *heavy, a_rows, b_rows, dy, dtype)
            return (win.write(dx, d), *(full.at[plan.heavy].add(part) for full, part in zip(grads, g)))

        dx, *grads = _switch(plan.over, [functools.partial(over, c, dx, grads) for c in overflow[1]])
    dx = dx.reshape(n, k, -1).sum(1)  # a token's k assignments, summed
    return (dx.astype(x.dtype), None, None, None, *(g.astype(w.dtype) for g, w in zip(grads, (w1, w2, w3))))


capacity_swiglu.defvjp(_fwd, _bwd)
