"""Probes: damaged, incomplete, non-finite or mismatched checkpoints give ONE clear error (checkpoint step,
file, cause) and the restore falls back to the previous usable checkpoint; a non-finite state is never saved;
inference reads the model variables only (issue 15 failures 1 and 4, issue 12 "restores only what it needs")."""

from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsv3_jax.train import checkpoint, restore
from dsv3_jax.train.state import TrainState
from tests.reliability.conftest import delete_arrays, step_dir, truncate_data_files, write_nonfinite_checkpoint


def _load_full(workdir, capfd):
    """restore.load_workdir (the whole TrainState) and the warning lines it printed on stderr."""
    capfd.readouterr()
    _, _, state = restore.load_workdir(workdir)
    return state, [line for line in capfd.readouterr().err.splitlines() if line.startswith("warning: ")]


def _equal(a, b) -> bool:
    return jax.tree.structure(a) == jax.tree.structure(b) and all(
        np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_truncated_data_file_falls_back_with_one_clear_line(workdir, capfd):
    # Landed code: exit 1 with ~1,300 lines of tracebacks ("Event loop is closed" x100); checkpoint 2 never tried.
    truncate_data_files(workdir, 4)
    capfd.readouterr()
    _, _, state = restore.load_workdir(workdir)
    err = capfd.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert int(state.step) == 2
    assert len(warnings) == 1
    where = os.path.join(workdir, "checkpoints")
    assert warnings[0].startswith(f"warning: checkpoint 4 in {where} is unusable: state/ array ")
    assert "OUT_OF_RANGE" in warnings[0] and "falling back to checkpoint 2" in warnings[0]
    assert "tensorstore_spec" not in warnings[0] and len(warnings[0]) < 700
    assert "Event loop is closed" not in err and "Traceback" not in err


@pytest.mark.parametrize("damage,where", [
    ("rm state/_METADATA", "state/_METADATA: file missing"),
    ("rm -r state", "state/: directory missing"),
    ("garble state/_METADATA", "state/_METADATA: unreadable or not valid JSON"),
    ("rm data/metadata", "data/metadata: file missing"),
])
def test_incomplete_checkpoint_falls_back(workdir, capfd, damage, where):
    # Landed code: "pytree structure error ... tuple vs list" or a KeyError.
    op, rel = damage.split(" ", 1)[0], damage.split()[-1]
    path = os.path.join(step_dir(workdir, 4), rel)
    if op == "garble":
        with open(path, "w") as f:
            f.write('{"tree_metadata": ')
    elif rel == "state":
        shutil.rmtree(path)
    else:
        os.remove(path)
    state, warnings = _load_full(workdir, capfd)
    assert int(state.step) == 2 and len(warnings) == 1
    assert f"warning: checkpoint 4 in {os.path.join(workdir, 'checkpoints')} is unusable: {where}" in warnings[0]


def test_no_usable_checkpoint_names_each(workdir, capfd):
    for step in (2, 4):
        os.remove(os.path.join(step_dir(workdir, step), "state", "_METADATA"))
    with pytest.raises(ValueError, match=r"no usable checkpoint in .*checkpoints: checkpoint 4: state/_METADATA: "
                                         r"file missing .*; checkpoint 2: state/_METADATA: file missing"):
        _load_full(workdir, capfd)


def test_explicit_step_does_not_fall_back(workdir):
    truncate_data_files(workdir, 2)
    warnings = []
    with pytest.raises(ValueError, match=r"no usable checkpoint .*checkpoint 2: state/ array"):
        restore.load_variables(workdir, step=2, warn=warnings.append)
    assert len(warnings) == 1 and "no older checkpoint to fall back to" in warnings[0]
    with pytest.raises(ValueError, match=r"no checkpoint 3 .*the checkpoints are \[2, 4\]"):
        restore.load_variables(workdir, step=3)


@pytest.mark.parametrize("collection", ["params", "opt_state"])
def test_nonfinite_checkpoint_is_refused_on_resume(workdir, capfd, collection):
    # Landed code: an all-NaN checkpoint was restored ("the last good checkpoint") and failed again forever.
    write_nonfinite_checkpoint(workdir, 6, collection)
    state, warnings = _load_full(workdir, capfd)
    assert int(state.step) == 4 and len(warnings) == 1
    assert f"warning: checkpoint 6 in {os.path.join(workdir, 'checkpoints')} is unusable: state/: non-finite values " \
           f"(NaN/inf) in {collection}; falling back to checkpoint 4" in warnings[0]


def test_nonfinite_params_are_refused_by_inference(workdir):
    # Landed code: dsv3-generate printed NUL bytes and dsv3-convert --to-hf exported NaN weights.
    from dsv3_jax.train import finite

    write_nonfinite_checkpoint(workdir, 6)
    warnings = []
    _, _, variables, step = restore.load_variables(workdir, warn=warnings.append)
    assert step == 4 and "non-finite values (NaN/inf) in params" in warnings[0]
    assert not finite.nonfinite_collections(variables)


def test_save_refuses_a_nonfinite_state_and_writes_nothing(tmp_path):
    from dsv3_jax.train import finite

    params, moments = {"w": jnp.ones((2, 3))}, {"mu": {"w": jnp.full((2, 3), jnp.inf)}}
    state = TrainState(step=jnp.asarray(5, jnp.int32), params=params, opt_state=moments, router={},
                       rng=jnp.asarray([1, 2], jnp.uint32))
    ckpt = checkpoint.Checkpointer(str(tmp_path))
    with pytest.raises(finite.NonFiniteError, match=r"refusing to save checkpoint 5: non-finite values \(NaN/inf\) "
                                                    r"in opt_state"):
        ckpt.save(state, {"pos": 1})
    assert ckpt.steps() == [] and os.listdir(ckpt.directory) == []
    ckpt.close()


def test_shape_mismatch_names_the_parameter(workdir):
    # Landed code: orbax's "Requested shape ... not compatible", naming no parameter and suggesting strict=False.
    from dsv3_jax.experiment_config import ExperimentConfig
    from dsv3_jax.train import optim
    from dsv3_jax.train.checkpoint import CheckpointMismatch
    from dsv3_jax.train.state import init_state

    cd = json.load(open(os.path.join(workdir, "config.json")))
    cd["model"]["v_head_dim"] = 16
    exp = ExperimentConfig.from_dict(cd)
    abstract = jax.eval_shape(lambda: init_state(exp.model, optim.make_optimizer(exp.train), 0, 16))
    ckpt = checkpoint.Checkpointer(workdir, read_only=True)
    with pytest.raises(CheckpointMismatch, match=r"checkpoint 4 does not match the model being restored: "
                                                 r"params.moe_layers.attn.wkv_b: stored \(1, 12, 32\) float32, the "
                                                 r"model has \(1, 12, 48\) float32; .*and \d+ more.*compare "
                                                 r"workdir/config.json"):
        restore.restore_newest(ckpt, abstract)
    ckpt.close()


def test_inference_restore_reads_the_model_variables_only(workdir, trained, capfd):
    # Issue 12: the partial restore equals the full one and does not need the optimizer state at all.
    full_state, _ = _load_full(trained, capfd)
    for step in (2, 4):
        delete_arrays(workdir, step, b"opt_state")
    cd, cfg, variables, step = restore.load_variables(workdir)
    assert step == 4 and cfg.n_layers == 1 and cd.train.steps == 4
    assert set(variables) == {"params", "router"} and _equal(variables, full_state.variables())
    with pytest.raises(ValueError, match=r"no usable checkpoint .*checkpoint 4: state/ array opt_state\.\S+: "
                                         r"NOT_FOUND"):
        _load_full(workdir, capfd)  # the whole TrainState can no longer be restored from this workdir
