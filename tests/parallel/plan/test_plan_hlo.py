"""The planner's readers of XLA output (dsv3_jax/parallel/plan/): the HLO collective parser on a compiled program
with known collectives, trip counts and FLOPs (8 fake CPU devices), and the text-level pieces on hand-written
inputs: replica-group formats, conditionals and the pipeline's tick weights, XLA:CPU's bf16 upcasts, the SPMD
partitioner's rematerialization log, depth extrapolation, byte sizes and the CLI's errors."""

import json

import pytest

from dsv3_jax.cli import plan as cli
from dsv3_jax.parallel.plan import buffers, extrapolate, hardware, hlo, xla_log
from dsv3_jax.parallel.plan.measure import Measurement
from tests.conftest import run_with_devices

KNOWN = """
import json, jax, jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
from dsv3_jax.parallel.plan import hlo, measure
mesh = jax.make_mesh((2, 4), ("a", "b"), axis_types=(jax.sharding.AxisType.Explicit,) * 2)

def body(x, w):                                     # per device: x [16, 32], w [32, 32], float32
    def step(c, _):
        c = jnp.tanh(jax.lax.psum(c, "b"))                              # all-reduce over b (4)
        g = jnp.tanh(jax.lax.all_gather(c, "a", axis=0, tiled=True))    # all-gather over a (2): [32, 32]
        s = jnp.tanh(jax.lax.psum_scatter(g, "a", scatter_dimension=0, tiled=True))  # reduce-scatter: [16, 32]
        t = jnp.tanh(jax.lax.all_to_all(s, "b", 0, 0, tiled=True))      # all-to-all over b (4)
        p = jax.lax.ppermute(t, "a", [(0, 1), (1, 0)])                  # collective-permute
        return jnp.tanh(p @ w), None                                    # 2·16·32·32 FLOPs
    c, _ = jax.lax.scan(step, x, None, length=5)
    return c

fn = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P(("a", "b")), P()), out_specs=P(("a", "b"))))
x = jax.ShapeDtypeStruct((128, 32), jnp.float32, sharding=NamedSharding(mesh, P(("a", "b"))))
w = jax.ShapeDtypeStruct((32, 32), jnp.float32, sharding=NamedSharding(mesh, P()))
m = measure.measure("known", fn, (x, w))
print(json.dumps({"collectives": [measure.collective_dict(c) for c in m.collectives], "flops": m.flops,
                  "remats": m.remats, "temp": m.temp}))
"""


def test_collectives_of_a_known_program():
    out = json.loads(run_with_devices(KNOWN, 8).strip().splitlines()[-1])
    by_kind = {}
    for c in out["collectives"]:
        by_kind.setdefault(c["kind"], []).append(c)
    assert sorted(by_kind) == ["all-gather", "all-reduce", "all-to-all", "collective-permute", "reduce-scatter"]
    expect = {"all-reduce": (16 * 32 * 4, 4), "all-gather": (32 * 32 * 4, 2), "reduce-scatter": (32 * 32 * 4, 2),
              "all-to-all": (16 * 32 * 4, 4), "collective-permute": (16 * 32 * 4, 2)}
    for kind, (per_exec, group) in expect.items():
        (c,) = by_kind[kind]
        assert (c["bytes_per_execution"], c["executions"], c["group_size"]) == (per_exec, 5, group), c
        assert c["bytes"] == 5 * per_exec
    assert by_kind["all-reduce"][0]["wire_bytes"] == pytest.approx(5 * expect["all-reduce"][0] * 2 * 3 / 4)  # ring
    assert out["flops"] == 5 * 2 * 16 * 32 * 32  # the scan's 5 iterations, not its body once
    assert out["remats"] == []


