"""benchmarks/profile_step.py: the per-op times count leaf ops only (a cond's event spans its branch's ops)."""

import glob

import pytest

from benchmarks import profile_step
from benchmarks.profile_step import APPROX, category, hlo_ops, leaf_times, op_info


def _event(name, ts, dur, ph="X"):
    return {"name": name, "ph": ph, "ts": ts, "dur": dur, "pid": 1, "tid": 7}


def test_leaf_times_leave_out_control_flow_and_runtime_events():
    # Two steps of: a fusion, then a cond whose branch runs a dot and a gather (1000 us = 1 ms).
    events = []
    for step in range(2):
        t = step * 100_000
        events += [_event("add_fusion.3", t, 2_000),
                   _event("cond.226", t + 3_000, 9_000),  # spans the two ops below
                   _event("ThunkExecutor::Execute", t + 3_000, 9_000),
                   _event("ynn_fusion.7", t + 3_100, 6_000),
                   _event("gather_bitcast_fusion.50", t + 9_200, 2_500),
                   _event("ThreadpoolListener::Region", t + 3_100, 5_000),
                   _event("SlinkyThreadPool::Await", t + 3_100, 800),
                   _event("PjitFunction(run_steps)", t, 30_000),  # the host's dispatch of the whole call
                   _event("CommonPjRtLoadedExecutable::ExecuteHelperOnSingleDevice", t, 29_000),
                   _event("end: ynn_fusion.7", t + 9_100, 100),
                   _event("while.4", t + 20_000, 1_000),
                   _event("call", t + 21_000, 1_000),
                   _event("cond.27.clone", t + 22_000, 1_000),  # a cloned computation's cond, as decoding has
                   _event("add_fusion.3", t, 0, ph="i")]  # an instant event: no duration
    times = leaf_times(events, steps=2)
    assert dict(times) == {"add_fusion.3": 2.0, "ynn_fusion.7": 6.0, "gather_bitcast_fusion.50": 2.5}
    assert sum(times.values()) == 10.5  # the cond's 9 ms are not counted on top of its branch's 8.5


def test_leaf_times_keep_fusions_whose_names_start_like_control_flow():
    times = leaf_times([_event("conditional_select_fusion.2", 0, 1_000), _event("call_bitcast_fusion", 0, 500)], 1)
    assert dict(times) == {"conditional_select_fusion.2": 1.0, "call_bitcast_fusion": 0.5}


HLO = """HloModule jit_run_steps, entry_computation_layout={()->f32[1,8]{1,0}}

%fused_computation.9 (param_0.9: f32[1,4], param_1.9: f32[8,4]) -> f32[1,8] {
  %param_0.9 = f32[1,4]{1,0} parameter(0)
  %param_1.9 = f32[8,4]{1,0} parameter(1)
  ROOT %dot.476 = f32[1,8]{1,0} dot(%param_0.9, %param_1.9), lhs_contracting_dims={1}, rhs_contracting_dims={1}
}

ENTRY %main (p: (f32[1,4], f32[4,8])) -> f32[1,8] {
  %p = (f32[1,4]{1,0}, f32[4,8]{1,0}) parameter(0)
  %get-tuple-element.3 = f32[4,8]{1,0} get-tuple-element(%p), index=1
  %get-tuple-element.2 = f32[1,4]{1,0} get-tuple-element(%p), index=0
  %multiply_fusion.1 = f32[1,4]{1,0} fusion(%get-tuple-element.2), kind=kLoop, calls=%f, metadata={op_name="jit(run_steps)/DeepSeekV3.final_logits/norm/mul"}
  %bitcast.5 = f32[1,4]{1,0} bitcast(%multiply_fusion.1)
  %dot.459 = f32[1,8]{1,0} dot(%bitcast.5, %get-tuple-element.3), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  %ynn_fusion.9 = f32[1,8]{1,0} fusion(%bitcast.5, %get-tuple-element.3), kind=kCustom, calls=%fused_computation.9
  ROOT %add.1 = f32[1,8]{1,0} add(%dot.459, %ynn_fusion.9), metadata={op_name="jit(run_steps)/moe_layers/attn/add"}
}
"""


