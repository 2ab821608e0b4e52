"""A single-GPU research model (~0.5B total, ~0.1B activated): every V3 mechanism at a size one H100 trains.

The definition is the packaged dsv3_jax/configs/small.py (found after any install); this file keeps the
user-facing path `--config=configs/small.py`. Copy that file to make a variant.
"""

from dsv3_jax.configs.small import get_config  # noqa: F401