HLO = """HloModule m, entry_computation_layout={()->f32[]}

%branch_a (p: f32[4,4]) -> f32[4,4] {
  %p = f32[4,4]{1,0} parameter(0)
  ROOT %ag = f32[4,4]{1,0} all-gather(%p), replica_groups=[2,4]<=[8], dimensions={0}
}

%branch_b (p.1: f32[4,4]) -> f32[4,4] {
  %p.1 = f32[4,4]{1,0} parameter(0)
  %ar = f32[4,4]{1,0} all-reduce(%p.1), replica_groups={{0,1},{2,3}}, to_apply=%add
  ROOT %ar2 = f32[4,4]{1,0} all-reduce(%ar), replica_groups={{0,1},{2,3}}, to_apply=%add
}

%fused_up (x: bf16[8,16]) -> f32[8,16] {
  %x = bf16[8,16]{1,0} parameter(0)
  ROOT %c = f32[8,16]{1,0} convert(%x)
}

%body (t: (s32[], f32[4,4], bf16[8,16])) -> (s32[], f32[4,4], bf16[8,16]) {
  %t = (s32[], f32[4,4]{1,0}, bf16[8,16]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%t), index=0
  %v = f32[4,4]{1,0} get-tuple-element(%t), index=1
  %h = bf16[8,16]{1,0} get-tuple-element(%t), index=2
  %sw = f32[4,4]{1,0} conditional(%i, %v, %v), branch_computations={%branch_a, %branch_b}
  %up = f32[8,16]{1,0} fusion(%h), kind=kLoop, calls=%fused_up
  %a2a = f32[8,16]{1,0} all-to-all(%up), replica_groups=mesh['x'=2,'y'=4] device_ids=([8]) {'y'}, dimensions={0}
  %d = f32[4,4]{1,0} dot(%sw, %v), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  ROOT %o = (s32[], f32[4,4]{1,0}, bf16[8,16]{1,0}) tuple(%i, %d, %h)
}

%cond (t.1: (s32[], f32[4,4], bf16[8,16])) -> pred[] {
  %t.1 = (s32[], f32[4,4]{1,0}, bf16[8,16]{1,0}) parameter(0)
  ROOT %lt = pred[] constant(true)
}

ENTRY %main () -> f32[] {
  %z = (s32[], f32[4,4]{1,0}, bf16[8,16]{1,0}) constant({...})
  %w = (s32[], f32[4,4]{1,0}, bf16[8,16]{1,0}) while(%z), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"10"}}
  ROOT %r = f32[] constant(0)
}
"""


def test_hlo_text_trip_counts_branches_groups_and_bf16_upcasts():
    cs, flops = hlo.analyze(HLO, 8)
    kinds = {(c.kind, c.count, c.group, c.bytes) for c in cs}
    # The conditional takes its most expensive branch (two all-reduces of 64 B) at each of the 10 trips.
    assert kinds == {("all-reduce", 10, 2, 64), ("all-to-all", 10, 4, 8 * 16 * 2)}  # a2a counted at bf16 size
    assert flops == 10 * 2 * 16 * 4
    # Pipeline tick weights: branch a 7 times, branch b 3 times instead of 10 x the larger.
    cs, _ = hlo.analyze(HLO, 8, ticks={"trip": 10, "counts": [7, 3]})
    got = sorted((c.kind, c.count) for c in cs)
    assert got == [("all-gather", 7), ("all-reduce", 3), ("all-reduce", 3), ("all-to-all", 10)]
    totals = hlo.totals(cs)
    assert totals["all-reduce"]["bytes"] == 2 * 3 * 64 and totals["all-gather"]["ops"] == 1
    with pytest.raises(ValueError, match="ENTRY"):
        hlo.parse("HloModule x")


REMAT_LOG = ("W1201 10:23:12.324010 10366 spmd_partitioner.cc:656] [SPMD] Involuntary full rematerialization. "
             "The compiler cannot go from sharding {devices=[64,1,1]<=[64]} to {devices=[1,1,8,8]<=[64] "
             "last_tile_dim_replicate} efficiently for HLO operation %add_any.247 = bf16[1,1024,7168]{2,1,0} "
             "add(%a, %b), sharding={devices=[64,1,1]<=[64]}, metadata={op_name=\"jit(train_step)/transpose("
             "jvp(DeepSeekV3))/DeepSeekV3.final_logits/norm/add_any\" stack_frame_id=939}. As the last resort, "
             "SPMD will replicate the tensor and then partition it to obtain the target sharding.")


