"""DeepSeek-V3 671B (official inference/configs/config_671B.json, docs/paper.md §1) with one MTP module."""

from dsv3_jax.experiment_config import experiment_config


def get_config(arg=None):
    del arg
    cd = experiment_config(model=dict(
        vocab_size=129280, dim=7168, inter_dim=18432, moe_inter_dim=2048,
        n_layers=61, n_dense_layers=3, n_heads=128,
        n_routed_experts=256, n_shared_experts=1, n_activated_experts=8,
        n_expert_groups=8, n_limited_groups=4, score_func="sigmoid", route_scale=2.5, router_bias=True,
        q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
        max_seq_len=16384, original_seq_len=4096, rope_theta=10000.0, rope_factor=40.0,
        beta_fast=32, beta_slow=1, mscale=1.0,
        mtp_depth=1, dtype="bfloat16", remat="full",
    ))
    cd.train.seq_len = 4096
    # The paper's training layout (docs/paper.md §4): 2048 GPUs = 16-way DualPipe pipeline x 64-way expert
    # parallelism x 2 ZeRO-1 data-parallel replicas (every expert rank is also a data-parallel rank: 128 batch
    # shards per stage). The batch is the paper's 15360 sequences (after its 3072 -> 15360 ramp, V3 report
    # §4.2): 120 micro-batches of one 4096-token sequence per batch shard. `dsv3-plan` plans this layout.
    cd.train.batch_size = 15360
    cd.train.pipeline_schedule = "dualpipe"
    cd.train.pipeline_chunks = 120
    cd.mesh.update(dict(data=2, fsdp=1, expert=64, pipe=16, tensor=1))
    return cd
