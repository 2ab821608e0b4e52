"""The layout of expert parallelism inside pipeline stages (parallel/pipeline/model_experts.py) and its
config errors; in-process, no devices needed (the numerics: test_model_pipeline_ep_{4,8}dev.py)."""

from types import SimpleNamespace

import jax
import pytest
from jax.sharding import PartitionSpec as P

from dsv3_jax.parallel.pipeline import executor
from dsv3_jax.parallel.pipeline.model_experts import param_axes
from dsv3_jax.train import pipeline_step
from tests.conftest import tiny_config

STAGE = {"dense": {"mlp": {"w1": 0}}, "moe": {"moe": {"gate": 0, "routed_experts": {"w1": 0, "w2": 0},
                                                      "shared_experts": {"w1": 0}}}}
SHARED = {"embed": {"embedding": 0}, "mtp_0": {"block": {"moe": {"routed_experts": {"w3": 0}}}}}


def test_only_routed_experts_are_split_over_the_expert_axis():
    specs = executor._specs(param_axes("expert"), "stage", STAGE, ("pipe",), ("data", "expert"))
    assert specs["moe"]["moe"]["routed_experts"] == {"w1": P("pipe", None, "expert"), "w2": P("pipe", None, "expert")}
    assert specs["moe"]["moe"]["gate"] == specs["moe"]["moe"]["shared_experts"]["w1"] == P("pipe")
    assert specs["dense"]["mlp"]["w1"] == P("pipe")
    shared = executor._specs(param_axes("expert"), "shared", SHARED, (), ("expert",))
    assert shared == {"embed": {"embedding": P()}, "mtp_0": {"block": {"moe": {"routed_experts": {"w3": P("expert")}}}}}


def test_split_over_a_non_batch_axis_is_refused():
    with pytest.raises(ValueError, match=r"routed_experts.*\['expert'\].*batch_axes \('data',\)"):
        executor._specs(param_axes("expert"), "stage", STAGE, ("pipe",), ("data",))


def test_expert_axes_only_with_ep_and_an_expert_axis():
    mesh = lambda x: jax.sharding.AbstractMesh((2, x), ("pipe", "expert"))
    assert pipeline_step._expert_parallel(tiny_config(moe_impl="ep"), mesh(1)) == (None, None)
    assert pipeline_step._expert_parallel(tiny_config(moe_impl="blocked"), mesh(2)) == (None, None)
    ctx, axes = pipeline_step._expert_parallel(tiny_config(moe_impl="ep"), mesh(2))
    assert ctx.manual and ctx.n_ranks == 2 and ctx.local_experts(8) == 4  # the stages hold E/X experts
    assert axes("shared", [jax.tree_util.DictKey("routed_experts")]) == ("expert",)
    with pytest.raises(ValueError, match="n_routed_experts=8 is not divisible by the mesh's expert axis size 3"):
        pipeline_step._expert_parallel(tiny_config(moe_impl="ep"), mesh(3))


def test_per_tensor_delayed_fp8_still_refused():
    with pytest.raises(ValueError, match="fp8='per_tensor_delayed'"):
        pipeline_step._check_model(SimpleNamespace(fp8="per_tensor_delayed", moe_impl="ep"))
