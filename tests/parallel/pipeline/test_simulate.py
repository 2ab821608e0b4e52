"""Simulator: bubble = published formulas (DualPipe README / V3 report Table 2), memory, dependencies, CLI."""

import json

import pytest

from dsv3_jax.parallel.pipeline import Op, Schedule, make_schedule
from dsv3_jax.cli.pipeline_sim import main, run_cli
from dsv3_jax.parallel.pipeline.simulate import Durations, simulate

# Published table, written out independently of formulas.py.
BUBBLE = {
    "1f1b": lambda pp, f, b, w, fb: (pp - 1) * (f + b),
    "zb1p": lambda pp, f, b, w, fb: (pp - 1) * (f + b - 2 * w),
    "dualpipe": lambda pp, f, b, w, fb: (pp / 2 - 1) * (fb + b - 3 * w),
    "dualpipev": lambda pp, f, b, w, fb: (pp / 2 - 1) * (fb + b - 3 * w),
}
ACTIVATIONS = {"1f1b": lambda pp: pp, "zb1p": lambda pp: pp, "dualpipe": lambda pp: pp + 1,
               "dualpipev": lambda pp: pp + 1}
PARAMS = {"1f1b": 1, "zb1p": 1, "dualpipe": 2, "dualpipev": 2}
# (f, b, w, fb) with B - W == F and W <= F and max(F, B) <= F&B <= F + B (the formulas' premise).
DURATIONS = [(1, 2, 1, 2.5), (1, 2, 1, 3), (1, 2, 1, 2), (1.13, 1.61, 0.48, 2.2), (3, 4, 1, 6), (1, 1, 0, 1)]


def _chunks(name, pp):
    if name == "dualpipe":
        return (2 * pp, 2 * pp + 2, 3 * pp)
    return (pp, pp + 1, 2 * pp + 3)


CASES = [(n, pp, c) for n in BUBBLE for pp in (2, 4, 8, 16) for c in _chunks(n, pp)]


@pytest.mark.parametrize("name,pp,chunks", CASES)
def test_bubble_equals_published_formula(name, pp, chunks):
    s = make_schedule(name, pp, chunks)
    for f, b, w, fb in DURATIONS:
        tl = simulate(s, Durations(f, b, w, fb))
        assert tl.bubble == pytest.approx(BUBBLE[name](pp, f, b, w, fb), abs=1e-9), (f, b, w, fb)
        assert tl.bubble == pytest.approx(max(tl.makespan - x for x in tl.busy), abs=1e-12)


@pytest.mark.parametrize("pp,chunks", [(2, 2), (4, 5), (8, 13), (16, 16)])
def test_zb1p_formula_holds_when_input_backward_is_longer(pp, chunks):
    """ZB1P is exact for W <= F <= B - W, e.g. Insights Table 4 times (F 1.13, B 1.99, W 0.48)."""
    for f, b, w in [(1.13, 1.99, 0.48), (1, 3, 1), (2, 2.5, 0.5), (1, 5, 0)]:
        tl = simulate(make_schedule("zb1p", pp, chunks), Durations(f, b, w))
        assert tl.idle == pytest.approx([(pp - 1) * (f + b - 2 * w)] * pp)


@pytest.mark.parametrize("pp,chunks", [(2, 3), (4, 4), (8, 13)])
def test_1f1b_formula_holds_for_any_durations(pp, chunks):
    for f, b in [(1, 1), (1, 3), (2.5, 1), (1.13, 1.99)]:
        tl = simulate(make_schedule("1f1b", pp, chunks), Durations(f, b, 0))
        assert tl.idle == pytest.approx([(pp - 1) * (f + b)] * pp)


@pytest.mark.parametrize("name,pp,chunks", CASES)
def test_memory_matches_table(name, pp, chunks):
    tl = simulate(make_schedule(name, pp, chunks), Durations(1, 2, 1, 2.5))
    assert max(tl.peak_activations) == ACTIVATIONS[name](pp)
    assert tl.param_copies == PARAMS[name]


