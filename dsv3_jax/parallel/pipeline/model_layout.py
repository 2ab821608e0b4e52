"""Cut DeepSeekV3's parameter tree into pipeline stages and glue the results back (V3 report §3.2.1).

Two layouts (`stage_layout(cfg, num_stages, kind)`):

"blocks": stage s holds the model's global layers [s·L, (s+1)·L) with L = n_layers / num_stages: the first
n_dense_layers are dense (SwiGLU) blocks, the rest MoE blocks, so a stage holds d_s dense blocks followed by
m_s = L − d_s MoE blocks. Stages must share one parameter structure to be stacked on a leading stage axis,
so every stage gets Ld = max d_s dense slots and Lm = max m_s MoE slots (slots past d_s / m_s are padding,
copies of layer 0 that are skipped at run time and get no gradient). With V3's 3 dense layers of 61 this pads
at most the stage holding the dense layers; when every stage has the same mix there is no padding at all.

"moe": for layer counts that do not split evenly (V3: 61 layers + MTP on 16 stages, docs/paper.md §4). The
dense blocks run in the first stage's prologue, with the embedding (`prologue`: they are shared parameters,
not stage slots, so no stage pads dense slots it never uses), and the MoE blocks are cut into contiguous groups
of ceil(n_moe / num_stages): V3 gets 4 MoE blocks on stages 0-13, 2 on stage 14 and none on stage 15, whose
work is the last stage's head and MTP module (padding slots skipped, as above).

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
from dsv3_jax.parallel.pipeline import relayout

STACKS = {"dense": pt.DENSE, "moe": pt.MOE}  # stage slot kind -> the model's block stack


LAYOUTS = ("blocks", "moe")


@dataclasses.dataclass(frozen=True)
class StageLayout:
    num_stages: int
    per_stage: int
    n_dense: tuple[int, ...]      # active dense slots per stage
    n_moe: tuple[int, ...]        # active MoE slots per stage
    prologue: tuple[str, ...] = ()  # model stacks the first stage runs before its slots ("moe" layout: dense)

    @property
    def slots(self) -> dict[str, int]:
        """Slots per stage of each kind (kinds with no layer anywhere are absent)."""
        out = {"dense": max(self.n_dense), "moe": max(self.n_moe)}
        return {k: v for k, v in out.items() if v}

    @property
    def uniform(self) -> bool:
        """True when every stage has the same mix of dense and MoE blocks (no padding, no skipping)."""
        return len(set(self.n_dense)) == 1 and len(set(self.n_moe)) == 1

    def layer_index(self, kind: str) -> np.ndarray:
        """int32 [num_stages, slots]: the model's layer index (within its stack) held by each slot."""
        active = self.n_dense if kind == "dense" else self.n_moe
        out = np.zeros((self.num_stages, self.slots[kind]), np.int32)
        for s in range(self.num_stages):
            out[s, :active[s]] = np.arange(active[s]) + sum(active[:s])  # stack index of its first slot
        return out

    def home_slot(self, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """(stage, slot) of every layer of the model's `kind` stack, in stack order."""
        active = self.n_dense if kind == "dense" else self.n_moe
        stage = np.concatenate([np.full(n, s) for s, n in enumerate(active)]).astype(np.int32)
        slot = np.concatenate([np.arange(n) for n in active]).astype(np.int32)
        return stage, slot


def stage_layout(cfg, num_stages: int, kind: str = "blocks") -> StageLayout:
    """The stages of `kind` (module docstring); "blocks": equal groups of consecutive blocks, a ValueError
    names the numbers when they do not divide."""
    if not isinstance(num_stages, int) or num_stages < 1:
        raise ValueError(f"num_stages must be an int >= 1; got {num_stages!r}")
    if kind not in LAYOUTS:
        raise ValueError(f"train.pipeline_layout must be one of {LAYOUTS}; got {kind!r}")
    if kind == "moe":
        return _moe_layout(cfg, num_stages)
    if cfg.n_layers % num_stages:
        raise ValueError(f"ModelConfig.n_layers={cfg.n_layers} is not divisible by the {num_stages} pipeline "
                         f"stages: every stage must hold the same number of blocks")
    per = cfg.n_layers // num_stages
    dense = tuple(int(np.clip(cfg.n_dense_layers - s * per, 0, per)) for s in range(num_stages))
    return StageLayout(num_stages, per, dense, tuple(per - d for d in dense))


def _moe_layout(cfg, num_stages: int) -> StageLayout:
    if not cfg.n_moe_layers:
        raise ValueError(f"the 'moe' pipeline layout needs MoE layers; ModelConfig.n_layers={cfg.n_layers} are "
                         f"all dense (use the 'blocks' layout)")
    per = -(-cfg.n_moe_layers // num_stages)
    moe = tuple(int(np.clip(cfg.n_moe_layers - s * per, 0, per)) for s in range(num_stages))
    prologue = (pt.DENSE,) if cfg.n_dense_layers else ()
    return StageLayout(num_stages, per, (0,) * num_stages, moe, prologue)


def auto_kind(cfg, num_stages: int) -> str:
    """"blocks" when the layers split evenly over the stages, else "moe"."""
    return "blocks" if cfg.n_layers % num_stages == 0 else "moe"


def _rows_of(tree, index):
    """Stack leaves [n_layers, ...] -> [rows, slots, ...] by a static int index [rows, slots]."""
    return jax.tree.map(lambda a: jnp.take(a, jnp.asarray(index.reshape(-1)), axis=0).reshape(
        index.shape + a.shape[1:]), tree)


def split_stages(layout: StageLayout, params, router, rows, place=None) -> tuple[dict, dict]:
    """(stage params, stage consts) with one row per entry of `rows` (the stage each row holds). place:
    (the params' state PartitionSpecs, mesh, pipeline axis) to move the stacks in relayout.py's explicit
    steps; None: by GSPMD."""
    rows = np.asarray(rows, np.int32)
    sp, consts = {}, {"n_dense": jnp.asarray(np.asarray(layout.n_dense, np.int32)[rows]),
                      "n_moe": jnp.asarray(np.asarray(layout.n_moe, np.int32)[rows])}
    for kind in layout.slots:
        index = layout.layer_index(kind)[rows]
        if place is None:
            sp[kind] = _rows_of(params[STACKS[kind]], index)
        else:
            specs, mesh, pipe = place
            sp[kind] = jax.tree.map(lambda a, spec: relayout.to_rows(a, index, spec, mesh, pipe),
                                    params[STACKS[kind]], specs[STACKS[kind]])
        if kind == "moe" and STACKS[kind] in router:
            consts["router"] = _rows_of(router[STACKS[kind]], index)
    return sp, consts


def split_shared(params, router, layout: StageLayout | None = None) -> tuple[dict, dict]:
    """(shared params, shared consts): everything outside the stages' block stacks (with the "moe" layout the
    prologue's dense stack too), and the MTP routers."""
    staged = set(STACKS.values()) if layout is None else {STACKS[k] for k in layout.slots}
    shared = {k: v for k, v in params.items() if k not in staged}
    return shared, {k: v for k, v in router.items() if pt.is_mtp(k)}


def merge_grads(layout: StageLayout, stage_grads, shared_grads, home, place=None) -> dict:
    """Model-layout gradients from stage gradients (row home[s] holds stage s) and shared gradients; place:
    as split_stages'."""
    grads = dict(shared_grads)
    for kind in layout.slots:
        stage, slot = layout.home_slot(kind)
        if len(stage):
            rows = np.asarray(home)[stage]
            if place is None:
                grads[STACKS[kind]] = jax.tree.map(lambda g: g[jnp.asarray(rows), jnp.asarray(slot)],
                                                   stage_grads[kind])
            else:
                specs, mesh, pipe = place
                grads[STACKS[kind]] = jax.tree.map(
                    lambda g, spec: relayout.from_rows(g, rows, slot, spec, mesh, pipe), stage_grads[kind],
                    specs[STACKS[kind]])
    return grads


def merge_counts(layout: StageLayout, stage_counts, last_counts, home) -> dict:
    """Expert counts in the router collection's tree (model.py's aux['expert_counts'])."""
    counts = dict(last_counts)
    if "moe" in layout.slots and sum(layout.n_moe):
        stage, slot = layout.home_slot("moe")
        rows = jnp.asarray(np.asarray(home)[stage])
        counts[STACKS["moe"]] = pt.nest((pt.MOE_FFN, pt.BIAS), stage_counts[rows, jnp.asarray(slot)])
    return counts
