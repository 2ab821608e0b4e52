"""The training console (compile line, steady step lines with tok/s after compile, eval and checkpoint lines,
summary table, summary.json) and a jax.profiler trace of train.profile_steps that holds the model's named
scopes (issue 18: console output and profiling; throughput/MFU of the speed issue)."""

from __future__ import annotations

import glob
import json
import os
import re

import pytest

from dsv3_jax.train import throughput
from dsv3_jax.train.console import Console, duration
from dsv3_jax.train.loop import train
from tests.reliability.conftest import micro

SCOPES = (b"attention", b"router", b"dispatch", b"experts", b"combine", b"shared_experts", b"mtp")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("profiled") / "run")
    lines = []
    cd = micro(steps=4, log_every=2, eval_every=2, checkpoint_every=4, sample_tokens=4, profile_steps=(2, 3))
    summary = train(cd, workdir, log=lambda *a: lines.append(" ".join(map(str, a))), flops_per_token=1e6)
    return workdir, "\n".join(lines).splitlines(), summary


def test_trace_of_profile_steps_holds_the_named_scopes(run):
    workdir, lines, _ = run
    traces = glob.glob(os.path.join(workdir, "profile", "plugins", "profile", "*", "*.xplane.pb"))
    assert len(traces) == 1 and os.path.getsize(traces[0]) > 0
    data = open(traces[0], "rb").read()
    assert [s for s in SCOPES if s not in data] == []
    perfetto = glob.glob(os.path.join(workdir, "profile", "plugins", "profile", "*", "perfetto_trace.json.gz"))
    assert len(perfetto) == 1 and os.path.getsize(perfetto[0]) > 0
    assert any(line.startswith("profile: trace of steps 2-3 written to ") for line in lines)


def test_console_lines_and_summary(run):
    workdir, lines, summary = run
    text = "\n".join(lines)
    assert lines.index(next(l for l in lines if l.startswith("compiling the train step"))) < \
        lines.index(next(l for l in lines if l.startswith("train step ready in ")))
    steps = [l for l in lines if l.startswith("step ")]
    assert [l.split()[1] for l in steps] == ["2/4", "4/4"]
    assert all(re.search(r"loss \d+\.\d{4}  [\d,]+ tok/s [\d.e-]+ TFLOP/s MFU n/a  lr [\d.e+-]+  ETA ", l)
               for l in steps), steps
    evals = [l for l in lines if l.startswith("eval step ")]
    assert len(evals) == 2 and "incl. compile" in evals[0] and "incl. compile" not in evals[1]
    assert all("bits/byte, MTP acc " in l and "max/mean expert load " in l for l in evals)
    assert any(l.startswith("checkpoint step 4 saved: ") for l in lines)
    assert f"val bits/byte          {summary['val_bits_per_byte']:.3f}" in text
    assert "train throughput" in text and "(after compile;" in text and "greedy sample (4 tokens" in text
    saved = json.load(open(os.path.join(workdir, "summary.json")))
    assert saved["step"] == 4 and saved["val_bits_per_byte"] == pytest.approx(summary["val_bits_per_byte"])
    assert saved["train_tokens_per_second"] > 0 and "train_mfu" not in saved  # no peak known for a CPU
    rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl")) if '"kind": "train"' in l]
    assert [r["step"] for r in rows] == [2, 4]  # each logged step's rates (the compiling step 1 left out)
    assert all(r["tokens_per_second"] > 0 and r["tflops"] == pytest.approx(r["tokens_per_second"] * 1e6 / 1e12)
               and "mfu" not in r for r in rows)


def test_mfu_through_the_cli_uses_the_peak_table(tmp_path, monkeypatch):
    # The CLI passes analysis/hardware.py's peak of the device it runs on; pretend it is an H100.
    import dsv3_jax.analysis.hardware as hardware
    from dsv3_jax.cli import train as cli
    from dsv3_jax.train import loop

    seen = {}
    monkeypatch.setattr(hardware, "peak_flops", lambda kind, dtype: seen.setdefault("args", (kind, dtype)) and 989e12)
    monkeypatch.setattr(loop, "train", lambda exp, workdir, **kw: seen.update(kw) or {"step": 0})
    monkeypatch.setattr(cli, "setup_compile_cache", lambda args: None)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--config=configs/tiny.py", f"--workdir={tmp_path}"])
    assert exit_info.value.code == 0 and seen["args"] == ("cpu", "bf16") and seen["peak_flops"] == 989e12
    assert seen["flops_per_token"] == pytest.approx(6.4e6, rel=0.05)  # analysis/flops.py, with MTP


def test_step_timer_leaves_out_the_compile_and_mfu_uses_the_peak():
    timer = throughput.StepTimer(tokens_per_step=1000, flops_per_token=2e9, peak_tflops=989.0)
    for seconds in (0.5, 0.5):
        timer.record(seconds)
    assert timer.tokens_per_second() == 2000 and timer.tflops(2000) == pytest.approx(4.0)
    assert timer.mfu(2000) == pytest.approx(4.0 / 989.0)
    assert timer.rate_text(2000) == "2,000 tok/s 4 TFLOP/s MFU 0.4%"
    assert throughput.StepTimer(1000, 2e9, None).rate_text(2000) == "2,000 tok/s 4 TFLOP/s MFU n/a"  # a CPU
    console = Console(total=100, start=0, timer=timer, eval_every=50, evaluates=True, write=lambda s: None)
    console.eval_seconds = 3.0
    assert console.eta(10) == pytest.approx(90 * 0.5 + 2 * 3.0)  # two evals left (50, 100)
    assert duration(41.25) == "41.2 s" and duration(418) == "6m58s" and duration(3720) == "1h02m"
