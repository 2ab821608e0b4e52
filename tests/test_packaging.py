"""Packaging (issue 18): every imported third-party package is declared in setup.py and every declared one is
used; a non-editable `pip install .` finds the configs the way the quickstart notebook does."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys

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


def _pip_install(tmp_path) -> str:
    """`pip install .` (not editable) of a copy of the source tree into a fresh directory; returns it."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.py", "README.md"):
        shutil.copy(os.path.join(REPO, name), src / name)
    for pkg in ("dsv3_jax", "pallas_kernels"):
        shutil.copytree(os.path.join(REPO, pkg), src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    site = tmp_path / "site"
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(site), str(src)]
    if importlib.util.find_spec("setuptools"):  # build with the installed setuptools (>= 70.1 builds wheels)
        cmd.insert(4, "--no-build-isolation")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return str(site)


def test_non_editable_install_finds_the_configs(tmp_path):
    site = _pip_install(tmp_path)
    packaged = {n for n in os.listdir(os.path.join(site, "dsv3_jax", "configs")) if n.endswith(".py")}
    assert {f"{n}.py" for n in ("tiny", "small", "deepseek_v3", "deepseek_v2_lite")} <= packaged
    assert not os.path.exists(os.path.join(site, "configs"))  # only the package, no stray top-level directory
    elsewhere = tmp_path / "elsewhere"  # no configs/ here: as in Colab or any directory after `pip install .`
    elsewhere.mkdir()
    code = ("import dsv3_jax, os\n"
            "from dsv3_jax.config_args import load_config\n"
            "cd = load_config('configs/tiny.py')  # the quickstart notebook's code path\n"
            "assert dsv3_jax.__file__.startswith(os.environ['SITE']), dsv3_jax.__file__\n"
            "print(cd.model.dim, cd.train.steps)\n")
    env = dict(os.environ, PYTHONPATH=site, SITE=site, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=elsewhere,
                          timeout=300)
    assert proc.returncode == 0 and proc.stdout.split() == ["128", "600"], proc.stderr[-3000:]
    script = os.path.join(site, "bin", "dsv3-train")  # the installed console script itself
    proc = subprocess.run([script, "--config=configs/tiny.py", "--print_config"], capture_output=True, text=True,
                          env=env, cwd=elsewhere, timeout=300)
    assert proc.returncode == 0 and "train.steps = 600" in proc.stdout.splitlines(), proc.stderr[-3000:]