def test_hand_computed_1f1b_timeline():
    """PP 2, 2 micro-batches, F 1, B 2: rank 1 runs F0 1-2, B0 2-4, F1 4-5, B1 5-7; rank 0 ends with B1 7-9."""
    tl = simulate(make_schedule("1f1b", 2, 2), Durations(1, 2, 0))
    assert [(e.start, e.end) for e in tl.entries[0]] == [(0, 1), (1, 2), (4, 6), (7, 9)]
    assert [(e.start, e.end) for e in tl.entries[1]] == [(1, 2), (2, 4), (4, 5), (5, 7)]
    assert tl.makespan == 9 and tl.busy == (6, 6) and tl.bubble == 3


@pytest.mark.parametrize("name,pp,chunks", [("zb1p", 4, 7), ("dualpipe", 8, 18), ("dualpipev", 8, 9)])
def test_timeline_respects_dependencies(name, pp, chunks):
    s = make_schedule(name, pp, chunks)
    tl = simulate(s, Durations(1.13, 1.99, 0.48, 2.9))
    end = {}
    for entries in tl.entries:
        for prev, e in zip(entries, entries[1:]):
            assert prev.end <= e.start + 1e-12          # one op at a time per rank, in list order
        for e in entries:
            halves = [("F", e.op.mb, e.op.stage), ("B", e.op.b_mb, e.op.b_stage)] if e.op.kind == "FB" else \
                [(e.op.kind, e.op.mb, e.op.stage)]
            for h in halves:
                end[h] = (e.start, e.end)
    for (kind, mb, st), (start, _) in end.items():
        needs = {"F": [("F", mb, st - 1)] if st else [],
                 "B": [("F", mb, st)] + ([("B", mb, st + 1)] if st < s.num_stages - 1 else []),
                 "W": [("B", mb, st)]}[kind]
        for n in needs:
            assert end[n][1] <= start + 1e-12, ((kind, mb, st), n)


def test_formula_is_approximate_outside_its_premise():
    """Insights Table 4 durations (B - W != F): the simulator gives the schedule's exact bubble instead."""
    out = run_cli(["--schedule", "dualpipe", "--pp", "8", "--chunks", "20", "--f", "1.13", "--b", "1.99",
                "--w", "0.48"])
    assert out["formula_assumptions_hold"] is False
    assert out["bubble"] != pytest.approx(out["formula_bubble"])


def test_cli_prints_json(capsys):
    main(["--schedule", "dualpipe", "--pp", "8", "--chunks", "20", "--f", "1", "--b", "2", "--w", "1",
          "--fb", "2.5"])
    out = json.loads(capsys.readouterr().out)
    assert {"bubble", "formula_bubble", "peak_activations", "param_copies", "makespan"} <= set(out)
    assert out["bubble"] == out["formula_bubble"] == 4.5
    assert (out["peak_activations"], out["param_copies"], out["devices"]) == (9, 2, 8)


def test_cli_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = tmp_path / "t.png"
    main(["--schedule", "dualpipev", "--pp", "4", "--chunks", "5", "--plot", str(path)])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        main(["--schedule", "dualpipe", "--pp", "8", "--chunks", "15"])
    assert "chunks must" in capsys.readouterr().err


def test_bad_durations_and_deadlock():
    with pytest.raises(ValueError, match="Durations.f must"):
        Durations(-1, 2, 1)
    with pytest.raises(ValueError, match="Durations.w must"):
        Durations(1, 1, 2)
    stuck = Schedule("stuck", 2, 2, 1, "linear", ((Op("B", 0, 0), Op("F", 0, 0)), (Op("F", 0, 1), Op("B", 0, 1))))
    with pytest.raises(ValueError, match="deadlocks"):
        simulate(stuck, Durations.unit())
