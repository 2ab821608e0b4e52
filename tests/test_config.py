import math

import pytest

from dsv3_jax.config import ModelConfig
from tests.conftest import tiny_config


def test_v3_defaults_and_derived_sizes():
    c = ModelConfig()
    assert c.qk_head_dim == 192
    assert c.n_moe_layers == 58
    assert c.experts_per_group == 32
    # docs/paper.md §2: V3 softmax scale 0.135234 (192^-0.5 · (0.1 ln 40 + 1)²), 70,272 B KV cache per token.
    assert math.isclose(c.softmax_scale, 0.135234, abs_tol=5e-7)
    assert c.kv_cache_bytes_per_token() == 61 * 576 * 2 == 70272


def test_v2_lite_scale():
    c = ModelConfig(mscale=0.707)
    assert math.isclose(c.softmax_scale, 0.114721, abs_tol=5e-7)


def test_no_yarn_scale():
    c = tiny_config(max_seq_len=16, original_seq_len=16)
    assert not c.yarn_active
    assert c.softmax_scale == pytest.approx(12 ** -0.5)


@pytest.mark.parametrize("changes, field", [
    (dict(n_limited_groups=5), "n_limited_groups"),  # topk_groups > n_groups
    (dict(n_routed_experts=10), "n_routed_experts"),  # not divisible by 4 groups
    (dict(n_activated_experts=5), "n_activated_experts"),  # > 2 experts/group x 2 kept groups
    (dict(qk_rope_head_dim=5), "qk_rope_head_dim"),  # odd rope dim
    (dict(score_func="relu"), "score_func"),
    (dict(attention="linear"), "attention"),
    (dict(dtype="int8"), "dtype"),
    (dict(n_dense_layers=4), "n_dense_layers"),
    (dict(dim=0), "dim"),
    (dict(remat="some"), "remat"),
    (dict(attention="gqa", n_kv_heads=3), "n_kv_heads"),
])
def test_validation_names_field(changes, field):
    with pytest.raises(ValueError, match=rf"ModelConfig\.{field}"):
        tiny_config(**changes)


def test_from_dict_rejects_unknown_field():
    d = tiny_config().to_dict()
    d["n_experts"] = 3
    with pytest.raises(ValueError, match="n_experts"):
        ModelConfig.from_dict(d)
    assert ModelConfig.from_dict(tiny_config().to_dict()) == tiny_config()


def test_frozen():
    with pytest.raises(Exception):
        tiny_config().dim = 3
