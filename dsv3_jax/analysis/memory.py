"""Training memory per device for a ModelConfig on a mesh (an estimate; V3 report §3.2.3, §3.3; Insights §3).

Assumptions (each is a parameter of `TrainMemoryOptions` or of the mesh):
- Mesh axes as in configs' `mesh` block: data, fsdp, expert, pipe, tensor (`data=-1` = the rest of the
  devices). Routed-expert weights are sharded over expert × fsdp × tensor; every other weight over
  fsdp × tensor. The data axis (and, for non-expert weights, the expert axis) replicates.
- Pipeline: the layers (and the MTP modules) split evenly over `pipe` stages, rounded up; the worst stage also
  holds the larger of the embedding and the output head. `pipeline_param_copies=2` models DualPipe's two
  stages per rank (V3 report Table 2).
- ZeRO (V3 trains with ZeRO-1): stage >= 1 shards optimizer state (moments and fp32 master copy) over the
  replicating axes, >= 2 also the gradients, 3 also the parameters.
- Dtypes: the project keeps fp32 params (param_bytes=4, master_bytes=0); V3 keeps bf16/FP8 working weights
  with fp32 master weights and gradients and bf16 AdamW moments (param_bytes=2, master_bytes=4,
  moment_bytes=2).
- Activations: activations.py's per-block inventory under the remat policy, times the layers of one stage
  and the micro-batches in flight on the first stage (1F1B: pipe; DualPipe: pipe + 1), divided by `tensor`
  (sequence parallel outside the sharded matmuls), plus one block's full working set, plus the fp32 logits of
  the loss for one micro-batch (main + MTP heads). An upper bound for the worst device.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping

from dsv3_jax.analysis import activations
from dsv3_jax.analysis.param_types import ParamCounts
from dsv3_jax.analysis.params import param_counts
from dsv3_jax.config import ModelConfig

MESH_AXES = ("data", "fsdp", "expert", "pipe", "tensor")


def resolve_mesh(mesh: Mapping[str, int], n_devices: int | None = None) -> dict[str, int]:
    """Axis sizes with one -1 replaced by the remaining devices; validates names and the product."""
    unknown = sorted(set(mesh) - set(MESH_AXES))
    if unknown:
        raise ValueError(f"mesh: unknown axes {unknown}; expected a subset of {MESH_AXES}")
    sizes = {a: int(mesh.get(a, 1)) for a in MESH_AXES}
    free = [a for a, s in sizes.items() if s == -1]
    if len(free) > 1 or any(s == 0 or s < -1 for s in sizes.values()):
        raise ValueError(f"mesh: sizes must be positive with at most one -1, got {dict(mesh)}")
    fixed = math.prod(s for s in sizes.values() if s != -1)
    if free:
        if n_devices is None or n_devices % fixed:
            raise ValueError(f"mesh: {free[0]}=-1 needs n_devices divisible by {fixed}, got {n_devices}")
        sizes[free[0]] = n_devices // fixed
    if n_devices is not None and math.prod(sizes.values()) != n_devices:
        raise ValueError(f"mesh: axis sizes {sizes} multiply to {math.prod(sizes.values())}, not {n_devices}")
    return sizes


@dataclasses.dataclass(frozen=True)
class TrainMemoryOptions:
    seq_len: int = 4096
    microbatch_seqs: int = 1  # sequences per micro-batch per data-parallel replica
    inflight_microbatches: int | None = None  # default: mesh pipe (1F1B); DualPipe: pipe + 1
    remat: str | None = None  # default: cfg.remat
    param_bytes: int = 4
    master_bytes: int = 0  # fp32 master copy held by the optimizer (0 when params are already fp32)
    grad_bytes: int = 4
    moment_bytes: int = 4  # 2 for bf16 AdamW moments (V3 report §3.3)
    n_moments: int = 2  # AdamW
    compute_bytes: int = 2  # activation dtype (bf16)
    zero_stage: int = 1
    pipeline_param_copies: int = 1
    flash_attention: bool = True


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per device."""

    params: float
    grads: float
    optimizer: float
    activations: float
    logits: float

    @property
    def total(self) -> float:
        return self.params + self.grads + self.optimizer + self.activations + self.logits

    def gib(self) -> dict[str, float]:
        d = dataclasses.asdict(self) | {"total": self.total}
        return {k: v / 2**30 for k, v in d.items()}


