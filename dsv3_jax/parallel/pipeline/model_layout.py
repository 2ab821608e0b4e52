"""Cut DeepSeekV3's parameter tree into pipeline stages and glue the results back (V3 report §3.2.1).

Stage s holds the model's global layers [s·L, (s+1)·L) with L = n_layers / num_stages: the first
n_dense_layers are dense (SwiGLU) blocks, the rest MoE blocks, so a stage holds d_s dense blocks followed by
m_s = L − d_s MoE blocks. Stages must share one parameter structure to be stacked on a leading stage axis,
so every stage gets Ld = max d_s dense slots and Lm = max m_s MoE slots (slots past d_s / m_s are padding,
copies of layer 0 that are skipped at run time and get no gradient). With V3's 3 dense layers of 61 this pads
at most the stage holding the dense layers; when every stage has the same mix there is no padding at all.

Trees (leaves of stage trees have a leading row axis: one row per stage, or per (rank, slot) of a schedule):
  stage params   {"dense": Block(moe=False) params [rows, Ld, ...], "moe": Block(moe=True) params [rows, Lm, ...]}
  stage consts   {"n_dense": [rows], "n_moe": [rows], "router": {"moe": {"bias": [rows, Lm, E]}}}
  shared         {"embed", "norm", "head", "mtp_0", ...}   (first stage: embed; last stage: the rest)
  shared consts  the router collection of the MTP modules {"mtp_0": {"block": {"moe": {"bias": [E]}}}, ...}
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from dsv3_jax import param_tree as pt

STACKS = {"dense": pt.DENSE, "moe": pt.MOE}  # stage slot kind -> the model's block stack


@dataclasses.dataclass(frozen=True)
class StageLayout:
    num_stages: int
    per_stage: int
    n_dense: tuple[int, ...]      # active dense slots per stage
    n_moe: tuple[int, ...]        # active MoE slots per stage

    @property
    def slots(self) -> dict[str, int]:
        """Slots per stage of each kind (kinds with no layer anywhere are absent)."""
        out = {"dense": max(self.n_dense), "moe": max(self.n_moe)}
        return {k: v for k, v in out.items() if v}

    @property
    def uniform(self) -> bool:
        """True when every stage has the same mix of dense and MoE blocks (no padding, no skipping)."""
        return len(set(self.n_dense)) == 1

    def layer_index(self, kind: str) -> np.ndarray:
        """int32 [num_stages, slots]: the model's layer index (within its stack) held by each slot."""
        active = self.n_dense if kind == "dense" else self.n_moe
        out = np.zeros((self.num_stages, self.slots[kind]), np.int32)
        for s in range(self.num_stages):
            first = s * self.per_stage + (self.n_dense[s] if kind == "moe" else 0)
            offset = sum(self.n_dense) if kind == "moe" else 0
            out[s, :active[s]] = np.arange(active[s]) + first - offset
        return out

    def home_slot(self, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """(stage, slot) of every layer of the model's `kind` stack, in stack order."""
        active = self.n_dense if kind == "dense" else self.n_moe
        stage = np.concatenate([np.full(n, s) for s, n in enumerate(active)]).astype(np.int32)
        slot = np.concatenate([np.arange(n) for n in active]).astype(np.int32)
        return stage, slot


def stage_layout(cfg, num_stages: int) -> StageLayout:
    """Equal groups of consecutive blocks; a ValueError names the numbers when they do not divide."""
    if not isinstance(num_stages, int) or num_stages < 1:
        raise ValueError(f"num_stages must be an int >= 1; got {num_stages!r}")
    if cfg.n_layers % num_stages:
        raise ValueError(f"ModelConfig.n_layers={cfg.n_layers} is not divisible by the {num_stages} pipeline "
                         f"stages: every stage must hold the same number of blocks")
    per = cfg.n_layers // num_stages
    dense = tuple(int(np.clip(cfg.n_dense_layers - s * per, 0, per)) for s in range(num_stages))
    return StageLayout(num_stages, per, dense, tuple(per - d for d in dense))


def _rows_of(tree, index):
    """Stack leaves [n_layers, ...] -> [rows, slots, ...] by a static int index [rows, slots]."""
    return jax.tree.map(lambda a: jnp.take(a, jnp.asarray(index.reshape(-1)), axis=0).reshape(
        index.shape + a.shape[1:]), tree)


def split_stages(layout: StageLayout, params, router, rows) -> tuple[dict, dict]:
    """(stage params, stage consts) with one row per entry of `rows` (the stage each row holds)."""
    rows = np.asarray(rows, np.int32)
    sp, consts = {}, {"n_dense": jnp.asarray(np.asarray(layout.n_dense, np.int32)[rows]),
                      "n_moe": jnp.asarray(np.asarray(layout.n_moe, np.int32)[rows])}
    for kind in layout.slots:
        index = layout.layer_index(kind)[rows]
        sp[kind] = _rows_of(params[STACKS[kind]], index)
        if kind == "moe" and STACKS[kind] in router:
            consts["router"] = _rows_of(router[STACKS[kind]], index)
    return sp, consts


def split_shared(params, router) -> tuple[dict, dict]:
    """(shared params, shared consts): everything outside the block stacks, and the MTP routers."""
    shared = {k: v for k, v in params.items() if k not in STACKS.values()}
    return shared, {k: v for k, v in router.items() if pt.is_mtp(k)}


def merge_grads(layout: StageLayout, stage_grads, shared_grads, home) -> dict:
    """Model-layout gradients from stage gradients (row home[s] holds stage s) and shared gradients."""
    grads = dict(shared_grads)
    for kind in layout.slots:
        stage, slot = layout.home_slot(kind)
        if len(stage):
            rows = jnp.asarray(np.asarray(home)[stage])
            grads[STACKS[kind]] = jax.tree.map(lambda g: g[rows, jnp.asarray(slot)], stage_grads[kind])
    return grads


def merge_counts(layout: StageLayout, stage_counts, last_counts, home) -> dict:
    """Expert counts in the router collection's tree (model.py's aux['expert_counts'])."""
    counts = dict(last_counts)
    if "moe" in layout.slots and sum(layout.n_moe):
        stage, slot = layout.home_slot("moe")
        rows = jnp.asarray(np.asarray(home)[stage])
        counts[STACKS["moe"]] = pt.nest((pt.MOE_FFN, pt.BIAS), stage_counts[rows, jnp.asarray(slot)])
    return counts
