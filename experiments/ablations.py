"""The shipped ablations: name -> {variant: dotted config overrides on the base config}.

Each runs on a laptop CPU in about 15 minutes with the default base (configs/tiny.py, 250 steps).
"""

ABLATIONS = {
    # V3 report §4.5.2: auxiliary-loss-free balancing vs a sequence-wise auxiliary loss (and neither).
    "balancing": {
        "aux_free": {"train.bias_update_speed": 3e-3, "train.balance_alpha": 1e-4},
        "seq_aux_loss": {"train.bias_update_speed": 0.0, "train.balance_alpha": 1e-2},
        "no_balancing": {"train.bias_update_speed": 0.0, "train.balance_alpha": 0.0},
    },
    # V3 report §2.2 / §4.5.1: Multi-Token Prediction depth.
    "mtp_depth": {
        "mtp0": {"model.mtp_depth": 0},
        "mtp1": {"model.mtp_depth": 1},
        "mtp2": {"model.mtp_depth": 2},
    },
    # MLA vs standard attentions with about the same attention parameters per layer (~50K in the tiny model).
    "attention": {
        "mla": {"model.attention": "mla"},
        "mha": {"model.attention": "mha", "model.qk_nope_head_dim": 8, "model.v_head_dim": 24},
        "gqa_1kv": {"model.attention": "gqa", "model.n_kv_heads": 1},
    },
    # V3 report §2.1.2: node/group-limited routing (each token reaches at most M groups) on and off.
    "group_routing": {
        "limited_2_of_4": {"model.n_limited_groups": 2},
        "unlimited": {"model.n_limited_groups": 4},
    },
    # V3 report §3.3 / App. B.1: fine-grained (1x128 / 128x128) online FP8 vs a BF16 baseline and per-tensor
    # delayed scaling (TransformerEngine style). FP8 needs the grouped-GEMM experts, so every variant uses
    # moe_impl="ragged"; all compute in bf16. On CPU, FP8 is emulated by rounding to float8 dtypes.
    # log_every=1 so final_train_ce averages the last 10 steps of these short runs; no end-of-run sample.
    "fp8": {name: {"model.dtype": "bfloat16", "model.moe_impl": "ragged", "model.fp8": recipe,
                   "train.log_every": 1, "train.sample_tokens": 0}
            for name, recipe in (("bf16", "none"), ("fp8_blockwise", "blockwise"),
                                 ("fp8_per_tensor_delayed", "per_tensor_delayed"))},
}

# Ablations whose table also gets the relative difference of each variant's losses to a baseline variant.
BASELINES = {"fp8": "bf16"}
