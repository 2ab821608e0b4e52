"""benchmarks/profile_step.py: the per-op times count leaf ops only (a cond's event spans its branch's ops)."""

import glob

import pytest

from benchmarks import profile_step
from benchmarks.profile_step import leaf_times


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
