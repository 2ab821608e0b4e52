"""Probes: a resume is checked against workdir/config.json before anything is written, falls back past unusable
checkpoints (moving them aside, never deleting), honours train.restore_step once, and leaves metrics.jsonl
with each step once (issue 15 failures 3 and 4, metrics; build items 3-5)."""

from __future__ import annotations

import os

import pytest

from dsv3_jax.train.loop import train
from tests.reliability.conftest import micro, read_rows, train_steps, truncate_data_files


def _snapshot(workdir):
    """Every file under the workdir with its bytes, to prove a refused resume changed nothing."""
    out = {}
    for root, _, files in os.walk(workdir):
        for f in files:
            path = os.path.join(root, f)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, workdir)] = fh.read()
    return out


@pytest.mark.parametrize("block,field,value", [
    ("model", "dim", 64),  # shape-changing
    ("model", "score_func", "softmax"),  # shape-preserving: resumed silently on the landed code
    ("model", "route_scale", 1.0),
    ("model", "n_limited_groups", 3),
    ("data", "synthetic_bytes", 30_000),
    ("train", "bf16_moments", True),
])
def test_config_change_is_refused_and_nothing_is_written(workdir, block, field, value):
    # Landed code: config.json was overwritten before orbax (or the data fingerprint) refused the resume.
    before = _snapshot(workdir)
    cd = micro(steps=6)
    cd[block][field] = value
    with pytest.raises(ValueError, match=rf"refusing to resume .*the config differs from the one its checkpoints "
                                         rf"were trained with \({block}.{field}: saved .*, now {value!r}\).*"
                                         rf"allow_config_change={block}.{field}"):
        train(cd, workdir, log=lambda *a: None)
    assert _snapshot(workdir) == before


def test_allowed_change_resumes_and_is_recorded(workdir):
    log = []
    cd = micro(steps=6, allow_config_change="model.route_scale")
    cd.model.route_scale = 2.0
    assert train(cd, workdir, log=log.append)["step"] == 6
    assert "resuming with a changed config: model.route_scale: 2.5 -> 2.0" in log
    assert "resuming with a changed config: train.steps: 4 -> 6" in log
    assert f"resumed from {os.path.join(workdir, 'checkpoints')} at step 4" in log
    assert train_steps(workdir) == [1, 2, 3, 4, 5, 6]
    # The new config is the workdir's now: the same command again is a plain (no-op) resume.
    assert train(cd, workdir, log=lambda *a: None)["step"] == 6


def test_corrupt_latest_is_moved_aside_and_training_continues(workdir):
    truncate_data_files(workdir, 4)
    log = []
    assert train(micro(steps=6), workdir, log=log.append)["step"] == 6
    warning = [m for m in log if m.startswith("warning: checkpoint 4")]
    assert len(warning) == 1 and "falling back to checkpoint 2" in warning[0]
    moved = os.path.join(workdir, "rejected_checkpoints", "4")
    assert os.path.isdir(os.path.join(moved, "state"))
    assert open(os.path.join(moved, "REASON.txt")).read().startswith("checkpoint 4: state/ array ")
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4", "6"]  # 4 retrained and saved
    assert train_steps(workdir) == [1, 2, 3, 4, 5, 6]  # the first run's rows 3-4 were dropped, then retrained


def test_restore_step_rolls_back_once(workdir):
    old_rows = [r for r in read_rows(workdir) if r["step"] <= 2]
    log = []
    assert train(micro(steps=4, restore_step=2), workdir, log=log.append)["step"] == 4
    assert any(m.startswith("moved checkpoint 4 (newer than train.restore_step=2)") for m in log)
    assert os.path.isdir(os.path.join(workdir, "rejected_checkpoints", "4"))
    assert [r for r in read_rows(workdir) if r["step"] <= 2] == old_rows and train_steps(workdir) == [1, 2, 3, 4]
    # The same command again resumes from the newest checkpoint (4), not from 2 again.
    log = []
    assert train(micro(steps=5, restore_step=2), workdir, log=log.append)["step"] == 5
    assert f"resumed from {os.path.join(workdir, 'checkpoints')} at step 4" in log
    assert any(m.startswith("train.restore_step=2 was applied by an earlier run") for m in log)
    assert train_steps(workdir) == [1, 2, 3, 4, 5]


def test_data_fingerprint_refusal_writes_nothing(workdir):
    # A data change the config comparison cannot see (the same config, other files): the fingerprint check
    # refuses it after the restore, still before anything is written.
    before = _snapshot(workdir)
    cd = micro(steps=6, allow_config_change="data.synthetic_bytes")
    cd.data.synthetic_bytes = 30_000
    with pytest.raises(ValueError, match=r"data iterator state was saved for different data or settings "
                                         r"\(num_windows: saved \d+, now \d+; stream_digest"):
        train(cd, workdir, log=lambda *a: None)
    assert _snapshot(workdir) == before
