"""Training-memory estimate: weights/optimizer arithmetic by hand, sharding, remat ordering, mesh errors."""

from __future__ import annotations

import pytest
from analysis_reference import reference_counts

from dsv3_jax.analysis import comparison_models as cm
from dsv3_jax.analysis import memory
from dsv3_jax.config import ModelConfig

DENSE = ModelConfig(vocab_size=100, dim=16, inter_dim=32, moe_inter_dim=8, n_layers=4, n_dense_layers=4,
                    n_heads=2, n_routed_experts=0, n_shared_experts=0, n_activated_experts=0, q_lora_rank=0,
                    kv_lora_rank=8, qk_nope_head_dim=4, qk_rope_head_dim=4, v_head_dim=4, mtp_depth=0,
                    max_seq_len=64, original_seq_len=64)


def test_weights_by_hand_single_device_and_zero1():
    n = reference_counts(DENSE)["total"]
    o = memory.TrainMemoryOptions(seq_len=8, zero_stage=0)
    est = memory.training_memory_per_device(DENSE, {"data": 1}, 1, o)
    assert (est.params, est.grads, est.optimizer) == (4 * n, 4 * n, 8 * n)
    est = memory.training_memory_per_device(DENSE, {"data": -1}, 4, memory.TrainMemoryOptions(seq_len=8))
    assert (est.params, est.grads, est.optimizer) == (4 * n, 4 * n, 8 * n / 4)  # ZeRO-1: moments only
    z3 = memory.training_memory_per_device(DENSE, {"data": 4}, 4, memory.TrainMemoryOptions(seq_len=8, zero_stage=3))
    assert (z3.params, z3.grads) == (n, n)


def test_expert_axis_shards_routed_experts_only():
    v3 = cm.deepseek_v3()
    c = v3.counts()
    o = memory.TrainMemoryOptions(zero_stage=0)
    one = memory.training_memory_per_device(v3.cfg, {"expert": 1}, 1, o, counts=c)
    ep = memory.training_memory_per_device(v3.cfg, {"expert": 8}, 8, o, counts=c)
    routed = c.routed + c.mtp_routed
    assert one.params - ep.params == pytest.approx(4 * routed * (1 - 1 / 8))


def test_pipeline_and_remat_ordering():
    v3 = cm.deepseek_v3()
    c = v3.counts()
    base = memory.training_memory_per_device(v3.cfg, {"pipe": 1}, 1, counts=c)
    pp = memory.training_memory_per_device(v3.cfg, {"pipe": 2}, 2, counts=c)
    assert pp.params < 0.6 * base.params
    acts = {p: memory.training_memory_per_device(v3.cfg, {}, 1, memory.TrainMemoryOptions(remat=p),
                                                 counts=c).activations
            for p in ("none", "dots", "dots_no_batch", "full")}
    assert acts["none"] > acts["dots"] > acts["dots_no_batch"] > acts["full"] > 0
    assert base.logits == 4096 * v3.cfg.vocab_size * 4 * 2  # main + one MTP head, fp32


def test_mesh_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown axes"):
        memory.resolve_mesh({"model": 2})
    with pytest.raises(ValueError, match="n_devices"):
        memory.resolve_mesh({"data": -1, "pipe": 3}, 8)
    with pytest.raises(ValueError, match="multiply"):
        memory.resolve_mesh({"data": 2}, 8)
    assert memory.resolve_mesh({"data": -1, "expert": 4}, 16)["data"] == 4
    with pytest.raises(ValueError, match="zero_stage"):
        memory.training_memory_per_device(DENSE, {}, 1, memory.TrainMemoryOptions(zero_stage=4))


def test_activations_by_hand_full_remat():
    # DENSE (MLA, no q compression), bf16, per token: one block's working set = 260 bf16 values + the fp32
    # softmax lse (2 heads) = 528 B; full remat keeps each of the 4 blocks' inputs (16 values = 32 B).
    o = memory.TrainMemoryOptions(seq_len=8, remat="full")
    est = memory.training_memory_per_device(DENSE, {}, 1, o)
    assert est.activations == (4 * 32 + 528) * 8
    assert est.logits == 8 * 100 * 4


def test_paper_remat_drops_norm_and_up_projection_outputs():
    """remat="paper" keeps what "none" keeps minus the RMSNorm outputs and MLA's up-projections (with the rope'd
    queries and softmax statistics), by hand from the entries; V3 MoE block at 4096 tokens, bf16."""
    from dsv3_jax.analysis import activations as act
    cfg = cm.deepseek_v3().cfg
    entries = act.block_entries(cfg, True, 4096)
    none, paper, full = (act.saved_bytes_per_token(entries, p, 2) for p in ("none", "paper", "full"))
    h, d = cfg.n_heads, cfg.dim
    dropped = 2 * (d + d + cfg.q_lora_rank + h * cfg.qk_head_dim + h * cfg.qk_rope_head_dim + cfg.kv_lora_rank
                   + h * (cfg.qk_nope_head_dim + cfg.v_head_dim)) + 4 * h  # bf16 values, fp32 softmax lse
    assert none - paper == dropped
    assert full < paper < none
    # GQA (no MLA): only the two norm outputs go.
    gqa = cfg.replace(attention="gqa", n_kv_heads=8)
    e = act.block_entries(gqa, False, 4096)
    assert act.saved_bytes_per_token(e, "none", 2) - act.saved_bytes_per_token(e, "paper", 2) == 2 * 2 * d
