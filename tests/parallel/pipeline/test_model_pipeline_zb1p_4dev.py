"""ZB1P on 4 fake CPU devices with the tiny DeepSeek-V3's blocks as stages
(4 stages of 2 blocks: 1 dense + 7 MoE layers; embedding on the first stage; norm, head, MTP and loss on the
last), chunks 8 and 10 (the second with stored vjp residuals): the loss equals the unpipelined model's, the gradients
match jax.grad of it (DualPipe's metric < 1e-10), the expert counts are equal. Float32: see model_checks.py."""

from tests.parallel.pipeline.model_checks import check_rows, run_schedule


def test_zb1p_4dev_matches_unpipelined_model():
    check_rows(run_schedule("zb1p", 4, store_second=True), "zb1p", 4)
