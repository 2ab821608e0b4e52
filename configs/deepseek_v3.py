"""DeepSeek-V3 671B (official inference/configs/config_671B.json, docs/paper.md §1) with one MTP module.

The definition is the packaged dsv3_jax/configs/deepseek_v3.py (found after any install); this file keeps the
user-facing path `--config=configs/deepseek_v3.py`. Copy that file to make a variant.
"""

from dsv3_jax.configs.deepseek_v3 import get_config  # noqa: F401
