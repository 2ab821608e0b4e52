"""benchmarks/profile_step.py: the per-op times count leaf ops only (a cond's event spans its branch's ops)."""

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
