"""DeepSeek-V3 as pipeline stages: the executor's first_fn, stage_fn and loss_fn (V3 report §2, §3.2.1).

Each is the model's own forward, called through `DeepSeekV3.apply(..., method=...)` on the parameters the
stage holds (model.py; nothing of MLA, MoE, the blocks or MTP is written again here):

    first_fn   DeepSeekV3.embed_tokens on the micro-batch's tokens                       (first stage)
    stage_fn   DeepSeekV3.run_blocks on a contiguous range of blocks (dense then MoE slots; padding slots
               skipped with n_active); returns the sequence-wise balance loss α Σ f_i P_i (eq. 17-20) and the
               expert counts (the load signal of the aux-loss-free bias update, eq. 16) of its MoE layers
    loss_fn    DeepSeekV3.final_logits, cross-entropy, the D MTP modules (DeepSeekV3.mtp_module) and their
               loss (eq. 21-25), and the MTP blocks' balance loss and counts               (last stage)

With moe_impl="ep" the model gets the expert-parallel context of a shard_map manual over the expert axis
(layers/moe/ep.py, `ExpertParallel.inside_shard_map`): its MoE layers run on this rank's routed experts and
exchange tokens over the expert axis; their stats["comm_bytes"] are DROPPED here (only counts and the balance
terms leave a stage), so the pipelined step reports no comm metrics.

Micro-batches (`micro_batches`): a batch [B, T] becomes chunks micro-batches of B/chunks sequences, sequence
j·chunks + m in micro-batch m, so a data shard's contiguous rows split into micro-batches without moving data.
Targets carry what the last stage needs: the input tokens (MTP embeds t_{i+k}), the next tokens, and
per-token loss weights [b, 1+D, T] that fold in the padding mask, the global token counts, λ/D and the
micro-batch count, so that summing every micro-batch's Σ nll·w over micro-batches (× 1/chunks, the executor's
mean) and over data shards reproduces losses.cross_entropy + losses.mtp_loss exactly.
Legend: B batch, b micro-batch rows, T positions, D model dim (MTP depth for weights), E routed experts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dsv3_jax import param_tree as pt
from dsv3_jax.data.tokenizer import PAD_ID
from dsv3_jax.layers.mtp import tokens_ahead
from dsv3_jax.model import DeepSeekV3, training_positions
from dsv3_jax.parallel.pipeline.model_layout import STACKS, StageLayout


# Kernels every use of which multiplies them in the compute dtype (layers/linear.py, mla.py, mlp.py, the expert
# backends cast them first): their compute-dtype copy gives the same products and the same gradients.
MATMUL_KERNELS = ("wq_a", "wq_b", "wq", "wkv_a", "wkv_b", "wo", "wk", "wv", "w1", "w2", "w3")


def working_weights(cfg, stage_params):
    """The stages' weights as the executor holds them: the MATMUL_KERNELS in the compute dtype (half the bytes
    of the float32 masters in bf16; V3 keeps bf16 working weights with fp32 masters, docs/paper.md §3), the
    rest (norm scales, the router gate) in float32. A no-op for float32 models and under FP8 recipes (which
    quantize the float32 kernel). The executor accumulates their gradients in float32 (stage_math.py)."""
    dt = jnp.dtype(cfg.dtype)
    if cfg.fp8 != "none" or dt == jnp.float32:
        return stage_params

    def one(path, a):
        return a.astype(dt) if pt.key_names(path)[-1] in MATMUL_KERNELS else a
    return jax.tree_util.tree_map_with_path(one, stage_params)


def _balance(stats, rows: int):
    """Σ_b Σ_i f_i P_i / rows (rows: the micro-batch's sequences over all data shards), over stacked layers."""
    return jnp.sum(stats["balance_f"] * stats["balance_p"]) / rows


def make_stage_fn(cfg, layout: StageLayout, alpha: float, shards: int = 1, parallel=None):
    """stage_fn(params, consts, x) -> (x, α Σ_layers balance, {"counts": [Lm, E]}) (model_layout.py trees)."""
    model = DeepSeekV3(cfg, parallel)
    kinds = {STACKS[kind]: n for kind, n in layout.slots.items()}  # {stack name: slots per stage}

    def stage_fn(params, consts, x):
        positions, mask = training_positions(x[..., 0])  # only the [b, T] shape of the hidden state matters
        variables = {pt.PARAMS: {STACKS[k]: v for k, v in params.items()}}
        if "router" in consts:
            variables[pt.ROUTER] = {pt.MOE: consts["router"]}
        n_active = None if layout.uniform else {pt.DENSE: consts["n_dense"], pt.MOE: consts["n_moe"]}
        x, stats, _ = model.apply(variables, x, positions, mask, lengths=kinds, n_active=n_active,
                                  method=DeepSeekV3.run_blocks)
        if pt.MOE not in stats:
            return x, jnp.zeros((), jnp.float32), {}
        st = stats[pt.MOE]
        return x, alpha * _balance(st, x.shape[0] * shards), {"counts": st["counts"]}
    return jax.jit(stage_fn)   # traced once per signature, not once per executor branch


def gather_shared(shared: dict, keys, tails: dict | None, keep: str | None = None) -> dict:
    """The `keys` of the shared params whole again inside the executor: each leaf all-gathered over the batch
    axes `tails` splits it over (ZeRO, model_experts.zero_shared_tails), except `keep` (the expert axis that
    expert parallelism consumes) on routed-expert leaves. The backward of all_gather is a psum_scatter, so the
    shared gradients accumulate in the split layout."""
    out = {k: shared[k] for k in keys if k in shared}
    if not tails:
        return out

    def one(path, x):
        names = pt.key_names(path)
        routed = pt.is_routed_expert(names)
        for dim, entry in enumerate(tails.get(tuple(names), ())):
            axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
            axes = tuple(a for a in axes if not (routed and a == keep))
            if axes:
                x = jax.lax.all_gather(x, axes, axis=dim, tiled=True)
        return x
    return jax.tree_util.tree_map_with_path(one, out)


def make_first_fn(cfg, layout: StageLayout | None = None, tails: dict | None = None):
    """Token embedding of one micro-batch (V3 keeps it in high precision, §3.3), then the layout's prologue
    stacks (the "moe" layout: the dense blocks, DeepSeekV3.run_blocks over them). tails: the shared params'
    ZeRO split inside the executor (gather_shared), or None (replicated)."""
    model = DeepSeekV3(cfg)
    prologue = () if layout is None else layout.prologue

    def first_fn(shared, tokens):
        shared = gather_shared(shared, (pt.EMBED,) + tuple(prologue), tails)
        x = model.apply({pt.PARAMS: {pt.EMBED: shared[pt.EMBED]}}, tokens, method=DeepSeekV3.embed_tokens)
        if not prologue:
            return x
        positions, mask = training_positions(tokens)
        lengths = pt.stack_sizes(cfg)
        x, _, _ = model.apply({pt.PARAMS: {k: shared[k] for k in prologue}}, x, positions, mask,
                              lengths={k: lengths[k] for k in prologue}, method=DeepSeekV3.run_blocks)
        return x
    return first_fn


def _weighted_nll(logits, targets, weights):
    """Σ -log p(target) · weight over all positions (losses in fp32, docs/numerics.md)."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return jnp.sum(nll * weights)


def make_loss_fn(cfg, alpha: float, shards: int = 1, parallel=None, tails: dict | None = None):
    """loss_fn(shared, mtp_router, y, targets) -> (loss, {ce, mtp, balance}, MTP expert counts tree); tails as
    make_first_fn's (the routed experts of the MTP blocks keep their expert split under expert parallelism)."""
    model = DeepSeekV3(cfg, parallel)
    keys = (pt.EMBED, pt.NORM, pt.HEAD) + tuple(pt.mtp_name(k) for k in range(cfg.mtp_depth))
    keep = None if parallel is None else parallel.axis

    def loss_fn(shared, router, y, t):
        shared = gather_shared(shared, keys, tails, keep)
        tokens, nxt, w = t["inputs"], t["targets"], t["weights"]
        variables = {pt.PARAMS: shared, **({pt.ROUTER: router} if router else {})}
        ce = _weighted_nll(model.apply(variables, y, method=DeepSeekV3.final_logits), nxt, w[:, 0])
        positions, mask = training_positions(tokens)
        h, mtp_loss, bal, counts = y, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32), {}
        for k in range(cfg.mtp_depth):
            h, logits, st, _ = model.apply(variables, k, h, tokens_ahead(tokens, k + 1), positions, mask,
                                           method=DeepSeekV3.mtp_module)
            mtp_loss += _weighted_nll(logits, tokens_ahead(nxt, k + 1), w[:, k + 1])
            if st:
                bal += alpha * _balance(st, y.shape[0] * shards)
                counts = pt.merge(counts, pt.nest(pt.mtp_block_path(k) + (pt.MOE_FFN, pt.BIAS), st["counts"]))
        return ce + mtp_loss + bal, {"ce": ce, "mtp": mtp_loss, "balance": bal}, counts
    return jax.jit(loss_fn)


def micro_batches(batch, chunks: int, mtp_depth: int, lam):
    """(inputs [chunks, B/chunks, T], targets) from {"inputs", "targets"} [B, T] (see module docstring)."""
    tokens, nxt = batch["inputs"], batch["targets"]
    b = tokens.shape[0]
    if b % chunks:
        raise ValueError(f"batch size {b} is not divisible by the {chunks} pipeline micro-batches "
                         f"(train.pipeline_chunks)")
    mask = (nxt != PAD_ID).astype(jnp.float32)
    weights = [mask * (chunks / jnp.maximum(jnp.sum(mask), 1.0))]
    for k in range(1, mtp_depth + 1):
        ahead = tokens_ahead(mask, k)      # mask of t_{i+k+1}; 0 past the end
        weights.append(ahead * (lam / mtp_depth * chunks / jnp.maximum(jnp.sum(ahead), 1.0)))
    split = lambda a: a.reshape((b // chunks, chunks) + a.shape[1:]).swapaxes(0, 1)
    targets = {"inputs": split(tokens), "targets": split(nxt), "weights": split(jnp.stack(weights, axis=1))}
    return split(tokens), targets
