"""FP8 checkpoints kept FP8 (from_pretrained(keep_fp8=True)): e4m3 kernels + 128x128 scales on the device, run
by the weight-only blockwise FP8 matmul (quant/fp8_weight.py, through layers/linear.py), give the dequantized
checkpoint's logits within bf16 tolerance, and decode (latent cache: the absorbed path multiplies wkv_b's
dequantized blocks) to the same greedy tokens."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dsv3_jax
from dsv3_jax.infer import generate
from dsv3_jax.quant import FP8Weight, quantize_blocks, weight_only_matmul, weight_only_ragged_dot
from tests.interop.conftest import tiny_v3
from tests.interop.test_interop_fp8 import FP8_CFG, _fp8_checkpoint


@pytest.mark.parametrize("k,n", [(300, 200), (128, 256), (100, 50)])
def test_weight_only_matmul_is_the_dequantized_product(k, n):
    rng = np.random.default_rng(k)
    w = FP8Weight(*quantize_blocks(jnp.asarray(rng.standard_normal((k, n)), jnp.float32)))
    x = jnp.asarray(rng.standard_normal((2, 3, k)), jnp.float32)
    want = np.asarray(x) @ np.asarray(w.dequantize())
    got = weight_only_matmul(x, w, jnp.float32)
    assert got.shape == (2, 3, n)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4 * np.abs(want).max())
    sizes = jnp.asarray([2, 0, 3])  # 5 of 6 rows belong to experts: the last one is zero, as ragged_dot's
    ws = FP8Weight(*quantize_blocks(jnp.asarray(rng.standard_normal((3, k, n)), jnp.float32)))
    rows = x.reshape(6, k)
    want = jax.lax.ragged_dot(rows, ws.dequantize(), sizes)
    np.testing.assert_allclose(weight_only_ragged_dot(rows, ws, sizes, jnp.float32), want, rtol=1e-5,
                               atol=1e-4 * float(jnp.abs(want).max()))


@pytest.fixture(scope="module")
def fp8_dir(tmp_path_factory):
    return _fp8_checkpoint(tmp_path_factory.mktemp("fp8"), tiny_v3(**FP8_CFG))[0]


def test_kept_fp8_logits_and_decoding_match_dequantized(fp8_dir):
    cfg, kept, _ = dsv3_jax.from_pretrained(fp8_dir, keep_fp8=True, tokenizer=False)
    cfg_d, dequantized, _ = dsv3_jax.from_pretrained(fp8_dir, tokenizer=False)
    assert cfg.moe_impl == "ragged" and cfg_d.moe_impl == "auto"  # FP8 experts take the grouped GEMM
    w1 = kept["params"]["moe_layers"]["moe"]["routed_experts"]["w1"]
    assert isinstance(w1, FP8Weight) and w1.value.dtype == jnp.float8_e4m3fn and w1.scale_inv.shape == (1, 4, 2, 2)
    assert not isinstance(kept["params"]["head"]["kernel"], FP8Weight)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 12)), jnp.int32)
    logits = lambda c, v: np.asarray(jax.jit(lambda v, t: dsv3_jax.DeepSeekV3(c).apply(v, t).logits)(v, tokens))
    for dtype in ("float32", "bfloat16"):
        a, b = logits(cfg.replace(dtype=dtype), kept), logits(cfg_d.replace(dtype=dtype), dequantized)
        tol = (1e-5 if dtype == "float32" else 2.0**-7) * np.abs(b).max()  # bf16: 8 mantissa bits
        assert np.abs(a - b).max() <= tol, (dtype, np.abs(a - b).max(), np.abs(b).max())
    prompts = [list(map(int, tokens[0, :5])), list(map(int, tokens[1, :3]))]
    got = generate(cfg, kept, prompts, max_new_tokens=4).sequences()
    want = generate(cfg_d, dequantized, prompts, max_new_tokens=4).sequences()
    assert [list(x) for x in got] == [list(x) for x in want]
    with pytest.raises(ValueError, match="fp8='blockwise' with FP8Weight kernels"):
        jax.eval_shape(lambda v: dsv3_jax.DeepSeekV3(cfg.replace(fp8="blockwise")).apply(v, tokens), kept)
