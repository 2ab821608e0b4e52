"""ZB1P on 8 fake CPU devices with the tiny DeepSeek-V3's blocks as stages
(8 stages of 2 blocks: 1 dense + 15 MoE layers; embedding on the first stage; norm, head, MTP and loss on the
last), chunks 16 and 18 (the second with stored vjp residuals): the loss equals the unpipelined model's, the gradients
match jax.grad of it (DualPipe's metric < 1e-10), the expert counts are equal. Float32: see model_checks.py."""

from tests.parallel.pipeline.model_checks import check_rows, run_schedule


def test_zb1p_8dev_matches_unpipelined_model():
    check_rows(run_schedule("zb1p", 8, store_second=True), "zb1p", 8)
