"""Every config file loads, validates and builds an abstract model; published parameter counts.

Counting convention for "activated per token": the parameters a token multiplies with, i.e. everything
except the embedding table (a lookup, not a matmul) and the (E - k) routed experts a token skips per MoE
layer; the output head is counted. With it V3 lands at 36.6B (paper: 36.7B "incl. embedding + head", 37B in
the abstract) and V2-Lite at 2.45B (paper: 2.4B), one rule for both.
"""

import importlib.util
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

import dsv3_jax
from dsv3_jax.experiment_config import model_config
from tests.conftest import REPO


def load_config(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def abstract_params(cfg):
    shapes = jax.eval_shape(lambda: dsv3_jax.DeepSeekV3(cfg).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32)))
    return nn.unbox(shapes["params"])


def n(tree):
    return sum(x.size for x in jax.tree.leaves(tree))


def counts(cfg):
    p = abstract_params(cfg)
    main = {k: v for k, v in p.items() if not k.startswith("mtp_")}
    mtp = {k: v for k, v in p.items() if k.startswith("mtp_")}
    routed = n(p["moe_layers"]["moe"]["routed_experts"]) if cfg.n_moe_layers else 0
    skipped = routed * (cfg.n_routed_experts - cfg.n_activated_experts) / cfg.n_routed_experts
    return n(main), n(mtp), n(main) - skipped - n(p["embed"])


@pytest.mark.parametrize("name", ["tiny", "small", "deepseek_v2_lite", "deepseek_v3"])
def test_config_file_builds(name):
    cd = load_config(name)
    assert set(cd.keys()) >= {"model", "train", "data", "mesh"}
    cfg = model_config(cd)
    p = abstract_params(cfg)
    assert p["embed"]["embedding"].shape == (cfg.vocab_size, cfg.dim)
    assert p["moe_layers"]["moe"]["routed_experts"]["w1"].shape == (
        cfg.n_moe_layers, cfg.n_routed_experts, cfg.dim, cfg.moe_inter_dim)


def test_deepseek_v3_parameter_counts():
    total, mtp, activated = counts(model_config(load_config("deepseek_v3")))
    assert abs(total / 671e9 - 1) < 0.005, total
    assert abs(mtp / 11.5e9 - 1) < 0.02, mtp
    assert abs(activated / 36.7e9 - 1) < 0.05, activated


def test_deepseek_v2_lite_parameter_counts():
    total, mtp, activated = counts(model_config(load_config("deepseek_v2_lite")))
    assert abs(total / 15.7e9 - 1) < 0.01, total
    assert mtp == 0
    assert abs(activated / 2.4e9 - 1) < 0.05, activated


def test_tiny_config_has_every_mechanism():
    cfg = model_config(load_config("tiny"))
    assert cfg.n_dense_layers >= 1 and cfg.n_moe_layers >= 1
    assert cfg.n_expert_groups > 1 and cfg.n_limited_groups < cfg.n_expert_groups
    assert cfg.n_shared_experts >= 1 and cfg.mtp_depth >= 1 and cfg.q_lora_rank > 0 and cfg.yarn_active


def test_bad_config_file_override_names_field():
    cd = load_config("tiny")
    cd.model.n_limited_groups = 9
    with pytest.raises(ValueError, match="n_limited_groups"):
        model_config(cd)
