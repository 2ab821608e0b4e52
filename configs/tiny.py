"""A tiny DeepSeek-V3 that trains on a laptop CPU in minutes.

The definition is the packaged dsv3_jax/configs/tiny.py (found after any install); this file keeps the
user-facing path `--config=configs/tiny.py`. Copy that file to make a variant.
"""

from dsv3_jax.configs.tiny import get_config  # noqa: F401
