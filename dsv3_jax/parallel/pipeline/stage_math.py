"""Per-rank stage arithmetic of the pipeline executor: the F, B, W and F&B branches of its `lax.switch`.

Functions (the executor's full contract; executor.py adapts the plain one):
  stage_fn(params, consts, x) -> (y, aux_loss, stats)     consts: the stage's non-trainable inputs
  loss_fn(shared, shared_consts, y, targets) -> (loss, metrics, stats)
  first_fn(shared, inputs) -> x                          (None: x = inputs)
aux_loss (e.g. the MoE balance loss, V3 report eq. 17-20) is differentiated like the loss; stats (e.g. the
expert counts for the aux-loss-free bias update, eq. 16) are summed over micro-batches, not differentiated.

Each branch maps (state, table row) -> (state, forward message, backward message, gradient delta). The two
gradient accumulators (gacc, sacc) are not passed through the branches: each branch returns its contribution
(`Delta`: one slot's parameter gradient and a shared-parameter gradient, zeros where it has none) and the tick
adds it after the switch (program.py), so XLA never copies an accumulator into a branch (a copy of every
stage weight's gradient per branch at V3 size, docs/paper.md §8). State (per rank):
  buf    [slots+1, *x]  stage inputs X(m, s) and output gradients GY(m, s) (plan.py assigns slots)
  res    list of [res_slots+1, *leaf]: vjp residuals per stored leaf ("store" mode only)
  gacc   stage-parameter gradients per parameter slot, leaves [num_slots, ...]
  stats  stage stats per parameter slot, leaves [num_slots, ...]
  sacc   gradients of the shared params (first_fn, loss_fn)
  loss   total loss / chunks;  aux_loss  stage aux losses / chunks;  metrics, last  loss_fn's (/ chunks, summed)
  busy   [ticks with an op, idle ticks]
Splitting the backward (zero bubble, Qi et al. 2023; DualPipe's WeightGradStore): a split B computes only
dL/dx from `jax.vjp` (XLA drops the unused weight part), W computes only dL/dparams from the same stored
input and output gradient. The last stage's F also runs loss_fn and its gradient, so every B is a plain vjp.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dsv3_jax.parallel.pipeline.plan import COL
from dsv3_jax.parallel.pipeline.residuals import Residuals
from dsv3_jax.sharding import vary


def _read(buf, i):
    return jax.lax.dynamic_index_in_dim(buf, i, 0, keepdims=False)


def _write(buf, i, val):
    return jax.lax.dynamic_update_index_in_dim(buf, val, i, 0)


def _add(a, b):
    return jax.tree.map(jnp.add, a, b)


def _add_at(acc, k, val):
    return jax.tree.map(lambda g, d: g.at[k].add(d.astype(g.dtype)), acc, val)


def _zeros(aval_tree):
    return jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), aval_tree)


ACCUMULATORS = ("gacc", "sacc")  # carried outside the branches (module docstring)


def add_delta(state, delta):
    """The tick's accumulation: gacc[k] += delta['dp'], sacc += delta['ds']."""
    return dict(state, gacc=_add_at(state["gacc"], delta["k"], delta["dp"]), sacc=_add(state["sacc"], delta["ds"]))


