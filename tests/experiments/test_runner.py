import os

import pytest

from experiments import runner
from experiments.ablations import ABLATIONS
from tests.conftest import REPO

MICRO_BASE = """
from tests.train.helpers import micro_experiment

def get_config(arg=None):
    cd = micro_experiment(steps=2)
    cd.model.n_expert_groups = 4
    return cd
"""


def test_every_ablation_variant_builds_a_valid_config():
    for name, variants in ABLATIONS.items():
        for variant, overrides in variants.items():
            cd = runner.apply_overrides(runner.load_config(os.path.join(REPO, "configs/tiny.py")), overrides)
            assert runner.n_params(cd) > 0, (name, variant)


def test_attention_variants_have_comparable_parameters():
    counts = {v: runner.n_params(runner.apply_overrides(runner.load_config(os.path.join(REPO, "configs/tiny.py")), o))
              for v, o in ABLATIONS["attention"].items()}
    assert max(counts.values()) / min(counts.values()) < 1.05, counts


def test_unknown_override_names_the_key():
    cd = runner.load_config(os.path.join(REPO, "configs/tiny.py"))
    with pytest.raises(ValueError, match="model.n_experts"):
        runner.apply_overrides(cd, {"model.n_experts": 3})


def test_runner_writes_table_and_plot(tmp_path):
    base = tmp_path / "micro.py"
    base.write_text(MICRO_BASE)
    results = runner.run_ablation("group_routing", str(base), str(tmp_path / "runs"), steps=2, log=lambda *a: None)
    assert [r["variant"] for r in results] == ["limited_2_of_4", "unlimited"]
    table = (tmp_path / "runs/group_routing/results.md").read_text()
    assert "| limited_2_of_4 |" in table and "val_bits_per_byte" in table
    assert (tmp_path / "runs/group_routing/loss.png").stat().st_size > 1000


def test_missing_plot_package_is_an_error_before_anything_trains(tmp_path, monkeypatch, capsys):
    real_find_spec = runner.importlib.util.find_spec
    monkeypatch.setattr(runner.importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else real_find_spec(name, *a))
    assert runner.main(["--ablation=mtp_depth", "--config=configs/tiny.py", f"--workdir={tmp_path}"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("experiments.runner: error: ") and "needs matplotlib" in err and ".[viz]" in err
    assert os.listdir(tmp_path) == []  # no variant started
