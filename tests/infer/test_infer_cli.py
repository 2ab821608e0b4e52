"""dsv3-generate smoke test: train 3 steps with the library loop, then generate from the workdir through the
CLI's main() (flags, checkpoint restore, streaming) and through its Python entry point."""

import io
import os
import sys

import pytest

from dsv3_jax.cli import generate as cli
from dsv3_jax.data import tokenizer
from dsv3_jax.infer import restore
from dsv3_jax.infer.generate import generate
from dsv3_jax.train.loop import train
from tests.train.helpers import micro_experiment


def experiment():
    cd = micro_experiment(steps=3)
    cd.model.update(dict(n_layers=1, n_dense_layers=0))  # one MoE layer + MTP: less to compile
    return cd


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("run"))
    train(experiment(), path, log=lambda *a: None)
    return path


def test_cli_main_streams_from_latest_checkpoint(workdir, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["dsv3-generate", f"--workdir={workdir}", "--prompt=def ",
                                      "--max_new_tokens=8", "--speculative"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code in (0, None)
    out, err = capsys.readouterr()
    assert out.startswith("def ")
    assert "[step 3]" in err and "acceptance" in err
    # The same tokens as the library's plain greedy decoding of the restored model.
    cfg, variables, step = restore.load_workdir(workdir)
    assert step == 3
    ids = list(tokenizer.encode("def ", bos=True))
    result = generate(cfg, variables, [ids], max_new_tokens=8, stop_tokens=[tokenizer.EOS_ID])
    assert out == "def " + tokenizer.decode(result.sequences()[0]) + "\n"


def test_cli_run_and_config_fallback(workdir, tmp_path):
    out, err = io.StringIO(), io.StringIO()
    result = cli.run(workdir, ["ab"], max_new_tokens=8, out=out, err=err)
    assert out.getvalue() == "ab" + tokenizer.decode(result.sequences()[0]) + "\n"
    assert "tok/s" in err.getvalue()
    # Without workdir/config.json the experiment config must be given.
    os.rename(os.path.join(workdir, "config.json"), os.path.join(workdir, "saved.json"))
    try:
        with pytest.raises(ValueError, match="config.json not found"):
            restore.load_workdir(workdir)
        cfg, _, _ = restore.load_workdir(workdir, experiment())
        assert cfg.vocab_size == 259 and cfg.n_layers == 1
    finally:
        os.rename(os.path.join(workdir, "saved.json"), os.path.join(workdir, "config.json"))
    with pytest.raises(ValueError, match="no checkpoints directory"):
        restore.load_workdir(str(tmp_path))
