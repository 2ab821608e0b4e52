"""The pure, jitted train step and eval step (V3 report §2, §4.2).

    loss = CE + (λ/D) Σ_k L_MTP,k + α Σ_layers L_Bal          (eq. 17-20, 24-25)

After the optimizer step the aux-loss-free bias moves toward balance (V3 report eq. 16 context):
    b_i += γ · sign(mean_load − load_i)
with loads counted over the WHOLE global batch of the step (jit computes the counts over the global array).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from dsv3_jax.layer_split import join_params
from dsv3_jax.model import DeepSeekV3
from dsv3_jax import losses
from dsv3_jax.data.tokenizer import PAD_ID
from dsv3_jax.layers.moe import node_routing
from dsv3_jax.layers.moe.ep import make_expert_parallel
from dsv3_jax.train import finite, schedules
from dsv3_jax.train.compile_options import train_compiler_options
from dsv3_jax.train.state import TrainState, model_variables


def update_biases(router, counts, gamma):
    """b += γ · sign(mean(load) − load) per MoE layer; `counts` has the router tree's structure."""
    def one(b, c):
        c = c.astype(jnp.float32)
        return b + gamma * jnp.sign(jnp.mean(c, axis=-1, keepdims=True) - c)
    return jax.tree.map(one, router, counts)


def load_stats(counts):
    """max/mean and min/mean expert load for every MoE layer, stacked [L] (main layers then MTP)."""
    loads = jnp.concatenate([c.reshape(-1, c.shape[-1]) for c in jax.tree.leaves(counts)]).astype(jnp.float32)
    mean = jnp.mean(loads, axis=-1)
    return jnp.max(loads, axis=-1) / mean, jnp.min(loads, axis=-1) / mean


def loss_fn(params, fp8_meta, router, batch, cfg, lam, alpha, parallel=None, pad_id=PAD_ID):
    """The loss of eq. 17-25 and its parts; `params` stacked or split (train/state.py: their gradients come in
    the same layout)."""
    variables = model_variables(join_params(cfg, params), router, fp8_meta)
    out = DeepSeekV3(cfg, parallel).apply(variables, batch["inputs"])
    mask = batch["targets"] != pad_id  # the run tokenizer's padding (data/tokenizers.py)
    ce = losses.cross_entropy(out.logits, batch["targets"], mask)
    mtp = losses.mtp_loss(out.mtp_logits, batch["targets"], mask, lam)
    bal = losses.balance_loss(out.aux, alpha)
    return ce + mtp + bal, dict(ce=ce, mtp=mtp, balance=bal, counts=out.aux["expert_counts"],
                                comm=out.aux.get("comm_bytes"))


def train_step(state: TrainState, batch, *, cfg, optimizer, train_cfg, parallel=None, pad_id=PAD_ID):
    """One optimizer step and one bias update; returns (new state, metrics). `parallel`: the expert-parallel
    context (layers/moe/ep.py), built once by make_train_step; pad_id: the run tokenizer's (masked targets).

    The FP8 amax histories (if any) are differentiated too: their "gradient" is their next value."""
    lam, gamma = step_weights(state.step, train_cfg)
    (loss, aux), (grads, fp8_meta) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
        state.params, state.fp8_meta, state.router, batch, cfg, lam, train_cfg.balance_alpha, parallel, pad_id)
    return apply_gradients(state, loss, aux, grads, lam, gamma, cfg=cfg, optimizer=optimizer, train_cfg=train_cfg,
                           fp8_meta=fp8_meta)


def step_weights(step, t):
    """(MTP λ, bias update speed γ) at `step`, scaled to the run (train/schedules.py)."""
    lam = schedules.mtp_lambda(step, total=t.steps, start=t.mtp_lambda, end=t.mtp_lambda_final)
    return lam, schedules.bias_update_speed(step, total=t.steps, gamma=t.bias_update_speed)


