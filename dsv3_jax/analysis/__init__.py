"""Cost model of DeepSeek-V3 (Insights into DeepSeek-V3, V3 report): the paper's numbers from a ModelConfig.

One concept per module:
    param_types / params / param_formula   parameter counts (eval_shape of the real model; closed form)
    kv_cache                               KV-cache bytes per token: MLA, GQA, MHA (Insights Table 1)
    flops                                  training FLOPs per token, one convention (Insights Table 2)
    tpot                                   EP-communication bound on time per output token (Insights §2.3.2)
    activations / memory                   training memory per device on a mesh
    pipeline_bubbles                       V3 report Table 2 bubbles; hook for the schedule simulator
    comparison_models                      V3, V2, V2-Lite, Qwen-2.5 72B, LLaMA-3.1 405B as ModelConfigs
    tables / report                        the `dsv3-report` tables (dsv3_jax/cli/report.py)
"""

from dsv3_jax.analysis.flops import training_flops_per_token, training_gflops_per_token
from dsv3_jax.analysis.kv_cache import kv_bytes_per_token, kv_cache_bytes
from dsv3_jax.analysis.memory import MemoryEstimate, TrainMemoryOptions, training_memory_per_device
from dsv3_jax.analysis.param_types import ParamCounts
from dsv3_jax.analysis.params import param_counts
from dsv3_jax.analysis.tpot import tpot_seconds, tpot_seconds_for_config

__all__ = [
    "ParamCounts", "param_counts", "kv_bytes_per_token", "kv_cache_bytes", "training_flops_per_token",
    "training_gflops_per_token", "tpot_seconds", "tpot_seconds_for_config", "TrainMemoryOptions",
    "MemoryEstimate", "training_memory_per_device",
]
