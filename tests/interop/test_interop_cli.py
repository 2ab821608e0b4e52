"""dsv3-convert in both directions: HF -> params dir -> HF, and a training workdir -> HF."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from dsv3_jax.cli import convert
from dsv3_jax.interop import FP8Weight, jax_dirs, load_hf_checkpoint, save_hf_checkpoint
from tests.interop.conftest import random_variables, read_checkpoint, tiny_v3


def test_hf_to_params_dir_and_back(tmp_path, capsys):
    cfg = tiny_v3()
    src = save_hf_checkpoint(cfg, random_variables(cfg), str(tmp_path / "hf"))
    assert convert.main(["--from-hf", src, "--to", str(tmp_path / "params")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "params")
    got_cfg, _ = jax_dirs.load_params_dir(str(tmp_path / "params"))
    assert got_cfg == load_hf_checkpoint(src)[0]
    assert convert.main(["--to-hf", str(tmp_path / "back"), "--from", str(tmp_path / "params"),
                         "--shard-size", "30KB"]) == 0
    a, b = read_checkpoint(src), read_checkpoint(str(tmp_path / "back"))
    assert set(a) == set(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    with open(tmp_path / "back" / "config.json") as f1, open(os.path.join(src, "config.json")) as f2:
        assert json.load(f1) == json.load(f2)


def test_params_dir_keeps_fp8_leaves(tmp_path):
    import ml_dtypes

    cfg = tiny_v3()
    variables = random_variables(cfg)
    w = variables["params"]["dense_layers"]["mlp"]["w1"]
    variables["params"]["dense_layers"]["mlp"]["w1"] = FP8Weight(w.astype(ml_dtypes.float8_e4m3fn),
                                                                 np.ones((2, 1, 1), np.float32))
    jax_dirs.save_params_dir(cfg, variables, str(tmp_path / "p"))
    _, got = jax_dirs.load_params_dir(str(tmp_path / "p"))
    leaf = got["params"]["dense_layers"]["mlp"]["w1"]
    assert isinstance(leaf, FP8Weight) and leaf.value.dtype == ml_dtypes.float8_e4m3fn


def test_workdir_to_hf(tmp_path):
    from dsv3_jax.experiment_config import experiment_config
    from dsv3_jax.train import checkpoint, optim
    from dsv3_jax.train.state import init_state

    cfg = tiny_v3()
    cd = experiment_config(model=cfg.to_dict())
    cd.train.seq_len = 8
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text(cd.to_json())
    abstract = jax.eval_shape(lambda: init_state(cfg, optim.make_optimizer(cd.train), 0, 8))
    variables = random_variables(cfg, seed=5)
    state = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract)
    state = state.replace(params=variables["params"], router=variables["router"], step=np.int32(7))
    ckpt = checkpoint.Checkpointer(str(workdir))
    ckpt.save(state, {"epoch": 0})
    ckpt.close()
    assert convert.main(["--to-hf", str(tmp_path / "hf"), "--from", str(workdir)]) == 0
    _, got = load_hf_checkpoint(str(tmp_path / "hf"))
    same = jax.tree.map(np.array_equal, got, variables)
    assert all(jax.tree.leaves(same))


def test_cli_errors(tmp_path, capsys):
    assert convert.main(["--to-hf", str(tmp_path / "x"), "--from", str(tmp_path)]) == 2
    assert "neither a params directory" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x")
    with pytest.raises(SystemExit):
        convert.parse_args(["--from-hf", "a"])  # --to is required
