"""Load a trained model for inference from a training workdir: only its variables (params, router biases, FP8
histories), by orbax's partial restore, never the optimizer state (dsv3_jax/train/restore.py load_variables)."""

from __future__ import annotations

import ml_collections

from dsv3_jax.train.restore import load_variables


def load_workdir(workdir: str, fallback: ml_collections.ConfigDict | None = None, step: int | None = None):
    """(ModelConfig, variables {'params', 'router'[, 'fp8_meta']}, step) of the newest usable checkpoint in
    workdir (or exactly `step`); an unusable newer one is skipped with a warning on stderr."""
    _, cfg, variables, got = load_variables(workdir, step, fallback)
    return cfg, variables, got
