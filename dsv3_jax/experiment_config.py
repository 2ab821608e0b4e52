"""The one shape of an experiment config: model + train + data + mesh (ml-collections).

Config files in `configs/` call `experiment_config(model=...)` with their model fields and override the few
train/data/mesh knobs they care about. `model_config(cd)` turns the `model` block into a validated ModelConfig.
"""

from __future__ import annotations

import ml_collections

from dsv3_jax.config import ModelConfig


def experiment_config(model: dict) -> ml_collections.ConfigDict:
    """A full experiment ConfigDict with the project's default train/data/mesh settings."""
    # Validate now (errors name the field) and list EVERY model field, so any of them can be overridden
    # from the command line (--config.model.attention=gqa) or by an ablation.
    cd = ml_collections.ConfigDict()
    cd.model = ml_collections.ConfigDict(ModelConfig.from_dict(model).to_dict())

    cd.train = ml_collections.ConfigDict(dict(
        seed=0,
        steps=1000,
        batch_size=16,  # global batch, sequences
        seq_len=128,
        # AdamW as V3 report §4.2.
        lr=2.2e-4,
        min_lr_ratio=0.1,  # 2.2e-4 -> 2.2e-5
        warmup_steps=100,
        b1=0.9,
        b2=0.95,
        weight_decay=0.1,
        grad_clip=1.0,
        bf16_moments=False,
        # Loss weights and schedules (V3 report §4.2), scaled to the run.
        mtp_lambda=0.3,
        mtp_lambda_final=0.1,
        balance_alpha=1e-4,
        bias_update_speed=1e-3,  # gamma
        # Pipeline parallelism, used when mesh.pipe > 1 (V3 report §3.2.1; train/pipeline_step.py).
        pipeline_schedule="dualpipe",  # "1f1b" | "zb1p" | "dualpipe" | "dualpipev" (dualpipe needs pipe even)
        pipeline_chunks=0,  # micro-batches per step; 0 = 2·pipe; batch_size must divide by chunks × data shards
        pipeline_residuals="recompute",  # B/W recompute each stage's forward, or "store" F's vjp residuals
        log_every=10,
        eval_every=100,
        eval_batches=8,  # val batches per eval (the val order is fixed, so this is the same sample each time)
        checkpoint_every=200,
        sample_tokens=200,  # greedy sample printed at the end (0 = none)
        sample_prompt="def ",
    ))
    cd.data = ml_collections.ConfigDict(dict(
        source="stdlib",  # "stdlib" | "files" | "synthetic" | "hf"
        path="",  # glob of .txt/.jsonl files (source "files") or a dataset name (source "hf")
        val_fraction=0.02,
        max_docs=0,  # cap on documents (0 = all)
        text_field="text",  # jsonl / hf column
        skip_non_utf8=False,  # user files that are not UTF-8 are an error unless this is set
        hf_config="",
        hf_split="train",
        synthetic_bytes=2_000_000,
        seed=0,
        backend="auto",  # "auto" | "grain" | "numpy" (same batches either way)
    ))
    cd.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, expert=1, pipe=1, tensor=1))
    return cd


def model_config(cd: ml_collections.ConfigDict) -> ModelConfig:
    """The validated ModelConfig of an experiment ConfigDict."""
    return ModelConfig.from_dict(cd.model.to_dict())
