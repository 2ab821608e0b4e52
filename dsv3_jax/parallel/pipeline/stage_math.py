"""Per-rank stage arithmetic of the pipeline executor: the F, B, W and F&B branches of its `lax.switch`.

Each branch maps (state, table row) -> (state, forward message, backward message). State (per rank):
  buf    [slots+1, *x]  stage inputs X(m, s) and output gradients GY(m, s) (plan.py assigns slots)
  res    list of [res_slots+1, *leaf]: vjp residuals per stored leaf ("store" mode only)
  gacc   stage-parameter gradients per parameter slot, leaves [num_slots, ...]
  sacc   gradients of the shared params (first_fn, loss_fn)
  loss   summed loss / chunks;   busy   [ticks with an op, idle ticks]
Splitting the backward (zero bubble, Qi et al. 2023; DualPipe's WeightGradStore): a split B computes only
dL/dx from `jax.vjp` (XLA drops the unused weight part), W computes only dL/dparams from the same stored
input and output gradient. The last stage's F also runs loss_fn and its gradient, so every B is a plain vjp.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dsv3_jax.parallel.pipeline.plan import COL


def _read(buf, i):
    return jax.lax.dynamic_index_in_dim(buf, i, 0, keepdims=False)


def _write(buf, i, val):
    return jax.lax.dynamic_update_index_in_dim(buf, val, i, 0)


def _add(a, b):
    return jax.tree.map(jnp.add, a, b)


class Residuals:
    """Store/replay `jax.vjp` residuals of stage_fn. Residual leaves that ARE stage parameters (same traced
    value) are not stored: replay takes them from the parameters again, so memory holds activations only.
    Relies on the vjp function being a pytree whose leaves are its residuals (true of `jax.vjp`). Built
    inside shard_map from example values (traced, then dropped as dead code) so that the recorded structure
    carries the device-varying types of the real calls."""

    def __init__(self, stage_fn, p_example, x_example):
        self.stage_fn = stage_fn
        _, leaves, self.treedef, self.keep = self._split(p_example, x_example)
        self.avals = [jax.ShapeDtypeStruct(leaf.shape, leaf.dtype) for leaf, j in zip(leaves, self.keep) if j < 0]

    def _split(self, p, x):
        y, vjp_fn = jax.vjp(self.stage_fn, p, x)
        leaves, treedef = jax.tree.flatten(vjp_fn)
        p_leaves = jax.tree.leaves(p)
        keep = tuple(next((j for j, q in enumerate(p_leaves) if q is leaf), -1) for leaf in leaves)
        return y, leaves, treedef, keep

    def forward(self, p, x):
        """y and the residual leaves to store."""
        y, leaves, _, keep = self._split(p, x)
        if keep != self.keep:
            raise RuntimeError("stage_fn's vjp residual structure changed between traces")
        return y, [leaf for leaf, j in zip(leaves, keep) if j < 0]

    def pullback(self, p, stored):
        """The vjp function rebuilt from stored leaves and the current parameters."""
        p_leaves, it = jax.tree.leaves(p), iter(stored)
        leaves = [p_leaves[j] if j >= 0 else next(it) for j in self.keep]
        return jax.tree.unflatten(self.treedef, leaves)


class StageMath:
    """Branch functions for one rank; built inside shard_map from the rank's local arrays."""

    def __init__(self, fns, slot_params, shared, inputs, targets, chunks, x_aval, store: bool):
        self.stage_fn, self.loss_fn, self.first_fn = fns
        self.slot_params, self.shared, self.inputs, self.targets = slot_params, shared, inputs, targets
        self.scale, self.x_aval = 1.0 / chunks, x_aval
        self.res = Residuals(self.stage_fn, self.params(0), self.first_input(0)) if store else None

    # ----- helpers
    def params(self, k):
        return jax.tree.map(lambda a: _read(a, k), self.slot_params)

    def first_input(self, mb):
        xs = jax.tree.map(lambda a: _read(a, mb), self.inputs)
        return xs if self.first_fn is None else self.first_fn(self.shared, xs)

    def init_state(self, num_buffers, num_residuals, vary):
        """Zero state; fresh constants are made device-varying (`vary`) to match the branch outputs."""
        x, res_avals = self.x_aval, self.res.avals if self.res else []
        state = vary(dict(buf=jnp.zeros((num_buffers + 1,) + x.shape, x.dtype),
                          res=[jnp.zeros((num_residuals + 1,) + a.shape, a.dtype) for a in res_avals],
                          loss=jnp.zeros((), jnp.float32), busy=jnp.zeros((2,), jnp.int32)))
        state["sacc"] = jax.tree.map(jnp.zeros_like, self.shared)      # already varying: from varying inputs
        state["gacc"] = jax.tree.map(jnp.zeros_like, self.slot_params)
        return state

    def _loss_grads(self, y, mb, like_loss, like_sacc):
        def last():
            t = jax.tree.map(lambda a: _read(a, mb), self.targets)
            loss, (d_shared, dy) = jax.value_and_grad(self.loss_fn, argnums=(0, 1))(self.shared, y, t)
            scale = lambda g: g * jnp.asarray(self.scale, g.dtype)
            return loss.astype(like_loss.dtype) * self.scale, jax.tree.map(scale, d_shared), scale(dy)
        none = lambda: (jnp.zeros_like(like_loss), jax.tree.map(jnp.zeros_like, like_sacc), jnp.zeros_like(y))
        return last, none

    def _pullback(self, state, row, k):
        p = self.params(k)
        if self.res is not None:
            stored = [_read(r, row[COL["b_res"]]) for r in state["res"]]
            return self.res.pullback(p, stored)
        return jax.vjp(self.stage_fn, p, _read(state["buf"], row[COL["b_x"]]))[1]

    def _first_grads(self, state, row, dx):
        """Shared-parameter gradient of first_fn on stage 0 (taken with the input gradient, in B)."""
        if self.first_fn is None:
            return state["sacc"]
        mb = row[COL["b_mb"]]

        def first():
            xs = jax.tree.map(lambda a: _read(a, mb), self.inputs)
            return _add(state["sacc"], jax.vjp(lambda sh: self.first_fn(sh, xs), self.shared)[1](dx)[0])
        return jax.lax.cond(row[COL["b_first"]] == 1, first, lambda: state["sacc"])

    # ----- branches
    def idle(self, state, row):
        zero = jnp.zeros_like(state["buf"][0])
        return state, zero, zero

    def forward(self, state, row):
        mb, k = row[COL["f_mb"]], row[COL["f_slot"]]
        x = jax.lax.cond(row[COL["f_first"]] == 1, lambda: self.first_input(mb),
                         lambda: _read(state["buf"], row[COL["f_x"]]))
        buf = _write(state["buf"], row[COL["f_x"]], x)
        res = state["res"]
        if self.res is not None:
            y, stored = self.res.forward(self.params(k), x)
            res = [_write(r, row[COL["f_res"]], v) for r, v in zip(res, stored)]
        else:
            y = self.stage_fn(self.params(k), x)
        last, none = self._loss_grads(y, mb, state["loss"], state["sacc"])
        loss, d_shared, dy = jax.lax.cond(row[COL["f_last"]] == 1, last, none)
        buf = _write(buf, row[COL["f_gy"]], dy.astype(buf.dtype))
        state = dict(state, buf=buf, res=res, loss=state["loss"] + loss, sacc=_add(state["sacc"], d_shared))
        return state, y.astype(buf.dtype), jnp.zeros_like(buf[0])

    def _backward(self, state, row, full: bool):
        k = row[COL["b_slot"]]
        dy = _read(state["buf"], row[COL["b_gy"]])
        dp, dx = self._pullback(state, row, k)(dy)
        if full:
            state = dict(state, gacc=jax.tree.map(lambda g, d: g.at[k].add(d), state["gacc"], dp))
        state = dict(state, sacc=self._first_grads(state, row, dx))
        return state, jnp.zeros_like(dy), dx.astype(dy.dtype)

    def backward_full(self, state, row):
        return self._backward(state, row, full=True)

    def backward_input(self, state, row):
        return self._backward(state, row, full=False)

    def weight(self, state, row):
        k = row[COL["b_slot"]]
        dy = _read(state["buf"], row[COL["b_gy"]])
        dp, _ = self._pullback(state, row, k)(dy)
        gacc = jax.tree.map(lambda g, d: g.at[k].add(d), state["gacc"], dp)
        return dict(state, gacc=gacc), jnp.zeros_like(dy), jnp.zeros_like(dy)

    def forward_backward(self, state, row):
        state, y, _ = self.forward(state, row)
        state, _, dx = self._backward(state, row, full=True)
        return state, y, dx
