"""infer/cpu_dots.py: where the small-forward library is Eigen, forwards over at most SMALL_FORWARD_TOKENS tokens
compile without YNNPACK on the CPU (the compiled HLO has no YNNPACK fusion) and larger ones with XLA's defaults;
where it is YNNPACK, all keep the defaults. The library follows the host's ISA (AVX2 without AVX-512: Eigen) or
DSV3_CPU_SMALL_DOTS; inside another jit it is that jit's part; every variant computes the same numbers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsv3_jax.infer import cpu_dots
from dsv3_jax.infer.cpu_dots import OVERRIDE, SMALL_FORWARD_TOKENS, small_forward_library, tokens_jit


@pytest.fixture
def eigen(monkeypatch):
    monkeypatch.setenv(OVERRIDE, "eigen")


@tokens_jit(lambda x, w: x[:, 0], donate_argnames=())
def _project(x, w):
    return jax.nn.silu(x @ w)


def _hlo(x, w):
    return _project.lower(x, w).compile().as_text()


def _inputs(tokens):
    rng = np.random.default_rng(tokens)
    return (jnp.asarray(rng.standard_normal((tokens, 256)), jnp.float32),
            jnp.asarray(rng.standard_normal((256, 512)) / 16, jnp.float32))


def test_small_forwards_compile_without_ynnpack(eigen):
    assert jax.default_backend() == "cpu"
    assert "__ynn_fusion" not in _hlo(*_inputs(SMALL_FORWARD_TOKENS))
    assert "__ynn_fusion" in _hlo(*_inputs(SMALL_FORWARD_TOKENS + 1))  # XLA:CPU's default hands the dot to YNNPACK


def test_small_forwards_keep_ynnpack_where_it_is_chosen(monkeypatch):
    monkeypatch.setenv(OVERRIDE, " YNNPACK ")  # case and surrounding spaces do not matter
    assert "__ynn_fusion" in _hlo(*_inputs(SMALL_FORWARD_TOKENS))


def test_library_follows_the_isa(monkeypatch):
    monkeypatch.delenv(OVERRIDE, raising=False)
    assert small_forward_library({"AVX2": True, "AVX512F": False}) == "eigen"  # measured: Zen 2
    assert small_forward_library({"AVX2": True, "AVX512F": True}) == "ynnpack"  # measured: Zen 4
    assert small_forward_library({"ASIMD": True}) == "ynnpack"  # not x86: XLA's default
    assert small_forward_library({}) == "ynnpack"
    host = cpu_dots.host_cpu_features()
    assert isinstance(host, dict)
    if jax.default_backend() == "cpu" and "AVX2" in host:  # numpy saw an x86 host
        assert small_forward_library() == ("eigen" if host["AVX2"] and not host.get("AVX512F") else "ynnpack")


def test_override_is_checked(monkeypatch):
    monkeypatch.setenv(OVERRIDE, "eigen")
    assert small_forward_library({"AVX2": True, "AVX512F": True}) == "eigen"
    monkeypatch.setenv(OVERRIDE, "mkl")
    with pytest.raises(ValueError, match="DSV3_CPU_SMALL_DOTS='mkl': expected one of eigen, ynnpack"):
        small_forward_library()


@tokens_jit(lambda a, b, w: (a[:, 0], b[:, 0]))
def _two_parts(a, b, w):
    return jnp.concatenate([a, b]) @ w


def test_jitted_is_the_plain_program_for_export():
    x, w = _inputs(8)
    text = jax.export.export(_project.jitted, platforms=["cuda"])(x, w).mlir_module()
    assert "dot_general" in text


def test_token_parts_count_together(eigen):
    half = SMALL_FORWARD_TOKENS // 2
    (a, w), (b, _) = _inputs(half), _inputs(half + 1)
    assert "__ynn_fusion" not in _two_parts.lower(a, a, w).compile().as_text()  # 2·half tokens
    assert "__ynn_fusion" in _two_parts.lower(a, b, w).compile().as_text()  # one more


def test_same_numbers_either_way_and_inside_jit():
    x, w = _inputs(8)
    small = _project(x, w)
    np.testing.assert_allclose(np.asarray(small), np.asarray(jax.nn.silu(x @ w)), rtol=1e-5, atol=1e-5)
    nested = jax.jit(lambda x, w: _project(x, w) * 2.0)(x, w)  # no compiler options on a nested jit
    np.testing.assert_allclose(np.asarray(nested), 2.0 * np.asarray(small), rtol=1e-5, atol=1e-5)


def test_decode_loop_compiles_without_ynnpack(eigen):
    from dsv3_jax.config import ModelConfig
    from dsv3_jax.infer.cache import init_cache
    from dsv3_jax.infer.generate import LoopState, run_steps
    from dsv3_jax.infer.emit import Emitted
    from dsv3_jax.infer.sampling import SamplingParams
    from dsv3_jax.model import DeepSeekV3
    cfg = ModelConfig(vocab_size=64, dim=32, inter_dim=64, moe_inter_dim=16, n_layers=2, n_dense_layers=1,
                      n_heads=2, n_routed_experts=4, n_activated_experts=2, n_expert_groups=1, n_limited_groups=1,
                      q_lora_rank=0, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8,
                      max_seq_len=32, original_seq_len=32, mtp_depth=0, dtype="float32")
    variables = jax.jit(DeepSeekV3(cfg).init)(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    state = LoopState(cache=init_cache(cfg, 2, 16), token=jnp.zeros((2,), jnp.int32),
                      out=Emitted.empty(2, 4, 0), rng=jax.random.key(1))
    hlo = run_steps.lower(cfg, variables, state, 3, SamplingParams(), jnp.asarray([-1], jnp.int32))
    assert "__ynn_fusion" not in hlo.compile().as_text()
