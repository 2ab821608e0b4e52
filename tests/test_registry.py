"""Registries (dsv3_jax/registry.py): one per implementation choice, owning its names; ModelConfig validates
against them; "auto" choices are resolved once at set-up; a new expert backend is one `register` call."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dsv3_jax
from dsv3_jax import registry
from dsv3_jax.config import ModelConfig
from dsv3_jax.layers.moe import dispatch, experts
from dsv3_jax.layers.resolve import resolve_config
from tests.conftest import tiny_config

FIELDS = {"score_func", "moe_impl", "ep_dispatch", "ep_payload", "ep_combine", "attention", "fp8", "remat"}


def test_every_choice_field_has_its_registry():
    assert FIELDS <= set(registry.CHOICES)
    assert set(registry.choice_fields()["moe_impl"]) == {"dense", "blocked", "ragged", "ep", "auto"}
    for field in FIELDS:
        assert getattr(ModelConfig(), field) in registry.CHOICES[field], field  # defaults are valid names


@pytest.mark.parametrize("field", sorted(FIELDS))
def test_unknown_names_are_errors_naming_the_field_and_the_choices(field):
    with pytest.raises(ValueError, match=rf"ModelConfig\.{field}: must be one of .*got 'nope'"):
        tiny_config(**{field: "nope"})


def test_cross_field_rules_run_with_the_registry():
    with pytest.raises(ValueError, match=r"ModelConfig\.moe_impl: FP8 experts use the grouped FP8 GEMM"):
        tiny_config(fp8="blockwise", moe_impl="blocked")
    with pytest.raises(ValueError, match=r"needs moe_impl in \['ragged', 'auto'\]"):
        tiny_config(fp8="per_tensor_delayed", moe_impl="ep")
    tiny_config(fp8="blockwise", moe_impl="ep")  # stateless FP8 through the EP exchange: fine


def test_auto_is_resolved_once_for_the_platform():
    cfg = tiny_config()
    assert cfg.moe_impl == "auto"
    assert resolve_config(cfg, "cpu").moe_impl == "blocked"
    assert resolve_config(cfg, "gpu").moe_impl == "ragged"
    assert resolve_config(cfg.replace(fp8="blockwise"), "cpu").moe_impl == "ragged"  # FP8 needs the grouped GEMM
    assert resolve_config(cfg.replace(moe_impl="dense"), "gpu").moe_impl == "dense"  # explicit choices stay
    with pytest.raises(ValueError, match="must be resolved before use"):
        experts.EXPERT_BACKENDS.get("auto")


def test_a_new_expert_backend_is_one_register_call():
    """Registering an implementation is all it takes: the config accepts the name and the model runs it."""
    calls = []

    def dense_again(x, weights, ex, w1, w2, w3, *, cfg, ctx, gmm):
        calls.append(x.shape)
        return dispatch.routed_experts_dense(x, weights, ex, w1, w2, w3, jnp.dtype(cfg.dtype)), None

    experts.EXPERT_BACKENDS.register("dense_again", experts.ExpertBackend(dense_again))
    try:
        cfg = tiny_config(moe_impl="dense_again")
        tokens = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 5)), jnp.int32)
        variables = dsv3_jax.DeepSeekV3(cfg).init(jax.random.key(0), tokens)
        got = dsv3_jax.DeepSeekV3(cfg).apply(variables, tokens).logits
        want = dsv3_jax.DeepSeekV3(cfg.replace(moe_impl="dense")).apply(variables, tokens).logits
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
        assert calls  # the new backend really ran
    finally:
        experts.EXPERT_BACKENDS._impls.pop("dense_again")
    with pytest.raises(ValueError, match="moe_impl"):
        tiny_config(moe_impl="dense_again")


def test_a_name_is_registered_once():
    with pytest.raises(ValueError, match="registered already"):
        experts.EXPERT_BACKENDS.register("dense", experts.ExpertBackend(None))
    with pytest.raises(RuntimeError, match="exists already"):
        registry.Registry("moe_impl", "a second expert registry")
