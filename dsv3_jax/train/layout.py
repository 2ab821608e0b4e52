"""The training layout: the train state's shardings and the global batch (DeepSeek-V3: ZeRO-1 data parallelism
with 64-way expert parallelism, docs/paper.md §4).

Params and optimizer state are placed by their logical axis names (sharding.LOGICAL_RULES: experts over
`expert`, the model dim over `fsdp` = ZeRO), the router biases and scalars are replicated, and each process's
rows of the batch become one global array. With a pipeline (mesh pipe > 1) the same shardings hold: the rules
never name `pipe` for a state leaf (`layers` is replicated), so every pipeline rank keeps the fsdp/expert shard
of every layer, and the optimizer update runs on that ZeRO layout outside the executor; train/pipeline_step.py
lays the block stacks out per (rank, slot) for the executor (GSPMD gathers them from this layout).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from dsv3_jax.model import DeepSeekV3
from dsv3_jax import sharding
from dsv3_jax.train.state import TrainState


def state_shardings(cfg, optimizer, mesh, seq_len: int) -> TrainState:
    """NamedShardings of every TrainState leaf: params and the optimizer moments by logical axis names
    (optax maps the boxed params, so its moments keep their boxes), everything else replicated."""
    model = DeepSeekV3(cfg)
    boxed = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, seq_len), jnp.int32))
    params = sharding.tree_shardings(boxed["params"], mesh)
    opt = sharding.tree_shardings(jax.eval_shape(optimizer.init, boxed["params"]), mesh)
    unbox = lambda t: nn.unbox(t) if t is not None else t
    replicated = NamedSharding(mesh, P())
    router = jax.tree.map(lambda _: replicated, boxed.get("router", {}))
    fp8_meta = jax.tree.map(lambda _: replicated, boxed.get("fp8_meta", {}))  # a few floats per tensor
    return TrainState(step=replicated, params=unbox(params), opt_state=unbox(opt), router=router,
                      rng=replicated, fp8_meta=fp8_meta)


def global_batch(local: dict, mesh) -> dict:
    """This process's rows {name: [b, T]} -> global arrays [b·processes, T] split over the batch axes."""
    out = {}
    for name, rows in local.items():
        rows = np.asarray(rows)
        spec = sharding.batch_sharding(mesh, rows.ndim)
        shape = (rows.shape[0] * jax.process_count(),) + rows.shape[1:]
        out[name] = jax.make_array_from_process_local_data(spec, rows, shape)
    return out
