"""A tiny DeepSeek-V3 that trains on a laptop CPU in minutes.

Still has every mechanism: a dense layer then MoE layers, 4 expert groups with group-limited routing,
a shared expert, sigmoid gating with the aux-loss-free bias, q and kv compression, YaRN RoPE and MTP.
"""

from dsv3_jax.experiment_config import experiment_config


def get_config(arg=None):
    del arg
    cd = experiment_config(model=dict(
        vocab_size=259,  # 256 bytes + BOS/EOS/PAD
        dim=128, inter_dim=384, moe_inter_dim=64,
        n_layers=4, n_dense_layers=1, n_heads=4,
        n_routed_experts=16, n_shared_experts=1, n_activated_experts=4,
        n_expert_groups=4, n_limited_groups=2, score_func="sigmoid", route_scale=2.5, router_bias=True,
        q_lora_rank=64, kv_lora_rank=32, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32,
        max_seq_len=512, original_seq_len=128, rope_theta=10000.0, rope_factor=4.0,
        beta_fast=32, beta_slow=1, mscale=1.0,
        mtp_depth=1, dtype="float32", init_std=0.02,
        moe_impl="blocked",  # XLA:CPU runs ragged_dot as a dense loop over experts; see layers/moe/dispatch.py
    ))
    cd.train.seq_len = 128
    cd.train.batch_size = 16
    cd.train.steps = 600
    cd.train.lr = 3e-3
    cd.train.warmup_steps = 50
    return cd
