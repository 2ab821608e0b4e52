"""Load a trained model for inference from a training workdir (see dsv3_jax/train/restore.py)."""

from __future__ import annotations

import ml_collections

from dsv3_jax.train.restore import load_workdir as load_train_workdir


def load_workdir(workdir: str, fallback: ml_collections.ConfigDict | None = None):
    """(ModelConfig, variables {'params', 'router'[, 'fp8_meta']}, step) of the latest checkpoint in workdir."""
    _, cfg, state = load_train_workdir(workdir, fallback)
    return cfg, state.variables(), int(state.step)