def _stage_params(counts: ParamCounts, pipe: int, copies: int) -> tuple[float, float]:
    """(non-routed, routed) parameters on the worst pipeline stage."""
    body_shared = counts.dense_layers + counts.moe_nonrouted + counts.mtp_nonrouted + counts.final_norm
    body_routed = counts.routed + counts.mtp_routed
    if pipe == 1:
        return body_shared + counts.embedding + counts.head, body_routed
    layers = counts.config.n_layers + counts.config.mtp_depth
    frac = math.ceil(layers / pipe) / layers * copies
    return body_shared * frac + max(counts.embedding, counts.head), body_routed * frac


def _weights_memory(counts: ParamCounts, m: dict[str, int], o: TrainMemoryOptions) -> tuple[float, float, float]:
    """(params, grads, optimizer) bytes per device."""
    shared, routed = _stage_params(counts, m["pipe"], o.pipeline_param_copies)
    shared_dev = shared / (m["fsdp"] * m["tensor"])
    routed_dev = routed / (m["expert"] * m["fsdp"] * m["tensor"])
    rep_shared, rep_routed = m["data"] * m["expert"], m["data"]

    def sharded(stage: int) -> float:
        if o.zero_stage >= stage:
            return shared_dev / rep_shared + routed_dev / rep_routed
        return shared_dev + routed_dev

    opt = (o.n_moments * o.moment_bytes + o.master_bytes) * sharded(1)
    return o.param_bytes * sharded(3), o.grad_bytes * sharded(2), opt


def _activation_memory(cfg: ModelConfig, m: dict[str, int], o: TrainMemoryOptions) -> tuple[float, float]:
    """(activations, logits) bytes per device on the first (most loaded) pipeline stage."""
    policy = o.remat or cfg.remat
    tokens = o.microbatch_seqs * o.seq_len
    layers = cfg.n_layers + cfg.mtp_depth
    moe_frac = (cfg.n_moe_layers + (cfg.mtp_depth if cfg.n_moe_layers else 0)) / layers
    per_layer = 0.0
    for moe, weight in ((True, moe_frac), (False, 1 - moe_frac)):
        entries = activations.block_entries(cfg, moe, o.seq_len, o.flash_attention)
        per_layer += weight * activations.saved_bytes_per_token(entries, policy, o.compute_bytes)
    stage_layers = math.ceil(layers / m["pipe"])
    inflight = o.inflight_microbatches or m["pipe"]
    work = max(activations.working_bytes_per_token(activations.block_entries(cfg, moe, o.seq_len,
                                                                              o.flash_attention), o.compute_bytes)
               for moe in (True, False))
    acts = (inflight * stage_layers * per_layer + work) * tokens / m["tensor"]
    logits = tokens * cfg.vocab_size * 4 * (1 + cfg.mtp_depth) / m["tensor"]
    return acts, logits


def training_memory_per_device(cfg: ModelConfig, mesh: Mapping[str, int], n_devices: int | None = None,
                               options: TrainMemoryOptions | None = None,
                               counts: ParamCounts | None = None) -> MemoryEstimate:
    """Estimated training memory per device (bytes) of `cfg` on `mesh`; see the module docstring."""
    o = options or TrainMemoryOptions()
    if o.zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"TrainMemoryOptions.zero_stage: expected 0-3, got {o.zero_stage}")
    m = resolve_mesh(mesh, n_devices)
    params, grads, opt = _weights_memory(counts or param_counts(cfg), m, o)
    acts, logits = _activation_memory(cfg, m, o)
    return MemoryEstimate(params=params, grads=grads, optimizer=opt, activations=acts, logits=logits)


# ----- the estimates dsv3-plan prints next to XLA's analysis (this project's dtypes and layouts) ----------
def _project_options(cfg: ModelConfig, seq_len: int, seqs: int, bf16_moments: bool, **kw) -> TrainMemoryOptions:
    """Options of this project's training step: fp32 master params and gradients (no separate master copy),
    fp32 or bf16 AdamW moments, activations in the compute dtype, ZeRO-1 moments (train/layout.py)."""
    compute = 4 if cfg.dtype == "float32" else 2
    return TrainMemoryOptions(seq_len=seq_len, microbatch_seqs=seqs, param_bytes=4, master_bytes=0, grad_bytes=4,
                              moment_bytes=2 if bf16_moments else 4, compute_bytes=compute, zero_stage=1, **kw)


def _zero3_gather(counts: ParamCounts, m: dict[str, int]) -> float:
    """Bytes of the largest weights a ZeRO-3 (fsdp) step holds whole at once, fp32, with their gradient before
    the reduce-scatter: one MoE layer (its experts still split over `expert`), or the embedding and head."""
    if m["fsdp"] == 1:
        return 0.0
    c = counts.config
    layer = counts.moe_nonrouted / max(c.n_moe_layers, 1) + counts.routed / max(c.n_moe_layers, 1) / m["expert"]
    return 2 * 4 * max(layer, counts.embedding + counts.head) / m["tensor"]