def test_rematerialization_log_records():
    (r,) = xla_log.rematerializations("I1201 other line\n" + REMAT_LOG + "\n")
    assert r == {"op": "add_any.247", "shape": "bf16[1,1024,7168]", "from": "{devices=[64,1,1]<=[64]}",
                 "to": "{devices=[1,1,8,8]<=[64] last_tile_dim_replicate}",
                 "path": "jit(train_step)/transpose(jvp(DeepSeekV3))/DeepSeekV3.final_logits/norm/add_any"}


def test_buffer_reports():
    assignment = ("allocation 0: size 4096, parameter 1, shape |bf16[8,256]| at ShapeIndex {}:\n"
                  "allocation 1: size 900, preallocated-temp:\n"
                  " value: <7 wrapped_convert.3 @0> (size=8192,offset=0): f32[8,256]{1,0}\n"
                  " value: <8 dot.1 @0> (size=64,offset=8192): f32[4,4]{1,0}\n")
    big = buffers.largest(assignment, 5)
    assert big["arguments"][0] == {"bytes": 4096, "shape": "bf16[8,256]", "parameter": 1}
    assert [t["value"] for t in big["temps"]] == ["wrapped_convert.3", "dot.1"]
    live = "HloLiveRange\n  Live ranges at 12 (peak):\n    wrapped_convert.3{}: 8192 bytes (cumulative: 8192 bytes)\n" \
           "    dot.1{}: 64 bytes (cumulative: 8256 bytes)\n  Stack trace\n"
    peak = buffers.peak_values(live)
    assert peak == [("wrapped_convert.3", 8192), ("dot.1", 64)]
    assert buffers.cpu_upcasts(peak, big["value_shapes"], big["bf16_dims"]) == 8192


def _m(temp, flops, a2a):
    return Measurement("x", argument=100, output=100, temp=temp, alias=100, code=0, flops=flops, xla_flops=0.0,
                       collectives=[hlo.Collective("all-to-all", a2a, 1, 4, "a", "")], remats=[], compile_s=1.0)


def test_extrapolation_is_per_layer_deltas():
    ex = extrapolate.extrapolate(_m(1000, 10.0, 40), _m(1300, 14.0, 50), 1, 2, 58)
    assert ex["per_layer"]["temp"] == 300 and ex["memory"]["temp"] == 1000 + 57 * 300
    assert ex["flops"] == 10.0 + 57 * 4.0 and ex["collective_totals"]["all-to-all"]["bytes"] == 40 + 57 * 10
    assert ex["memory"]["total"] == 100 + 100 - 100 + ex["memory"]["temp"]
    with pytest.raises(ValueError, match="increasing depths"):
        extrapolate.extrapolate(_m(1, 1, 1), _m(1, 1, 1), 2, 2, 58)
    # V3 ZeRO-3 at 1 -> 2 MoE layers measured -12.8 GB of temps per layer: refused, not a negative plan
    with pytest.raises(ValueError, match=r"--layers=1: XLA's per-device temp, total bytes fall"):
        extrapolate.extrapolate(_m(2000, 10.0, 40), _m(1300, 14.0, 50), 1, 2, 58)


def test_sizes_and_cli_errors(capsys):
    assert hardware.parse_bytes("80GB") == 80e9 and hardware.parse_bytes("96 GiB") == 96 * 2**30
    with pytest.raises(ValueError, match="--device_memory"):
        hardware.parse_bytes("lots")
    with pytest.raises(ValueError, match="--accelerator"):
        hardware.accelerator("tpu9")
    assert cli.parse_mesh("fsdp=8,expert=8") == {"fsdp": 8, "expert": 8}
    with pytest.raises(ValueError, match="--mesh"):
        cli.parse_mesh("model=8")
    args = cli.parse_args(["--config=configs/tiny.py", "--mesh=data=1", "--config.model.n_layers=5"])
    assert cli.build_request(args)["config_overrides"] == ["--config.model.n_layers=5"]
    assert cli.main(["--config=configs/deepseek_v3.py", "--mesh=fsdp=8", "--program=pipeline"]) == 2
    assert "--program=pipeline needs a mesh with pipe > 1" in capsys.readouterr().err
    assert cli.main(["--config=configs/deepseek_v3.py", "--layers=2"]) == 2
    assert "--layers" in capsys.readouterr().err
