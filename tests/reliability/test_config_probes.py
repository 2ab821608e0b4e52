"""Probes: bad run configs are ValueErrors naming `block.field` and what is expected, raised before anything
is printed or written; no misspelled key becomes a silent default (issue 15, failure 5 and build item 1)."""

from __future__ import annotations

import dataclasses
import os

import ml_collections
import pytest

from dsv3_jax.data import corpus
from dsv3_jax.train.loop import train
from tests.reliability.conftest import QUIET, micro

# The typed config classes are imported in the tests that use them, so that the other probes also run (and
# fail for what they check) against code without them.


def _with(block, field, value):
    """The probes' config as a plain mapping (like a saved config.json) with one field changed."""
    d = micro().to_dict()
    d[block][field] = value
    return d


@pytest.mark.parametrize("field", ["checkpoint_every", "log_every", "eval_every"])
def test_zero_interval_is_refused_before_the_workdir_exists(field, tmp_path):
    # Landed code: ZeroDivisionError after step 1.
    with pytest.raises(ValueError, match=rf"^train\.{field}=0: must be >= 1$"):
        train(ml_collections.ConfigDict(_with("train", field, 0)), str(tmp_path / "run"), log=QUIET)
    assert not os.path.exists(tmp_path / "run")


@pytest.mark.parametrize("steps", [-5, 0])
def test_non_positive_steps_is_refused(steps, tmp_path):
    # Landed code: exit 0 and a step-0 checkpoint.
    with pytest.raises(ValueError, match=rf"train\.steps={steps}: must be >= 1"):
        train(ml_collections.ConfigDict(_with("train", "steps", steps)), str(tmp_path / "run"), log=QUIET)
    assert not os.path.exists(tmp_path / "run")


def test_warmup_longer_than_the_run_warns():
    from dsv3_jax.experiment_config import TrainConfig

    assert TrainConfig(steps=10, warmup_steps=50).warnings() == [
        "warning: train.warmup_steps=50 > train.steps=10: the learning rate never reaches train.lr=0.00022"]
    assert TrainConfig(steps=10, warmup_steps=10).warnings() == []


def test_misspelled_train_key_is_an_error_with_a_suggestion():
    from dsv3_jax.experiment_config import ExperimentConfig

    cd = ml_collections.ConfigDict(micro().to_dict())
    cd.train.chekpoint_every = 5
    with pytest.raises(ValueError, match=r"train: unknown field\(s\) \['chekpoint_every'\] \(train.chekpoint_every "
                                         r"-> did you mean train.checkpoint_every\?\)"):
        ExperimentConfig.from_dict(cd)


def test_misspelled_data_key_is_never_a_silent_default():
    # Landed code: corpus.field(cfg, "val_fraction", 0.02) silently used the default.
    with pytest.raises(ValueError, match=r"data: unknown field\(s\) \['val_fracton'\]"):
        corpus.load_corpus({"source": "synthetic", "val_fracton": 0.5})


def test_unknown_block_and_unknown_model_field():
    from dsv3_jax.experiment_config import ExperimentConfig

    d = micro().to_dict()
    with pytest.raises(ValueError, match=r"config: unknown field\(s\) \['optim'\]"):
        ExperimentConfig.from_dict({**d, "optim": {}})
    d["model"]["dimm"] = 3
    with pytest.raises(ValueError, match=r"model: unknown field\(s\) \['dimm'\] \(model.dimm -> did you mean "
                                         r"model.dim\?\)"):
        ExperimentConfig.from_dict(d)


def test_eval_without_validation_data_is_refused_unless_switched_off():
    from dsv3_jax.experiment_config import ExperimentConfig

    # Landed code: KeyError 'nll' at the first eval, before that step's checkpoint.
    cd = _with("data", "val_fraction", 0.0)
    with pytest.raises(ValueError, match=r"data.val_fraction=0 leaves no validation data, but "
                                         r"train.eval_batches=1 .*set train.eval_batches=0"):
        ExperimentConfig.from_dict(cd)
    cd["train"]["eval_batches"] = 0
    assert ExperimentConfig.from_dict(cd).train.eval_batches == 0


@pytest.mark.parametrize("block,field,value,message", [
    ("train", "steps", "10", r"train.steps='10': must be of type int, got str"),
    ("train", "batch_size", True, r"train.batch_size=True: must be of type int, got bool"),
    ("train", "lr", float("nan"), r"train.lr=nan: must be a finite number"),
    ("train", "lr", 0.0, r"train.lr=0.0: must be > 0"),
    ("train", "nonfinite", "ignore", r"train.nonfinite='ignore': must be one of \('stop', 'skip'\)"),
    ("train", "restore_step", -2, r"train.restore_step=-2: must be -1"),
    ("train", "allow_config_change", "model.dimm", r"train.allow_config_change names unknown field\(s\) "
                                                   r"\['model.dimm'\]"),
    ("train", "pipeline_schedule", "gpipe", r"train.pipeline_schedule='gpipe': must be one of"),
    ("data", "source", "web", r"data.source='web': must be one of"),
    ("data", "val_fraction", 1.0, r"data.val_fraction=1.0: must be in \[0, 1\)"),
    ("mesh", "fsdp", 0, r"mesh.fsdp=0: must be >= 1, or -1"),
    ("mesh", "fsdp", -1, r"mesh: at most one axis may be -1, got \['mesh.data', 'mesh.fsdp'\]"),
])
def test_bad_value_names_the_field(block, field, value, message):
    from dsv3_jax.experiment_config import ExperimentConfig

    with pytest.raises(ValueError, match=message):
        ExperimentConfig.from_dict(_with(block, field, value))


def test_defaults_live_in_the_dataclasses_only():
    from dsv3_jax.experiment_config import DataConfig, ExperimentConfig, MeshConfig, TrainConfig

    cd = micro()
    assert set(cd.train) == {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(cd.data) == {f.name for f in dataclasses.fields(DataConfig)}
    assert cd.mesh.to_dict() == MeshConfig().to_dict()
    # Missing blocks and fields take the dataclass defaults (e.g. a config.json from before a field existed).
    base = ExperimentConfig.from_dict({"model": cd.model.to_dict(), "train": {"seq_len": 16}})
    assert base.train == TrainConfig(seq_len=16) and base.data == DataConfig() and base.mesh == MeshConfig()
