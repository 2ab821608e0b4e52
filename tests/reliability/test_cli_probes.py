"""Probes: dsv3-generate and dsv3-convert check their arguments before printing anything, report an unusable
checkpoint on one line (falling back to the previous one), refuse non-finite weights, keep orbax quiet and
write output directories that honour the umask (issue 15 failures 1 and 4, small items)."""

from __future__ import annotations

import logging
import os
import shutil
import sys

import numpy as np
import pytest

from dsv3_jax.cli import convert, generate
from dsv3_jax.train import restore
from tests.reliability.conftest import step_dir, truncate_data_files, write_nonfinite_checkpoint


def _generate(monkeypatch, capsys, workdir, *flags):
    from absl import flags as absl_flags

    absl_flags.FLAGS.unparse_flags()  # absl keeps the values of an earlier in-process parse otherwise
    monkeypatch.setattr(sys, "argv", ["dsv3-generate", f"--workdir={workdir}", *flags])
    try:
        with pytest.raises(SystemExit) as exit_info:
            generate.main()
    finally:
        absl_flags.FLAGS.unparse_flags()  # nor leave ours to a later in-process test
    out, err = capsys.readouterr()
    return exit_info.value.code or 0, out, err


def _only_nonfinite(workdir):
    """The workdir with one checkpoint (6), all-NaN params; the finite ones moved out of the way."""
    write_nonfinite_checkpoint(workdir, 6)
    for step in (2, 4):
        shutil.move(step_dir(workdir, step), os.path.join(workdir, f"elsewhere_{step}"))
    return workdir


@pytest.mark.parametrize("flags,message", [
    (["--max_new_tokens=0"], "--max_new_tokens: must be >= 1, got 0"),
    (["--stop_tokens=eos"], "--stop_tokens: expected comma-separated token ids, got 'eos'"),
    (["--stop_tokens=300"], "--stop_tokens: token ids must be in [0, vocab_size=259), got [300]"),
    (["--max_new_tokens=100"], "exceeds ModelConfig.max_seq_len=64"),
    (["--step=-1"], "--step: must be a checkpoint step >= 0, got -1"),
    (["--temperature=-1"], "SamplingParams.temperature: must be >= 0"),
])
def test_generate_rejects_bad_arguments_before_printing(trained, monkeypatch, capsys, flags, message):
    # Landed code: the prompt was echoed (and ~30 orbax INFO lines printed) before max_new_tokens was refused.
    code, out, err = _generate(monkeypatch, capsys, trained, "--prompt=def ", *flags)
    assert code == 1 and out == ""
    assert err.strip().startswith("dsv3-generate: error: ") and message in err and len(err.strip().splitlines()) == 1


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def test_generate_falls_back_past_a_corrupt_checkpoint_and_is_quiet(workdir, monkeypatch, capsys):
    truncate_data_files(workdir, 4)
    seen = _Records()
    logging.getLogger("absl").addHandler(seen)
    try:
        code, out, err = _generate(monkeypatch, capsys, workdir, "--prompt=ab", "--max_new_tokens=4")
    finally:
        logging.getLogger("absl").removeHandler(seen)
    assert code == 0 and out.startswith("ab")
    lines = err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("warning: checkpoint 4 in ") and "falling back to checkpoint 2" \
        in lines[0] and lines[1].startswith("[step 2] ")
    assert not [r for r in seen.records if r.levelno < logging.WARNING]  # orbax's INFO lines are off


def test_generate_refuses_nonfinite_weights(workdir, monkeypatch, capsys):
    # Landed code: printed NUL bytes and exited 0.
    code, out, err = _generate(monkeypatch, capsys, _only_nonfinite(workdir), "--prompt=ab")
    assert code == 1 and out == ""
    assert "dsv3-generate: error: no usable checkpoint in " in err
    assert "checkpoint 6: state/: non-finite values (NaN/inf) in params" in err


def test_convert_refuses_nonfinite_weights_and_writes_nothing(workdir, tmp_path, capsys):
    # Landed code: exported NaN weights.
    hf_dir = tmp_path / "hf"
    assert convert.main(["--to-hf", str(hf_dir), "--from", _only_nonfinite(workdir)]) == 2
    assert "dsv3-convert: error: no usable checkpoint" in capsys.readouterr().err
    assert not hf_dir.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".hf")]


def test_convert_output_honours_the_umask_and_names_the_flag(trained, tmp_path, capsys):
    # Landed code: mode 0700 (tempfile.mkdtemp), and "pass overwrite=True" for a flag spelled --overwrite.
    old = os.umask(0o022)
    try:
        assert convert.main(["--to-hf", str(tmp_path / "hf"), "--from", trained]) == 0
    finally:
        os.umask(old)
    for root, dirs, files in os.walk(tmp_path / "hf"):
        assert os.stat(root).st_mode & 0o777 == 0o755, root
        for f in files:
            assert os.stat(os.path.join(root, f)).st_mode & 0o777 == 0o644, f
    assert logging.getLogger("absl").getEffectiveLevel() >= logging.WARNING  # orbax quiet without -v
    capsys.readouterr()
    assert convert.main(["--to-hf", str(tmp_path / "hf"), "--from", trained]) == 2
    assert "output directory already exists (pass --overwrite" in capsys.readouterr().err


def test_convert_step_picks_that_checkpoint(trained, tmp_path):
    from dsv3_jax.interop import load_hf_checkpoint

    assert convert.main(["--to-hf", str(tmp_path / "hf2"), "--from", trained, "--step=2"]) == 0
    _, got = load_hf_checkpoint(str(tmp_path / "hf2"))
    _, _, want, step = restore.load_variables(trained, step=2)
    assert step == 2
    np.testing.assert_array_equal(got["params"]["embed"]["embedding"], np.asarray(want["params"]["embed"]["embedding"]))
    with pytest.raises(SystemExit):
        convert.parse_args(["--from-hf", "x", "--to", "y", "--step=2"])
