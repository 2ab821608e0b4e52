"""DeepSeek-V2-Lite 16B (official inference/configs/config_16B.json, docs/paper.md §1): softmax gating, no q

The definition is the packaged dsv3_jax/configs/deepseek_v2_lite.py (found after any install); this file keeps the
user-facing path `--config=configs/deepseek_v2_lite.py`. Copy that file to make a variant.
"""

from dsv3_jax.configs.deepseek_v2_lite import get_config  # noqa: F401
