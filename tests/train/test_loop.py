import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from dsv3_jax.train.checkpoint import Checkpointer
from dsv3_jax.train.loop import NonFiniteError, train
from tests.conftest import REPO
from tests.train.helpers import micro_experiment


def _losses(workdir):
    rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
    return {r["step"]: r["loss"] for r in rows if r["kind"] == "train"}


def test_train_writes_metrics_checkpoints_and_config(tmp_path):
    cd = micro_experiment(steps=4, checkpoint_every=2)
    summary = train(cd, str(tmp_path), log=lambda *a: None)
    assert summary["step"] == 4
    assert 0 < summary["val_bits_per_byte"] < 20 and 0 <= summary["val_mtp_acc"] <= 1
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]
    assert json.load(open(tmp_path / "config.json"))["model"]["dim"] == cd.model.dim
    assert sorted(_losses(tmp_path)) == [1, 2, 3, 4]
    assert os.listdir(tmp_path / "tensorboard")
    # Resuming a finished run is a no-op that keeps the step.
    assert train(cd, str(tmp_path), log=lambda *a: None)["step"] == 4


RUN = """
import sys
from tests.train.helpers import micro_experiment
from dsv3_jax.train.loop import train
cd = micro_experiment(steps=int(sys.argv[1]), checkpoint_every=int(sys.argv[2]), eval_every=1000)
summary = train(cd, sys.argv[3], log=lambda *a: None)
print(summary.get("interrupted", "done"))
"""


def _spawn(steps, every, workdir):
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    return subprocess.Popen([sys.executable, "-c", RUN, str(steps), str(every), workdir], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_resume_after_kill_9_is_exact(tmp_path):
    steps, every = 40, 5
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    p = _spawn(steps, every, straight)
    assert p.wait(timeout=600) == 0, p.stderr.read()
    victim = _spawn(steps, every, resumed)
    deadline = time.time() + 300
    try:  # kill -9 once a checkpoint exists and a few steps beyond it were taken
        while time.time() < deadline:
            done = os.path.exists(os.path.join(resumed, "metrics.jsonl")) and max(_losses(resumed) or [0])
            if done and done >= every + 2:
                break
            time.sleep(0.01)
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait()
    killed_at = max(_losses(resumed))
    assert killed_at < steps, "the run finished before it could be killed"
    p = _spawn(steps, every, resumed)
    assert p.wait(timeout=600) == 0, p.stderr.read()
    a, b = _losses(straight), _losses(resumed)
    rows = [json.loads(line) for line in open(os.path.join(resumed, "metrics.jsonl"))]
    assert [r["step"] for r in rows if r["kind"] == "train"] == list(range(1, steps + 1))  # each step once
    np.testing.assert_array_equal([a[s] for s in range(1, steps + 1)], [b[s] for s in range(1, steps + 1)])


def test_non_finite_update_stops_and_keeps_no_bad_checkpoint(tmp_path):
    # lr 1e30: step 1 is finite but leaves parameters whose gradient at step 2 is NaN whatever the lr, so
    # checkpoint 1 is moved aside as well (tests/reliability/test_nonfinite_probes.py has the details).
    cd = micro_experiment(steps=6, checkpoint_every=1, lr=1e30, warmup_steps=1, grad_clip=1e30)
    with pytest.raises(NonFiniteError, match=r"non-finite update at step 2 .*grad_norm=nan.*Checkpoint 1, whose "
                                             r"next step this was, .*There is no good checkpoint yet"):
        train(cd, str(tmp_path), log=lambda *a: None)
    assert Checkpointer(str(tmp_path)).steps() == []
    assert os.listdir(tmp_path / "rejected_checkpoints") == ["1"]


def test_seq_len_above_max_positions_is_an_error(tmp_path):
    cd = micro_experiment(seq_len=100)
    cd.model.max_seq_len = 64
    with pytest.raises(ValueError, match="100.*64|64.*100"):
        train(cd, str(tmp_path), log=lambda *a: None)


def test_cli_reports_bad_input_clearly(tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", "dsv3_jax.train", "--config=configs/tiny.py",
                           f"--workdir={tmp_path}", "--config.data.source=files",
                           f"--config.data.path={tmp_path}/nothing_*.txt"],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 1
    assert "dsv3-train: error:" in proc.stderr and "nothing_*.txt" in proc.stderr


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    workdir = str(tmp_path / "run")
    proc = _spawn(400, 1000, workdir)  # no periodic checkpoint would happen before step 1000
    out = ""
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            if os.path.exists(os.path.join(workdir, "metrics.jsonl")) and max(_losses(workdir) or [0]) >= 3:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
    saved = [int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit()]
    assert saved == [max(_losses(workdir))] and saved[0] < 400
    assert out.strip().splitlines()[-1] == "SIGTERM"  # train() reports the interruption
