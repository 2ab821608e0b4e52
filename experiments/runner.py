"""Run an ablation: train every variant of a base config, then write a markdown table and a loss plot.

    python -m experiments.runner --ablation=balancing [--config=configs/tiny.py] [--steps=250]
                                 [--workdir=runs/ablations] [--config.train.lr=1e-3 ...]

Writes <workdir>/<ablation>/{<variant>/…, results.md, loss.png}. A variant whose directory already holds a
finished run is not retrained (delete it to rerun). `--config.x=y` overrides apply to the base config before
each variant's own changes. The packages the plot needs (matplotlib: the `viz` extra) are checked before any
variant trains.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp

import dsv3_jax
from dsv3_jax import config_args
from dsv3_jax.experiment_config import model_config
from experiments.ablations import ABLATIONS, BASELINES


REQUIRED = {"matplotlib": "viz"}  # module -> the extra that installs it


def check_imports() -> None:
    """ValueError naming each missing package and its extra, before anything trains."""
    missing = [m for m in REQUIRED if importlib.util.find_spec(m) is None]
    if missing:
        extras = ",".join(sorted({REQUIRED[m] for m in missing}))
        raise ValueError(f"python -m experiments.runner needs {', '.join(missing)} (for loss.png): "
                         f"pip install -e '.[{extras}]'")


def load_config(path: str, overrides=()):
    """The base config file's ConfigDict (a packaged name works too) with `--config.x=y` overrides."""
    return config_args.load_config(path, overrides)


def apply_overrides(cd, overrides: dict):
    """Set dotted keys (e.g. "model.mtp_depth"); an unknown key is an error naming it."""
    for key, value in overrides.items():
        section, field = key.split(".", 1)
        block = cd[section]
        if field not in block:
            raise ValueError(f"override {key!r}: {section} has no field {field!r}")
        block[field] = value
    return cd


def read_metrics(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def n_params(cd) -> int:
    cfg = model_config(cd)
    shapes = jax.eval_shape(lambda: dsv3_jax.DeepSeekV3(cfg).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32)))
    return sum(x.size for x in jax.tree.leaves(nn.unbox(shapes["params"])))


def summarize(name: str, cd, rows: list[dict], seconds: float) -> dict:
    train = [r for r in rows if r["kind"] == "train"]
    evals = [r for r in rows if r["kind"] == "eval"]
    last = evals[-1] if evals else {}
    loads = last.get("val_load_max", [])
    return {
        "variant": name, "params": n_params(cd), "kv_bytes_per_token": model_config(cd).kv_cache_bytes_per_token(),
        "final_train_ce": sum(r["ce"] for r in train[-10:]) / max(len(train[-10:]), 1),
        "val_bits_per_byte": last.get("val_bits_per_byte"), "val_mtp_acc": last.get("val_mtp_acc"),
        "val_load_max_over_mean": sum(loads) / len(loads) if loads else None, "minutes": seconds / 60,
    }


def add_relative_errors(results: list[dict], baseline: str) -> list[dict]:
    """Add (loss - baseline loss) / baseline loss in percent for the final train CE and the val bits/byte
    (the V3 report's FP8 criterion, §3.3: relative loss error vs BF16)."""
    base = next((r for r in results if r["variant"] == baseline), None)
    if base is None:
        raise ValueError(f"baseline variant {baseline!r} not among {[r['variant'] for r in results]}")
    for r in results:
        for key, col in (("final_train_ce", "train_ce_rel_%"), ("val_bits_per_byte", "val_bpb_rel_%")):
            ok = r[key] is not None and base[key]
            r[col] = 100 * (r[key] - base[key]) / base[key] if ok else None
    return results


def _fmt(v):
    if v is None:
        return "–"
    return f"{v:,}" if isinstance(v, int) else f"{v:.4f}" if abs(v) < 100 else f"{v:,.0f}"


def markdown_table(results: list[dict]) -> str:
    cols = list(results[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r[c]) if c != "variant" else r[c] for c in cols) + " |" for r in results]
    return "\n".join(lines)


def plot_losses(curves: dict[str, list[tuple[int, float]]], path: str, title: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for name, pts in curves.items():
        steps, ce = zip(*pts)
        ax.plot(steps, ce, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("train cross-entropy (nats)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run_ablation(ablation: str, base: str, workdir: str, steps: int | None = None, log=print,
                 overrides=()) -> list[dict]:
    if ablation not in ABLATIONS:
        raise ValueError(f"--ablation: unknown {ablation!r}; choose from {sorted(ABLATIONS)}")
    check_imports()
    from dsv3_jax.experiment_config import ExperimentConfig
    from dsv3_jax.train.loop import train

    for overrides_of_variant in ABLATIONS[ablation].values():  # every variant's config is valid before training
        ExperimentConfig.from_dict(apply_overrides(load_config(base, overrides), overrides_of_variant))
    out_dir = os.path.join(workdir, ablation)
    results, curves = [], {}
    for name, variant in ABLATIONS[ablation].items():
        cd = apply_overrides(load_config(base, overrides), variant)
        if steps:
            cd.train.steps = steps
        cd.train.eval_every = cd.train.steps
        run_dir = os.path.join(out_dir, name)
        t0 = time.time()
        log(f"[{ablation}] training {name} ({cd.train.steps} steps) in {run_dir}")
        train(cd, run_dir, log=log)
        # The next variant is another config: nothing compiled here is reused, and jax's caches would keep
        # every executable's JIT code mapped (about a thousand memory maps for a tiny model's forward and
        # backward); a long sweep in one process would reach Linux's limit of 65,530 maps (vm.max_map_count).
        jax.clear_caches()
        rows = read_metrics(run_dir)
        results.append(summarize(name, cd, rows, time.time() - t0))
        curves[name] = [(r["step"], r["ce"]) for r in rows if r["kind"] == "train"]
    if ablation in BASELINES:
        add_relative_errors(results, BASELINES[ablation])
    table = markdown_table(results)
    with open(os.path.join(out_dir, "results.md"), "w", encoding="utf-8") as f:
        f.write(f"# {ablation}\n\n{table}\n")
    plot_losses(curves, os.path.join(out_dir, "loss.png"), ablation)
    log(table)
    return results


def main(argv=None) -> int:
    p = config_args.make_parser("python -m experiments.runner", __doc__, config="optional")
    p.add_argument("--ablation", required=True, choices=sorted(ABLATIONS))
    p.add_argument("--base", dest="config", help="the base config (same as --config)")
    p.add_argument("--steps", type=int, default=250, help="train steps per variant")
    p.add_argument("--workdir", default="runs/ablations", help="where the variants' runs and results go")
    p.set_defaults(config="configs/tiny.py")
    a, overrides = config_args.parse(p, argv)
    try:
        if a.print_config:
            config_args.print_config(config_args.experiment(a, overrides))
            return 0
        run_ablation(a.ablation, a.config, a.workdir, a.steps, overrides=overrides)
    except ValueError as e:
        print(f"experiments.runner: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
