"""Every console script: `--help` exits 0 and lists its flags (and, for tools with a config, how to override
config fields and every field); `--print_config` prints the resolved config; one flag style; clear errors
for bad overrides (issue 18, CLIs)."""

from __future__ import annotations

import ast
import importlib
import os

import pytest

from dsv3_jax import config_args
from tests.conftest import REPO


def console_scripts() -> dict[str, str]:
    """{script: "module:function"} from setup.py's entry_points."""
    tree = ast.parse(open(os.path.join(REPO, "setup.py"), encoding="utf-8").read())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    entry = ast.literal_eval(next(k.value for k in call.keywords if k.arg == "entry_points"))
    return dict(line.split("=") for line in entry["console_scripts"])


SCRIPTS = console_scripts()
FLAGS = {"dsv3-train": ["--workdir", "--config", "--print_config", "--coordinator_address", "--no_compile_cache",
                        "--compile_cache_dir", "--config.train.profile_steps=[a,b]"],
         "dsv3-generate": ["--workdir", "--prompt", "--max_new_tokens", "--top_p", "--speculative", "--step"],
         "dsv3-report": ["--format", "--json", "--seq_len", "--config", "--devices"],
         "dsv3-convert": ["--from_hf", "--to_hf", "--to", "--from", "--keep_fp8", "--shard_size", "--step"],
         "dsv3-pipeline-sim": ["--schedule", "--pp", "--chunks", "--plot"],
         "dsv3-plan": ["--config", "--program", "--mesh", "--layers", "--accelerator", "--json"]}
WITH_CONFIG = ("dsv3-train", "dsv3-generate", "dsv3-report", "dsv3-plan")


def _main(script):
    module, func = SCRIPTS[script].split(":")
    return getattr(importlib.import_module(module), func)


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_help_exits_0_and_lists_the_flags(script, capsys):
    assert set(SCRIPTS) == set(FLAGS)
    with pytest.raises(SystemExit) as exit_info:
        _main(script)(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and out.startswith(f"usage: {script} ")
    assert [f for f in FLAGS[script] + ["--verbose"] if f not in out] == []
    if script in WITH_CONFIG:
        assert "--config.BLOCK.FIELD=VALUE" in out and "train.steps: int = 1000" in out
        assert "model.moe_impl: str = 'auto'  {dense|blocked|ragged|ep|auto}" in out


def test_print_config_prints_the_resolved_config(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _main("dsv3-train")(["--config=configs/tiny.py", "--print_config", "--config.train.steps=7",
                             "--config.train.profile_steps=[2,3]"])
    out = capsys.readouterr().out.splitlines()
    assert exit_info.value.code == 0
    assert {"train.steps = 7", "train.profile_steps = (2, 3)", "model.dim = 128", "mesh.data = -1"} <= set(out)
    assert _main("dsv3-report")(["--config=tiny", "--print_config", "--config.model.n_layers=8"]) == 0
    assert "model.n_layers = 8" in capsys.readouterr().out.splitlines()


@pytest.mark.parametrize("argv,message", [
    (["--config=configs/tiny.py", "--print_config", "--config.train.stepz=7"],
     "--config.train.stepz=7: train has no field 'stepz' (did you mean train.steps?)"),
    (["--config=configs/tiny.py", "--print_config", "--config.train.steps=many"], "--config.train.steps=many"),
    (["--config=configs/tiny.py", "--print_config", "--config.model.moe_impl=fast"], "ModelConfig.moe_impl"),
    (["--config=configs/nope.py", "--workdir=x"], "--config: no such config file 'configs/nope.py'"),
    (["--workdir=x"], "--config=FILE is required"),
    (["--print_config"], "--config=FILE is required"),
    (["--config=configs/tiny.py"], "--workdir=DIR is required"),
])
def test_train_rejects_bad_input_naming_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _main("dsv3-train")(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and err.startswith("dsv3-train: error: ") and message in err


def test_one_flag_style_and_overrides_only_where_a_config_is_taken(capsys):
    assert config_args.normalize_flags(["--from-hf=a", "--keep-fp8", "--config.train.x-y=1", "-v"]) == \
        ["--from_hf=a", "--keep_fp8", "--config.train.x-y=1", "-v"]
    with pytest.raises(SystemExit) as exit_info:
        _main("dsv3-pipeline-sim")(["--schedule=1f1b", "--pp=2", "--chunks=4", "--config.train.steps=3"])
    assert exit_info.value.code == 2 and "this tool takes no config" in capsys.readouterr().err


def test_packaged_configs_resolve_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here: the packaged files are used
    for spec in ("configs/tiny.py", "tiny", "configs/small.py"):
        assert config_args.resolve_config_path(spec).startswith(config_args.PACKAGED_DIR)
    cd = config_args.load_config("configs/tiny.py", ["train.steps=5"])
    assert cd.train.steps == 5 and cd.model.dim == 128
    assert config_args.config_names() == ["deepseek_v2_lite", "deepseek_v3", "small", "tiny"]


def test_every_argparse_flag_is_spelled_with_underscores():
    # Every tool in the repository (console scripts, benchmarks, experiments, kernels' benches): the first
    # spelling of each long flag uses underscores; a hyphenated alias may follow it.
    hyphenated = []
    for root in ("dsv3_jax", "benchmarks", "experiments", "pallas_kernels"):
        for d, _, files in os.walk(os.path.join(REPO, root)):
            for f in (f for f in files if f.endswith(".py")):
                path = os.path.join(d, f)
                for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
                    if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
                        longs = [a.value for a in node.args if isinstance(a, ast.Constant)
                                 and str(a.value).startswith("--")]
                        if longs and "-" in longs[0][2:]:
                            hyphenated.append(f"{os.path.relpath(path, REPO)}: {longs[0]}")
    assert hyphenated == []


@pytest.mark.parametrize("source,message", [
    ("def get_config(arg=None)\n    return 1\n", "does not load: line 1: SyntaxError: expected ':'"),
    ("x = 1\n", "defines no get_config(arg)"),
    ("def get_config(arg=None):\n    return int('x')\n", "failed: line 2: ValueError: invalid literal"),
    ("def get_config(arg=None):\n    return {}\n", "get_config() returned dict, expected a ConfigDict"),
])
def test_a_broken_config_file_is_one_error_naming_it(tmp_path, source, message, capsys):
    path = tmp_path / "mine.py"
    path.write_text(source)
    with pytest.raises(SystemExit) as exit_info:
        _main("dsv3-train")([f"--config={path}", "--print_config"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and err.startswith(f"dsv3-train: error: --config={path}: ") and message in err
    assert len(err.strip().splitlines()) == 1, err
