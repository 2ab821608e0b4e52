"""Expert parallelism inside the pipeline stages, DualPipe on pipe=2 × expert=2 (4 fake CPU devices).

moe_impl="ep": each stage's routed experts (and the MTP module's) are split over the expert axis inside the
executor's shard_map and the MoE layers exchange tokens by all_to_all over it (parallel/pipeline/
model_experts.py). One train step of a tiny DeepSeek-V3 (2 MoE layers + 1 MTP module, batch 16, 4
micro-batches) with SGD+momentum (lr 1: the momentum after one step is the gradient) against the unpipelined
single-device step: loss terms and grad norm to 1e-6, every gradient leaf to 1e-5 of its largest entry
(measured ~1e-6), DualPipe's metric < 1e-10 (measured ~8e-14), the moments sharded over `expert`.
"""

from tests.parallel.pipeline.model_checks import check_ep_rows, run_rows

CASES = [("dualpipe", {"pipe": 2, "expert": 2}, 4)]


def test_dualpipe_expert_parallel_4dev_matches_unpipelined():
    rows = run_rows(f"step_cases({CASES!r}, batch_size=16, sgd=True, n_layers=2, n_dense_layers=0, "
                    f"moe_impl='ep')")
    check_ep_rows(rows, CASES)