def plan_training_memory(cfg: ModelConfig, mesh: Mapping[str, int], seq_len: int, seqs_per_shard: int,
                         bf16_moments: bool = False) -> dict[str, float]:
    """Bytes per device of the plain train step (train/step.py) on `mesh`: `seqs_per_shard` sequences per
    batch shard, one micro-batch, the config's remat policy, plus the ZeRO-3 weights gathered at use."""
    o = _project_options(cfg, seq_len, seqs_per_shard, bf16_moments, inflight_microbatches=1)
    m = resolve_mesh(mesh)
    counts = param_counts(cfg)
    est = training_memory_per_device(cfg, mesh, math.prod(m.values()), o, counts=counts)
    out = dataclasses.asdict(est) | {"zero3_gathered": _zero3_gather(counts, m)}
    return out | {"total": sum(out.values())}


def _pipeline_weights(counts: ParamCounts, m: dict[str, int], schedule: str, compute: int,
                      moment_bytes: int) -> dict[str, float]:
    """The pipelined step's weight-side bytes (train/pipeline_step.py, parallel/pipeline/model_layout.py "moe"):
    the ZeRO state over every device, each rank's stage weights in the compute dtype with float32 gradient
    accumulators, the shared params (embedding, dense prologue, head, MTP) ZeRO-split over the data-parallel
    ranks inside the executor, and one whole copy of them (fp32, with its gradient) where they are used."""
    c = counts.config
    n = math.prod(m.values())
    dp = m["data"] * m["fsdp"] * m["expert"]
    total = counts.total + counts.mtp
    state = total * (4 + 2 * moment_bytes) / n
    stages = 2 * m["pipe"] if schedule == "dualpipev" else m["pipe"]
    per_stage = -(-c.n_moe_layers // stages)
    slots = 1 if schedule in ("1f1b", "zb1p") else 2
    layer = counts.moe_nonrouted / max(c.n_moe_layers, 1) + counts.routed / max(c.n_moe_layers, 1) / m["expert"]
    stage = slots * per_stage * layer
    shared = counts.embedding + counts.head + counts.final_norm + counts.dense_layers + counts.mtp_nonrouted \
        + counts.mtp_routed / m["expert"]
    used = max(counts.embedding + counts.dense_layers,
               counts.embedding + counts.head + counts.mtp_nonrouted + counts.mtp_routed / m["expert"])
    return {"state": state, "stage_weights": stage * compute, "stage_grads": 2 * stage * 4,
            "shared_zero": 2 * shared * 4 / dp, "shared_in_use": 2 * used * 4}


def plan_pipeline_memory(cfg: ModelConfig, mesh: Mapping[str, int], seq_len: int, seqs_per_micro: int,
                         schedule: str, residuals: str, bf16_moments: bool = False,
                         n_buffers: int | None = None) -> dict[str, float]:
    """Bytes per device of the pipelined train step: _pipeline_weights plus activations. stage_grads counts the
    accumulators and the gradients the executor hands back (both float32). Activations: the executor's buffer
    slots of stage inputs and output gradients (n_buffers, default 2·(PP+1)), the residuals F keeps until B
    ("store": each block's saved tensors under cfg.remat for the PP+1 micro-batches in flight on the first
    rank, DualPipe) or one stage's ("recompute"), one block's working set and the fp32 logits of the loss (main
    + MTP, with their gradient)."""
    m = resolve_mesh(mesh)
    counts = param_counts(cfg)
    compute = 4 if cfg.dtype == "float32" else 2
    out = _pipeline_weights(counts, m, schedule, compute, 2 if bf16_moments else 4)
    tokens = seqs_per_micro * seq_len
    stages = 2 * m["pipe"] if schedule == "dualpipev" else m["pipe"]
    per_stage = -(-cfg.n_moe_layers // stages)
    entries = activations.block_entries(cfg, True, seq_len, True)
    saved = activations.saved_bytes_per_token(entries, cfg.remat, compute)
    inflight = m["pipe"] + 1 if residuals == "store" else 1
    slots = 1 if schedule in ("1f1b", "zb1p") else 2
    n_buffers = n_buffers or 2 * (m["pipe"] + 1)
    out["buffers"] = n_buffers * tokens * cfg.dim * compute
    out["residuals"] = inflight * slots * per_stage * saved * tokens
    out["block_working_set"] = activations.working_bytes_per_token(entries, compute) * tokens
    out["logits"] = 2 * tokens * cfg.vocab_size * 4 * (1 + cfg.mtp_depth) / m["tensor"]
    return out | {"total": sum(out.values())}