class StageMath:
    """Branch functions for one rank; built inside shard_map from the rank's local (varying) arrays."""

    def __init__(self, fns, arrays, chunks: int, store: bool, axes: tuple[str, ...]):
        self.stage_fn, self.loss_fn, self.first_fn = fns
        (self.slot_params, self.shared, self.inputs, self.targets, self.stage_consts,
         self.shared_consts) = arrays
        self.scale, self.axes = 1.0 / chunks, axes
        x0 = self.first_input(0)
        self.x_aval = jax.ShapeDtypeStruct(x0.shape, x0.dtype)
        self.stats_aval = jax.eval_shape(self.stage_fn, self.params(0), self.consts(0), x0)[2]
        t0 = jax.tree.map(lambda a: _read(a, 0), self.targets)
        self.last_aval = jax.eval_shape(self.loss_fn, self.shared, self.shared_consts, x0, t0)[1:]
        self.res = Residuals(self._fwd_fn(0), self.params(0), x0) if store else None

    # ----- helpers
    def params(self, k):
        return jax.tree.map(lambda a: _read(a, k), self.slot_params)

    def consts(self, k):
        return jax.tree.map(lambda a: _read(a, k), self.stage_consts)

    def first_input(self, mb):
        xs = jax.tree.map(lambda a: _read(a, mb), self.inputs)
        return xs if self.first_fn is None else self.first_fn(self.shared, xs)

    def _fwd_fn(self, k):
        """(p, x) -> ((y, aux_loss), stats) for slot k: the function every vjp of this rank differentiates."""
        consts = self.consts(k)

        def f(p, x):
            y, aux_loss, stats = self.stage_fn(p, consts, x)    # constants made varying like the rest
            return (y, vary(jnp.asarray(aux_loss, jnp.float32), self.axes)), vary(stats, self.axes)
        return f

    def no_delta(self, ds=None, k=None, dp=None):
        """A branch's gradient contribution: slot k's dp and shared ds (zeros where not given)."""
        zero = lambda t: vary(jax.tree.map(jnp.zeros_like, t), self.axes)
        return {"k": vary(jnp.zeros((), jnp.int32), self.axes[:1]) if k is None else k,   # table rows vary by rank
                "dp": zero(self.params(0)) if dp is None else dp,
                "ds": zero(self.shared) if ds is None else ds}

    def _cotangent(self, dy):
        return dy, vary(jnp.asarray(self.scale, jnp.float32), self.axes)

    def init_state(self, num_buffers, num_residuals, num_slots):
        """Zero state, cast to vary over every mesh axis (busy: over the pipeline axis only)."""
        x, res_avals = self.x_aval, self.res.avals if self.res else []
        metrics, last = self.last_aval
        state = vary(dict(buf=jnp.zeros((num_buffers + 1,) + x.shape, x.dtype),
                          res=[jnp.zeros((num_residuals + 1,) + a.shape, a.dtype) for a in res_avals],
                          loss=jnp.zeros((), jnp.float32), aux_loss=jnp.zeros((), jnp.float32),
                          metrics=_zeros(metrics), last=_zeros(last),
                          stats=jax.tree.map(lambda a: jnp.zeros((num_slots,) + a.shape, a.dtype),
                                             self.stats_aval)), self.axes)
        state["busy"] = vary(jnp.zeros((2,), jnp.int32), self.axes[:1])
        state["sacc"] = jax.tree.map(jnp.zeros_like, self.shared)      # already varying: from varying inputs
        # float32 gradients whatever dtype the working weights have (model_stages.working_weights)
        f32 = lambda a: jnp.zeros(a.shape, jnp.float32 if jnp.issubdtype(a.dtype, jnp.floating) else a.dtype)
        state["gacc"] = vary(jax.tree.map(f32, self.slot_params), self.axes)
        return state

    def _loss_grads(self, state, y, mb):
        """(last, none) branches: loss_fn's scaled loss, metrics, stats and gradients on the last stage."""
        def last():
            t = jax.tree.map(lambda a: _read(a, mb), self.targets)
            f = lambda sh, y: (lambda l, m, s: (l, (m, s)))(*self.loss_fn(sh, self.shared_consts, y, t))
            (loss, (metrics, stats)), (d_shared, dy) = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(
                self.shared, y)
            scale = lambda tree: jax.tree.map(lambda g: g * jnp.asarray(self.scale, g.dtype), tree)
            out = (loss.astype(jnp.float32) * self.scale, scale(metrics), stats, scale(d_shared), scale(dy))
            return vary(out, self.axes)
        like = (state["loss"], state["metrics"], state["last"], self.shared, y)
        none = lambda: jax.tree.map(jnp.zeros_like, like)
        return last, none

    def _pullback(self, state, row, k):
        p = self.params(k)
        if self.res is not None:
            stored = [_read(r, row[COL["b_res"]]) for r in state["res"]]
            return self.res.pullback(p, stored)
        return jax.vjp(self._fwd_fn(k), p, _read(state["buf"], row[COL["b_x"]]), has_aux=True)[1]

    def _first_grads(self, row, dx):
        """Shared-parameter gradient of first_fn on stage 0 (taken with the input gradient, in B)."""
        zero = lambda: vary(jax.tree.map(jnp.zeros_like, self.shared), self.axes)
        if self.first_fn is None:
            return zero()
        mb = row[COL["b_mb"]]

        def first():
            xs = jax.tree.map(lambda a: _read(a, mb), self.inputs)
            return jax.vjp(lambda sh: self.first_fn(sh, xs), self.shared)[1](dx)[0]
        return jax.lax.cond(row[COL["b_first"]] == 1, first, zero)

    # ----- branches
    def idle(self, state, row):
        zero = jnp.zeros_like(state["buf"][0])
        return state, zero, zero, self.no_delta()

    def forward(self, state, row):
        mb, k = row[COL["f_mb"]], row[COL["f_slot"]]
        x = jax.lax.cond(row[COL["f_first"]] == 1, lambda: self.first_input(mb),
                         lambda: _read(state["buf"], row[COL["f_x"]]))
        buf = _write(state["buf"], row[COL["f_x"]], x)
        res = state["res"]
        if self.res is not None:
            (y, aux_loss), stats, stored = self.res.forward(self._fwd_fn(k), self.params(k), x)
            res = [_write(r, row[COL["f_res"]], v) for r, v in zip(res, stored)]
        else:
            (y, aux_loss), stats = self._fwd_fn(k)(self.params(k), x)
        last, none = self._loss_grads(state, y, mb)
        loss, metrics, last_stats, d_shared, dy = jax.lax.cond(row[COL["f_last"]] == 1, last, none)
        buf = _write(buf, row[COL["f_gy"]], dy.astype(buf.dtype))
        aux_loss = aux_loss * self.scale
        state = dict(state, buf=buf, res=res, loss=state["loss"] + loss + aux_loss,
                     aux_loss=state["aux_loss"] + aux_loss, metrics=_add(state["metrics"], metrics),
                     last=_add(state["last"], last_stats), stats=_add_at(state["stats"], k, stats))
        return state, y.astype(buf.dtype), jnp.zeros_like(buf[0]), self.no_delta(ds=d_shared)

    def _backward(self, state, row, full: bool):
        k = row[COL["b_slot"]]
        dy = _read(state["buf"], row[COL["b_gy"]])
        dp, dx = self._pullback(state, row, k)(self._cotangent(dy))
        delta = self.no_delta(ds=self._first_grads(row, dx), k=k if full else None, dp=dp if full else None)
        return state, jnp.zeros_like(dy), dx.astype(dy.dtype), delta

    def backward_full(self, state, row):
        return self._backward(state, row, full=True)

    def backward_input(self, state, row):
        return self._backward(state, row, full=False)

    def weight(self, state, row):
        k = row[COL["b_slot"]]
        dy = _read(state["buf"], row[COL["b_gy"]])
        dp, _ = self._pullback(state, row, k)(self._cotangent(dy))
        return state, jnp.zeros_like(dy), jnp.zeros_like(dy), self.no_delta(k=k, dp=dp)

    def forward_backward(self, state, row):
        state, y, _, fwd = self.forward(state, row)
        state, _, dx, bwd = self._backward(state, row, full=True)
        return state, y, dx, dict(bwd, ds=_add(fwd["ds"], bwd["ds"]))
