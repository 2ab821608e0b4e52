"""DualPipeV on 8 fake CPU devices with the tiny DeepSeek-V3's blocks as stages
(16 stages of 1 block: 1 dense + 15 MoE layers; embedding on the first stage; norm, head, MTP and loss on the
last), chunks 16 and 18: the loss equals the unpipelined model's, the gradients
match jax.grad of it (DualPipe's metric < 1e-10), the expert counts are equal. Float32: see model_checks.py."""

from tests.parallel.pipeline.model_checks import check_rows, run_schedule


def test_dualpipev_8dev_matches_unpipelined_model():
    check_rows(run_schedule("dualpipev", 8), "dualpipev", 8)
