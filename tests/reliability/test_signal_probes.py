"""Probes: SIGTERM/SIGINT finish the step, save a checkpoint, say so and exit 128 + signal (issue 15,
metrics and signals; the multi-host agreement is tests/test_multihost.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tests.conftest import REPO
from tests.reliability.conftest import train_steps


def test_sigterm_through_the_cli_saves_says_so_and_exits_143(tmp_path, config_file):
    # Landed code: exit 0 and no "interrupted" line (a scheduler could not tell it from a finished run).
    workdir = str(tmp_path / "run")
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "dsv3_jax.train", f"--config={config_file}", f"--workdir={workdir}",
           "--config.train.steps=400", "--config.train.checkpoint_every=1000"]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if os.path.exists(os.path.join(workdir, "metrics.jsonl")) and len(train_steps(workdir)) >= 2:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    last = max(train_steps(workdir))
    assert last < 400 and sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == [str(last)]
    assert (f"interrupted at step {last} (SIGTERM), checkpoint saved in "
            f"{os.path.join(workdir, 'checkpoints', str(last))}; rerun the same command to resume") in out
    assert "Traceback" not in err


def test_stop_signal_records_sigint_and_restores_the_handler():
    from dsv3_jax.train.interrupt import StopSignal

    before = signal.getsignal(signal.SIGINT)
    with StopSignal() as stop:
        assert stop.requested() == 0
        os.kill(os.getpid(), signal.SIGINT)  # would raise KeyboardInterrupt without the handler
        assert stop.requested() == signal.SIGINT
    assert signal.getsignal(signal.SIGINT) is before
