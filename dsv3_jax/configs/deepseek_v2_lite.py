"""DeepSeek-V2-Lite 16B (official inference/configs/config_16B.json, docs/paper.md §1): softmax gating, no q
compression, no groups, no aux-loss-free bias, no MTP."""

from dsv3_jax.experiment_config import experiment_config


def get_config(arg=None):
    del arg
    cd = experiment_config(model=dict(
        vocab_size=102400, dim=2048, inter_dim=10944, moe_inter_dim=1408,
        n_layers=27, n_dense_layers=1, n_heads=16,
        n_routed_experts=64, n_shared_experts=2, n_activated_experts=6,
        n_expert_groups=1, n_limited_groups=1, score_func="softmax", route_scale=1.0, router_bias=False,
        q_lora_rank=0, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
        max_seq_len=16384, original_seq_len=4096, rope_theta=10000.0, rope_factor=40.0,
        beta_fast=32, beta_slow=1, mscale=0.707,
        mtp_depth=0, dtype="bfloat16", remat="full",
    ))
    cd.train.seq_len = 4096
    # Layout: one 8-GPU node, 8-way expert parallelism (8 of the 64 experts per GPU; every expert rank is also a
    # data-parallel rank), ZeRO-1 moments (train/layout.py). `dsv3-plan` plans this layout.
    cd.mesh.update(dict(data=1, fsdp=1, expert=8, pipe=1, tensor=1))
    return cd
