"""Expert parallelism and ZeRO inside the pipeline, DualPipe on pipe=2 × fsdp=2 × expert=2 (8 fake
CPU devices): as test_model_pipeline_ep_4dev.py, with the state (params and the optimizer moment) sharded over
fsdp by parallel/layout.py outside the executor, where the optimizer update runs under GSPMD, and the batch
split over fsdp × expert inside it.
"""

from tests.parallel.pipeline.model_checks import check_ep_rows, run_rows

CASES = [("dualpipe", {"pipe": 2, "fsdp": 2, "expert": 2}, 4)]


def test_dualpipe_expert_parallel_zero_8dev_matches_unpipelined():
    rows = run_rows(f"step_cases({CASES!r}, batch_size=16, sgd=True, n_layers=2, n_dense_layers=0, "
                    f"moe_impl='ep')")
    check_ep_rows(rows, CASES)
