"""Packaging (issue 18): every imported third-party package is declared in setup.py and every declared one is
used; a non-editable install (a built wheel) finds the configs the way the quickstart notebook does."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import REPO

CODE_ROOTS = ("dsv3_jax", "pallas_kernels", "experiments", "benchmarks", "tests", "configs")
LOCAL = set(CODE_ROOTS) | {"analysis_reference", "fp8_oracle", "gemm_oracle", "executor_cases", "model_cases",
                           "model_checks", "ep_helpers", "infer_helpers"}
DIST_OF = {"absl": "absl-py", "ml_collections": "ml-collections", "orbax": "orbax-checkpoint", "IPython": "ipykernel"}
# Declared but not imported, each for a stated reason: pytest plugins, notebook kernels, viewers, jax plugins.
NOT_IMPORTED = {"pytest-xdist": "pytest -n 2", "ipykernel": "the kernel nbclient runs the notebooks in",
                "tensorboard": "the `tensorboard --logdir` viewer (README)", "jax[cuda12]": "jax's CUDA plugin"}


def _setup_call():
    tree = ast.parse(open(os.path.join(REPO, "setup.py"), encoding="utf-8").read())
    return next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")


def declared() -> dict[str, str]:
    """{distribution (with extras brackets) -> "core" or the extra's name}."""
    kw = {k.arg: k.value for k in _setup_call().keywords}
    out = {re.split(r"[<>=!~ ]", r)[0]: "core" for r in ast.literal_eval(kw["install_requires"])}
    for extra, reqs in ast.literal_eval(kw["extras_require"]).items():
        out.update({re.split(r"[<>=!~ ]", r)[0]: extra for r in reqs})
    return out


def _imports_of(source: str) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "importorskip" and node.args \
                and isinstance(node.args[0], ast.Constant):
            out.add(node.args[0].value.split(".")[0])
    return out


def imported() -> set[str]:
    """Top-level third-party modules imported by the code, the tests and the notebooks' code cells."""
    mods = set()
    for root in CODE_ROOTS:
        for d, _, files in os.walk(os.path.join(REPO, root)):
            for f in files:
                if f.endswith(".py"):
                    mods |= _imports_of(open(os.path.join(d, f), encoding="utf-8").read())
    for name in os.listdir(os.path.join(REPO, "notebooks")):
        nb = json.load(open(os.path.join(REPO, "notebooks", name), encoding="utf-8"))
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                src = "\n".join(l for l in "".join(cell["source"]).splitlines() if not l.lstrip().startswith(("!", "%")))
                mods |= _imports_of(src)
    return {m for m in mods if m not in sys.stdlib_module_names and m not in LOCAL}


def test_every_import_is_declared_and_every_declaration_is_used():
    dists = declared()
    names = {d.split("[")[0].lower().replace("_", "-") for d in dists}
    used = {DIST_OF.get(m, m).lower().replace("_", "-") for m in imported()}
    assert sorted(used - names) == []  # imported but not declared
    unused = {d for d in dists if d.split("[")[0].lower().replace("_", "-") not in used and d not in NOT_IMPORTED}
    assert sorted(unused) == []  # declared but never imported
    assert "chex" not in names and "grain" not in names and "jax-triton" not in names
    assert dists["torch"] == "hf-parity" and dists["matplotlib"] in ("viz", "notebook")


def _build_wheel(tmp_path) -> str:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.py", "README.md"):
        shutil.copy(os.path.join(REPO, name), src / name)
    for pkg in ("dsv3_jax", "pallas_kernels"):
        shutil.copytree(os.path.join(REPO, pkg), src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "wheel"), str(src)]
    if all(importlib.util.find_spec(m) for m in ("setuptools", "wheel")):  # build without downloading them
        cmd.insert(5, "--no-build-isolation")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (whl,) = (tmp_path / "wheel").glob("dsv3_jax-*.whl")
    return str(whl)


def test_non_editable_install_finds_the_configs(tmp_path):
    whl = _build_wheel(tmp_path)
    names = zipfile.ZipFile(whl).namelist()
    assert {f"dsv3_jax/configs/{n}.py" for n in ("tiny", "small", "deepseek_v3", "deepseek_v2_lite")} <= set(names)
    site = tmp_path / "site"
    zipfile.ZipFile(whl).extractall(site)  # what `pip install dsv3_jax-*.whl` puts in site-packages
    elsewhere = tmp_path / "elsewhere"  # no configs/ here: as in Colab or any directory after `pip install .`
    elsewhere.mkdir()
    code = ("import dsv3_jax, os\n"
            "from dsv3_jax.config_args import load_config\n"
            "cd = load_config('configs/tiny.py')  # the quickstart notebook's code path\n"
            "assert dsv3_jax.__file__.startswith(os.environ['SITE']), dsv3_jax.__file__\n"
            "print(cd.model.dim, cd.train.steps)\n")
    env = dict(os.environ, PYTHONPATH=str(site), SITE=str(site), JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=elsewhere,
                          timeout=300)
    assert proc.returncode == 0 and proc.stdout.split() == ["128", "600"], proc.stderr[-3000:]
    proc = subprocess.run([sys.executable, "-m", "dsv3_jax.cli.train", "--config=configs/tiny.py", "--print_config"],
                          capture_output=True, text=True, env=env, cwd=elsewhere, timeout=300)
    assert proc.returncode == 0 and "train.steps = 600" in proc.stdout.splitlines(), proc.stderr[-3000:]
