"""KV-cache bytes per token (Insights Table 1) and the TPOT bound (Insights §2.3.2): exact."""

from __future__ import annotations

import pytest
from analysis_reference import PAPER_KV_BYTES

from dsv3_jax.analysis import comparison_models as cm
from dsv3_jax.analysis import kv_cache, tpot


@pytest.mark.parametrize("model", sorted(PAPER_KV_BYTES))
def test_kv_bytes_exact(model):
    cfg = cm.paper_models()[model].cfg
    assert kv_cache.kv_bytes_per_token(cfg) == PAPER_KV_BYTES[model]
    assert kv_cache.kv_bytes_per_token(cfg) == cfg.kv_cache_bytes_per_token()  # agrees with ModelConfig


def test_kv_formulas_by_hand():
    assert kv_cache.mla_kv_bytes_per_token(61, 512, 64) == 61 * 576 * 2
    assert kv_cache.gqa_kv_bytes_per_token(80, 8, 128, 128) == 327_680
    assert kv_cache.mha_kv_bytes_per_token(2, 4, 8, 6, bytes_per_value=1) == 2 * 4 * 14
    v3 = cm.deepseek_v3().cfg
    assert kv_cache.kv_bytes_per_token(v3, mla_naive=True) == 61 * 128 * (192 + 128) * 2
    assert kv_cache.kv_bytes_per_token(v3, bytes_per_value=1) == 35_136
    mha = v3.replace(attention="mha")
    assert kv_cache.kv_bytes_per_token(mha) == 61 * 128 * 320 * 2


def test_kv_cache_scales_with_context():
    v3 = cm.deepseek_v3().cfg
    assert kv_cache.kv_cache_bytes(v3, 128 * 1024, batch=2) == 70_272 * 131072 * 2
    with pytest.raises(ValueError, match="context_len"):
        kv_cache.kv_cache_bytes(v3, -1)


def test_tpot_paper_numbers_exact():
    step = tpot.ep_comm_seconds(32, 9, 7000, 50e9)
    assert step == pytest.approx(120.96e-6, rel=1e-12)
    t50 = tpot.tpot_seconds(61, 32, 9, 7000, 50e9)
    t900 = tpot.tpot_seconds(61, 32, 9, 7000, 900e9)
    assert t50 == pytest.approx(61 * 241.92e-6, rel=1e-12)
    assert round(t50 * 1e3, 2) == 14.76 and round(t900 * 1e3, 2) == 0.82
    assert int(1 / t50) == 67 and round(1 / t900, -2) == 1200


def test_tpot_for_config_and_parameters():
    v3 = cm.deepseek_v3().cfg
    assert tpot.tpot_seconds_for_config(v3, 50e9, hidden=tpot.PAPER_HIDDEN) == pytest.approx(14.757e-3, abs=1e-6)
    assert tpot.tpot_seconds_for_config(v3, 50e9) == pytest.approx(61 * 2 * 3 * 32 * 9 * 7168 / 50e9)
    assert tpot.tpot_seconds(1, 1, 1, 1, 1.0, dispatch_bytes=1, combine_bytes=1, microbatches=1) == 2.0
    with pytest.raises(ValueError, match="bandwidth"):
        tpot.ep_comm_seconds(32, 9, 7000, 0)
