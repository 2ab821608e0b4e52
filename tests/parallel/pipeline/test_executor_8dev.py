"""shard_map executor on 8 fake CPU devices: every schedule, chunks 16 and 18 (see test_executor.py)."""

import pytest

from tests.parallel.pipeline.test_executor import check_loss_and_grads, check_ticks, run_cases


@pytest.fixture(scope="module")
def results():
    return 8, run_cases(8)


def test_loss_and_grads_match_unpipelined(results):
    check_loss_and_grads(*results)


def test_executed_ticks_match_simulator(results):
    check_ticks(results[1])