def apply_gradients(state: TrainState, loss, aux, grads, lam, gamma, *, cfg, optimizer, train_cfg, fp8_meta=None):
    """The optimizer step, the bias update from aux['counts'] and the step's metrics (shared with the
    pipelined step, train/pipeline_step.py). `fp8_meta`: the new FP8 histories (None: unchanged). A non-finite
    loss, gradient or update keeps the old state (metrics['finite'] False; train/finite.py)."""
    t = train_cfg
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    router = update_biases(state.router, aux["counts"], gamma) if cfg.router_bias else state.router
    metrics = dict(loss=loss, ce=aux["ce"], mtp=aux["mtp"], balance=aux["balance"],
                   grad_norm=optax.tree.norm(grads), mtp_lambda=lam, gamma=gamma,
                   lr=schedules.learning_rate(state.step, peak=t.lr, total=t.steps, warmup=t.warmup_steps,
                                              min_ratio=t.min_lr_ratio))
    if aux["counts"]:
        metrics["load_max"], metrics["load_min"] = load_stats(aux["counts"])
    if aux.get("comm") is not None:  # expert parallelism: bytes within / across nodes (layers/moe/node_routing.py)
        metrics.update(node_routing.comm_metrics(aux["comm"]))
    new = state.replace(step=state.step + 1, params=params, opt_state=opt_state, router=router,
                        fp8_meta=state.fp8_meta if fp8_meta is None else fp8_meta)
    metrics["finite"] = finite.update_is_finite(loss, metrics["grad_norm"], new)
    return finite.keep_if_nonfinite(metrics["finite"], new, state, skip=t.nonfinite == "skip"), metrics


def expert_parallel(cfg, batch_sharding=None):
    """The expert-parallel context of a step: from the batch sharding's mesh, or one device without one."""
    return make_expert_parallel(cfg, None if batch_sharding is None else batch_sharding.mesh)


def make_train_step(cfg, optimizer, train_cfg, state_sharding=None, batch_sharding=None, pad_id=PAD_ID,
                    compiler_options: dict | None = None):
    """jit(train_step) with the state donated; with shardings (train/layout.py) the state keeps its
    layout and the metrics come back replicated. compiler_options: XLA's, by default the backend's training
    options (train/compile_options.py); {} compiles with XLA's defaults (dsv3-plan, which models GPUs)."""
    fn = functools.partial(train_step, cfg=cfg, optimizer=optimizer, train_cfg=train_cfg,
                           parallel=expert_parallel(cfg, batch_sharding), pad_id=pad_id)
    options = train_compiler_options() if compiler_options is None else (compiler_options or None)
    if state_sharding is None:
        return jax.jit(fn, donate_argnums=(0,), compiler_options=options)
    replicated = jax.sharding.NamedSharding(batch_sharding.mesh, jax.sharding.PartitionSpec())
    return jax.jit(fn, donate_argnums=(0,), in_shardings=(state_sharding, batch_sharding),
                   out_shardings=(state_sharding, replicated), compiler_options=options)


def eval_step(state: TrainState, batch, *, cfg, parallel=None, pad_id=PAD_ID, token_bytes=None):
    """Sums for the eval metrics: NLL (nats) and the text bytes of the targets, MTP depth-1 hits and count,
    expert counts. Summed (not averaged) so batches of different fill combine exactly. Byte tokenizer
    (token_bytes None): NLL and count over byte targets. A checkpoint's tokenizer: NLL over every non-pad
    target and the UTF-8 bytes each stands for (token_bytes [V], data/tokenizers.py), so that bits per byte
    compare across tokenizers."""
    variables = model_variables(join_params(cfg, state.params), state.router, state.fp8_meta)
    out = DeepSeekV3(cfg, parallel).apply(variables, batch["inputs"])
    targets = batch["targets"]
    logp = jax.nn.log_softmax(out.logits, axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    if token_bytes is None:
        byte = (targets < 256).astype(jnp.float32)
        sums = dict(nll=jnp.sum(nll * byte), bytes=jnp.sum(byte))
    else:
        real = (targets != pad_id).astype(jnp.float32)
        sums = dict(nll=jnp.sum(nll * real), bytes=jnp.sum(jnp.asarray(token_bytes)[targets] * real))
    if cfg.mtp_depth:
        # MTP depth 1 at position i predicts t_{i+2} = targets[i+1]: the second-token acceptance proxy.
        hit = jnp.argmax(out.mtp_logits[0][:, :-1], axis=-1) == targets[:, 1:]
        valid = (targets[:, 1:] != pad_id).astype(jnp.float32)
        sums.update(mtp_hits=jnp.sum(hit * valid), mtp_count=jnp.sum(valid))
    return sums, out.aux["expert_counts"]


def make_eval_step(cfg, state_sharding=None, batch_sharding=None, pad_id=PAD_ID, token_bytes=None):
    fn = functools.partial(eval_step, cfg=cfg, parallel=expert_parallel(cfg, batch_sharding), pad_id=pad_id,
                           token_bytes=token_bytes)
    if state_sharding is None:
        return jax.jit(fn)
    replicated = jax.sharding.NamedSharding(batch_sharding.mesh, jax.sharding.PartitionSpec())
    return jax.jit(fn, in_shardings=(state_sharding, batch_sharding), out_shardings=replicated)
