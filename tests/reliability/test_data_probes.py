"""Probes: training without validation data works when evaluation is switched off, and the data errors say
how to switch it off (issue 15 failure 2)."""

from __future__ import annotations

import os

import pytest

from dsv3_jax.data import pipeline
from dsv3_jax.train.loop import train
from tests.reliability.conftest import QUIET, micro, read_rows


def test_no_validation_data_with_eval_off_trains_and_checkpoints(tmp_path):
    # Landed code: KeyError 'nll' at the first eval, before that step's checkpoint was written.
    workdir = str(tmp_path / "run")
    summary = train(_no_val(), workdir, log=QUIET)
    assert summary["step"] == 2 and "val_bits_per_byte" not in summary
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2"]
    assert {r["kind"] for r in read_rows(workdir)} == {"train"}


def _no_val():
    cd = micro(steps=2, eval_batches=0, eval_every=1)
    cd.data.val_fraction = 0.0
    return cd


def test_one_document_corpus_error_says_how_to_train_without_eval(tmp_path):
    from dsv3_jax.experiment_config import DataConfig, TrainConfig

    (tmp_path / "only.txt").write_text("one document " * 50)
    data = DataConfig(source="files", path=str(tmp_path / "*.txt"), val_fraction=0.1)
    with pytest.raises(ValueError, match=r"the corpus has 1 document\(s\); .*set data.val_fraction=0 together "
                                         r"with train.eval_batches=0"):
        pipeline.make_datasets(data, TrainConfig(seq_len=16, batch_size=2, warmup_steps=0), 64)
    # ... and following that advice works.
    train_it, val = pipeline.make_datasets(DataConfig(source="files", path=data.path, val_fraction=0.0),
                                           TrainConfig(seq_len=16, batch_size=2, warmup_steps=0), 64)
    assert next(train_it)["inputs"].shape == (2, 16) and val.num_batches == 0
