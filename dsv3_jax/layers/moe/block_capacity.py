"""The routed experts as batched matmuls over per-expert capacity slots: each expert's sorted rows are copied
into a slot of an [E, C, D] grid and multiplied by its own weights, read in place, [E, C, D] x [E, D, F]; the
outputs are combined into the tokens with the routing weights (`capacity_moe`).

The decoding form of the blocked backend, and its training form when the per-expert GEMMs are large. A decoding
step has a few rows per expert (k per token), so a loop of per-expert GEMMs pays its iterations' overhead and a
batched matmul over per-block gathered weights pays a copy of every weight it reads; here the only copies are
of rows. The capacity C is picked AT RUN TIME from a static ladder (`capacities`) with `lax.switch`: the
smallest rung that holds the fullest expert, so no row is ever dropped and the padding is at most a rung's step.
A group larger than every rung (a badly balanced batch, or more rows than tokens, which top-k routing never
produces) takes the last branch, the loop of block_loop.py: exact for any input. Slots past an expert's row
count hold other rows, computed and never read back. Training-sized batches run two grids (`Plan`): a base grid
and an overflow grid over the fullest half's excess, so one hot expert does not pad every expert to its load.
The rows are gathered straight from the tokens and the outputs summed straight into them (no sorted copy),
and the forward keeps the two up-projections for the backward. `capacity_forward` is the same forward over the
fused w13 = w1 | w3 of inference variables (layer_split.py): one matmul for both up-projections.

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
        slot, col = index[slots.group], slots.local - start
        self.flat = jnp.clip(slot * cap + col, 0, g * cap - 1)
        self.mine = jnp.where((slot >= 0) & (col >= 0) & (col < cap), slot * cap + col, g * cap)  # g·cap: none
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

    def slot_values(self, v):
        """v [M] per assignment -> [G, C], zero in the slots past an expert's rows."""
        return jnp.where(self.valid, v.at[self.s.order[self.rows()]].get(mode="promise_in_bounds"), 0)

    def token_sum(self, buffer):
        """buffer [G, C, X] -> [N, X]: for each token the sum over its k assignments this grid holds (k gathers
        that XLA fuses into the sum: no [M, X] array)."""
        flat, k = buffer.reshape(-1, buffer.shape[-1]), self.s.k
        return sum(flat.at[self.mine[j::k]].get(mode="fill", fill_value=0) for j in range(k))

    def token_add(self, target, buffer):
        """target [N, X] plus this grid's valid slots of buffer [G, C, X] added to their tokens (a scatter)."""
        n = target.shape[0]
        dest = jnp.where(self.valid, self.s.order[self.rows()] // self.s.k, n).reshape(-1)  # n: dropped
        return target.at[dest].add(buffer.reshape(-1, buffer.shape[-1]).astype(target.dtype), mode="drop")

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
    """Which grids run, as traced switch indices. One grid (overflow None): every expert's rows in one
    [E, C] grid, C the smallest rung of `caps` holding the fullest expert; index len(caps) is the loop.
    Two grids (overflow = (H, over_caps)): the base grid [E, C] holds every expert's first C rows, C the
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


def _window_slots(win, x, w1, w2, w3, dtype):
    """The window's SwiGLU on its slots: (y [G, C, D], a, b [G, C, F]) fp32. w3 None: w1 is the fused
    w13 = w1 | w3 [G, D, 2F] and one matmul gives both up-projections (capacity_forward)."""
    xb = win.tokens(x)
    if w3 is None:
        a, b = unfuse(_dot("ecd,edf->ecf", xb, w1, dtype), w2)  # the [G, C, 2F] product's halves
    else:
        a, b = _dot("ecd,edf->ecf", xb, w1, dtype), _dot("ecd,edf->ecf", xb, w3, dtype)
    return _dot("ecf,efd->ecd", jax.nn.silu(a) * b, w2, dtype), a, b


def _window_grads(win, x, weights, w1, w2, w3, a_rows, b_rows, dy, dtype):
    """The window's part of the backward: (dx [G, C, D] per slot, d(routing weight) [G, C], dW1, dW2, dW3 of
    its experts), fp32. dy [N, D] is the combined output's cotangent; slot (g, c) of assignment a of token t
    sees g = dy[t] (unweighted) and its weight w_a: y_t = Σ_a w_a·SwiGLU(x_t), so dW2 = (w·h)ᵀ g,
    d(h) = w·(g W2ᵀ) and d(w_a) = h·(g W2ᵀ), with h = silu(a)·b; no expert output is kept or recomputed."""
    xb, g = win.tokens(x), jnp.where(win.valid[..., None], win.tokens(dy), 0)
    wt = win.slot_values(weights.reshape(-1))[..., None]  # [G, C, 1], zero past an expert's rows
    a, b = win.assignments(a_rows), win.assignments(b_rows)
    s = jax.nn.sigmoid(a)
    act = a * s
    h = act * b
    d2 = _dot("ecf,ecd->efd", wt * h, g, dtype)
    dgu = _dot("ecd,efd->ecf", g, w2, dtype)
    dw = jnp.sum(h * dgu, axis=-1)
    dg = wt * dgu
    da, db = dg * b * (s + act * (1 - s)), dg * act  # d silu(a)/da = s·(1 + a·(1 − s))
    d1, d3 = _dot("ecd,ecf->edf", xb, da, dtype), _dot("ecd,ecf->edf", xb, db, dtype)
    dx = _dot("ecf,edf->ecd", da, w1, dtype) + _dot("ecf,edf->ecd", db, w3, dtype)
    return (dx, dw, *(_reduced(g, w) for g, w in ((d1, w1), (d2, w2), (d3, w3))))


def _switch(index, branches):
    return jax.lax.switch(index, branches) if len(branches) > 1 else branches[0]()


def _combine(ys, weights):
    n, k = weights.shape
    return jnp.einsum("nkd,nk->nd", ys.reshape(n, k, -1), weights.astype(ys.dtype))


def unfuse(w13, w2):
    """(w1, w3) [E, D, F]: the two halves of a fused w13 = w1 | w3 [E, D, 2F] (F = w2's hidden size)."""
    f = w2.shape[1]
    return w13[..., :f], w13[..., f:]


def _looped_moe(x, weights, order, inverse, sizes, w1, w2, w3, k, block, dtype, keep):
    """The loop branch: y [N, D] fp32 and, when `keep`, the up-projections a, b [M, F] per assignment (w3
    None: w1 is the fused w13, sliced here, so only a batch above every rung pays the slices' copies)."""
    if w3 is None:
        w1, w3 = unfuse(w1, w2)
    xs = x.at[order // k].get(mode="promise_in_bounds")
    back = lambda v: v.at[inverse].get(mode="promise_in_bounds")  # noqa: E731
    if not keep:  # the loop with its own backward, so that capacity_forward stays differentiable
        return (_combine(back(block_loop.looped_swiglu(xs, sizes, w1, w2, w3, block, dtype)).astype(jnp.float32),
                         weights),)
    ys, (_, _, h1, h3, *_) = block_loop._forward(xs, sizes, w1, w2, w3, block, dtype)
    return _combine(back(ys).astype(jnp.float32), weights), back(h1), back(h3)


def _forward(x, weights, order, inverse, sizes, w1, w2, w3, k, caps, block, dtype, overflow, keep: bool):
    """(y [N, D] = Σ_j weights[t, j]·SwiGLU of token t's j-th expert, and when `keep` the up-projections
    a = x·W1, b = x·W3 [M, F] fp32 per assignment, token-major). The base grid's branch combines the
    assignments it holds and reads a, b for every assignment (exact except for the overflow grid's rows); the
    overflow grid's branch adds its rows' outputs to their tokens and writes its a, b in place."""
    slots, plan = Slots(order, inverse, sizes, k), Plan(sizes, caps, overflow)
    experts = jnp.arange(sizes.shape[0])

    def batched(cap):
        win = slots.window(experts, 0, cap)
        y, a, b = _window_slots(win, x, w1, w2, w3, dtype)
        wt = win.slot_values(weights.reshape(-1).astype(jnp.float32))[..., None]
        return (win.token_sum(wt * y), win.read(a), win.read(b)) if keep else (win.token_sum(wt * y),)

    looped = functools.partial(_looped_moe, x, weights, order, inverse, sizes, w1, w2, w3, k, block, dtype, keep)
    out = jax.lax.switch(plan.base, [functools.partial(batched, c) for c in caps] + [looped])
    if overflow is not None:
        heavy = [None if w is None else w[plan.heavy] for w in (w1, w2, w3)]

        def over(cap, y_tok, *rows):
            win = slots.window(plan.heavy, plan.start, cap, plan.heavy_index)
            y, a, b = _window_slots(win, x, *heavy, dtype)
            wt = win.slot_values(weights.reshape(-1).astype(jnp.float32))[..., None]
            return (win.token_add(y_tok, wt * y), *(win.write(t, v) for t, v in zip(rows, (a, b))))

        out = _switch(plan.over, [functools.partial(over, c, *out) for c in overflow[1]])
    return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(8, 9, 10, 11, 12))
def capacity_moe(x, weights, order, inverse, sizes, w1, w2, w3, k: int, caps: tuple[int, ...], block: int, dtype,
                 overflow: tuple | None = None):
    """y [N, D] = Σ_j weights[t, j] · SwiGLU_{e(t, j)}(x_t): the routed experts of x [N, D] combined with the
    routing weights [N, k]. order/inverse [M]: the stable sort of the N·k assignments (token-major) by expert
    and its inverse, sizes [E] the group sizes (dispatch.sort_assignments); w1, w3 [E, D, F], w2 [E, F, D];
    `block` is the loop branch's block; overflow: None (one grid) or (H, overflow ladder) (a base grid and an
    overflow grid, see Plan)."""
    return _forward(x, weights, order, inverse, sizes, w1, w2, w3, k, caps, block, dtype, overflow,
                    False)[0].astype(dtype)


def capacity_forward(x, weights, order, inverse, sizes, w13, w2, k: int, caps: tuple[int, ...], block: int,
                     dtype, overflow: tuple | None = None):
    """capacity_moe's forward over w13 = w1 | w3 [E, D, 2F] (the inference variables of
    layer_split.py): the same grids, rungs and loop branch, with one matmul for the gate and up
    projections. Meant for inference; it has no custom backward, plain autodiff differentiates it."""
    return _forward(x, weights, order, inverse, sizes, w13, w2, None, k, caps, block, dtype, overflow,
                    False)[0].astype(dtype)


def _fwd(x, weights, order, inverse, sizes, w1, w2, w3, k, caps, block, dtype, overflow):
    # Residuals: the inputs and the two up-projections per assignment (the backward multiplies 6 GEMMs, not 8).
    y, a, b = _forward(x, weights, order, inverse, sizes, w1, w2, w3, k, caps, block, dtype, overflow, True)
    return y.astype(dtype), (x, weights, order, inverse, sizes, w1, w2, w3, a, b)


def _bwd(k, caps, block, dtype, overflow, res, dy):
    x, weights, order, inverse, sizes, w1, w2, w3, a_rows, b_rows = res
    slots, plan = Slots(order, inverse, sizes, k), Plan(sizes, caps, overflow)
    experts = jnp.arange(sizes.shape[0])
    dy = dy.astype(jnp.float32)

    def batched(cap):
        win = slots.window(experts, 0, cap)
        dx, dw, *grads = _window_grads(win, x, weights, w1, w2, w3, a_rows, b_rows, dy, dtype)
        return (win.token_sum(dx), win.read(dw[..., None])[:, 0], *grads)

    def looped():
        def f(x, weights, w1, w2, w3):
            xs = x.at[order // k].get(mode="promise_in_bounds")
            ys = block_loop.looped_swiglu(xs, sizes, w1, w2, w3, block, dtype)
            return _combine(ys.at[inverse].get(mode="promise_in_bounds").astype(jnp.float32), weights)
        _, vjp = jax.vjp(f, x, weights.astype(jnp.float32), w1, w2, w3)
        dx, dw, *grads = vjp(dy)  # block_loop's backward already sums the weight gradients over invariant axes
        return (dx.astype(jnp.float32), dw.reshape(-1), *(g.astype(jnp.float32) for g in grads))

    dx, dw, *grads = jax.lax.switch(plan.base, [functools.partial(batched, c) for c in caps] + [looped])
    if overflow is not None:
        heavy = [w[plan.heavy] for w in (w1, w2, w3)]

        def over(cap, dx, dw, grads):
            win = slots.window(plan.heavy, plan.start, cap, plan.heavy_index)
            d, dwo, *g = _window_grads(win, x, weights, *heavy, a_rows, b_rows, dy, dtype)
            return (win.token_add(dx, d), win.write(dw[:, None], dwo[..., None])[:, 0],
                    *(full.at[plan.heavy].add(part) for full, part in zip(grads, g)))

        dx, dw, *grads = _switch(plan.over, [functools.partial(over, c, dx, dw, grads) for c in overflow[1]])
    return (dx.astype(x.dtype), dw.reshape(weights.shape).astype(weights.dtype), None, None, None,
            *(g.astype(w.dtype) for g, w in zip(grads, (w1, w2, w3))))


capacity_moe.defvjp(_fwd, _bwd)