def test_op_info_reads_metadata_and_falls_back_to_the_operands():
    ops = hlo_ops(HLO)
    assert op_info(ops, "add.1") == ("f32[1,8]{1,0}", "jit(run_steps)/moe_layers/attn/add")
    # No metadata of its own: the path of the first operand that has one, two operands deep here, marked.
    shape, path = op_info(ops, "dot.459")
    assert shape == "f32[1,8]{1,0}" and path == APPROX + "jit(run_steps)/DeepSeekV3.final_logits/norm/mul"
    assert category(path) == "forward head"  # the final norm's consumer: the output projection
    assert op_info(ops, "dot.476") == ("f32[1,8]{1,0}", "")  # a fused computation's parameters: no path
    assert op_info(ops, "nowhere") == ("", "")
    assert op_info(ops, "p")[1] == ""


BRANCH_HLO = """HloModule jit_run_steps

%branch_0 (b: (f32[1,4], f32[4,8])) -> f32[1,8] {
  %b = (f32[1,4]{1,0}, f32[4,8]{1,0}) parameter(0)
  %get-tuple-element.7 = f32[1,4]{1,0} get-tuple-element(%b), index=0
  %get-tuple-element.8 = f32[4,8]{1,0} get-tuple-element(%b), index=1
  ROOT %dot.745 = f32[1,8]{1,0} dot(%get-tuple-element.7, %get-tuple-element.8), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

ENTRY %main (i: s32[], p: (f32[1,4], f32[4,8])) -> f32[1,8] {
  %i = s32[] parameter(0)
  %p = (f32[1,4]{1,0}, f32[4,8]{1,0}) parameter(1)
  ROOT %cond.3 = f32[1,8]{1,0} conditional(%i, %p), branch_computations={%branch_0}, metadata={op_name="jit(run_steps)/moe_layers/moe/routed_experts/experts/switch_case"}
}
"""


def test_op_info_gives_a_branch_op_its_conditional_path():
    # The products inside a lone token's expert switches (layers/moe/block_switch.py) lose their metadata; their
    # operands are the branch's parameters, which have none either, so the conditional's path is theirs.
    ops = hlo_ops(BRANCH_HLO)
    shape, path = op_info(ops, "dot.745")
    assert shape == "f32[1,8]{1,0}" and path == APPROX + "jit(run_steps)/moe_layers/moe/routed_experts/experts/switch_case"
    assert category(path) == "forward routed_experts"


def test_every_op_of_a_batch_1_loop_has_a_path(tmp_path):
    # At batch 1 XLA rewrites dots (a lone row: matrix-vector products) and drops their metadata; before the
    # operand fallback about half of a batch-1 step's op time was "unlabeled". Every dot and every fusion that
    # reads an array (not a constant generator such as an iota, which may have no op_name anywhere) of the tiny
    # model's loop program maps to a model path now.
    _, hlo, _, _ = profile_step.trace_decode("tiny", 1, 3, 1, str(tmp_path))
    ops = hlo_ops(hlo)
    entry = [n for n, line in ops.lines.items() if (" dot(" in line or " fusion(%" in line)
             and "(%param_" not in line]  # not the dots inside fused computations
    assert len(entry) > 20
    unlabeled = [n for n in entry if not op_info(ops, n)[1]]
    assert not unlabeled, unlabeled[:10]


def test_trace_decode_traces_the_loop_program(tmp_path):
    # Two loops of new - 1 = 2 steps each, traced after their prefill; the HLO is the loop program's.
    trace_dir, hlo, steps, wall = profile_step.trace_decode("tiny", 2, 3, 2, str(tmp_path))
    assert steps == 4 and wall > 0
    assert "jit_run_steps" in hlo.splitlines()[0] and "while" in hlo
    assert glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)


def test_decode_profile_prints_the_loop_ops(capsys):
    # The --decode mode end to end (trace conversion needs xprof, the viz extra).
    pytest.importorskip("xprof")
    profile_step.main(["--size", "tiny", "--decode", "2", "--new", "3", "--steps", "1", "--top", "50"])
    out = capsys.readouterr().out
    assert out.startswith("decoding step at batch 2: ops total ")
    assert "ms wall per step, untraced" in out
    assert "/attn/" in out and "forward routed_experts" in out  # ops mapped to the model's paths
    for runtime in ("PjitFunction", "CommonPjRt", "SlinkyThreadPool", "ParseArguments"):
        assert runtime not in out


def test_decode_profile_needs_a_loop_step():
    with pytest.raises(ValueError, match="--new"):
        profile_step.trace_decode("tiny", 2, 1, 1, "/nonexistent")
