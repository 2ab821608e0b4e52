"""A single-GPU research model (~0.5B total, ~0.1B activated): every V3 mechanism at a size one H100 trains."""

from dsv3_jax.experiment_config import experiment_config


def get_config(arg=None):
    del arg
    cd = experiment_config(model=dict(
        vocab_size=384, dim=1024, inter_dim=2816, moe_inter_dim=256,
        n_layers=12, n_dense_layers=1, n_heads=16,
        n_routed_experts=64, n_shared_experts=1, n_activated_experts=6,
        n_expert_groups=8, n_limited_groups=4, score_func="sigmoid", route_scale=2.5, router_bias=True,
        q_lora_rank=384, kv_lora_rank=256, qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64,
        max_seq_len=4096, original_seq_len=1024, rope_theta=10000.0, rope_factor=4.0,
        beta_fast=32, beta_slow=1, mscale=1.0,
        mtp_depth=1, dtype="bfloat16", remat="dots",
    ))
    cd.train.seq_len = 1024
    cd.train.batch_size = 64
    cd.train.steps = 20000
    cd.mesh.update(dict(data=1))  # one GPU (dsv3-plan plans this layout)
    return cd
