"""GPU check of the ragged_all_to_all EP path: `python -m benchmarks.gpu_check [--config configs/tiny.py]`.

Runs the training loss and gradient of a model (configs/tiny.py by default, moe_impl="ep", float32,
"highest" matmul precision) on ONE device under a mesh whose expert axis has size 1, with the EP path forced
(ModelConfig.ep_dispatch), so the ragged path really runs: counts all_gather, jax.lax.ragged_all_to_all
dispatch, ragged_dot expert GEMM, ragged_all_to_all combine. It compares the loss and gradient norm with the
capacity-padded all_to_all path (the CPU path) and with the local path, for compute-dtype and FP8 payloads,
and exits 1 on a mismatch. `--export` instead lowers the ragged step for CUDA on any machine (jax.export,
docs/paper.md §7) with the expert axis over all local devices and the expert-parallel context built for the
"gpu" platform (native ragged_all_to_all), and checks the collective is in it:
XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu python -m benchmarks.gpu_check --export
A check, not library code: it lives outside the package.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import dsv3_jax
from dsv3_jax import sharding
from dsv3_jax.experiment_config import model_config
from dsv3_jax.layers.moe.ep import make_expert_parallel
from dsv3_jax.train import step as step_lib


def load_model_config(path: str):
    spec = importlib.util.spec_from_file_location("_gpu_check_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return model_config(module.get_config()).replace(moe_impl="ep", dtype="float32")


def loss_and_grad_fn(cfg, mesh, platform=None):
    """jit(params, router, batch) -> (loss, gradient global norm), the train step's loss, with the expert-parallel
    context of `mesh` on `platform` (default: this machine's)."""
    ctx = make_expert_parallel(cfg, mesh, platform=platform)

    def fn(params, router, batch):
        grad_fn = jax.value_and_grad(step_lib.loss_fn, has_aux=True)
        (loss, _), grads = grad_fn(params, {}, router, batch, cfg, 0.3, 1e-4, ctx)  # {}: no FP8 histories
        return loss, jnp.sqrt(sum(jnp.sum(g.astype(jnp.float32) ** 2) for g in jax.tree.leaves(grads)))
    return jax.jit(fn)


def inputs(cfg, batch: int, seq: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    tokens = jnp.asarray(rng.integers(0, cfg.vocab_size, (batch, seq + 1)), jnp.int32)
    variables = jax.jit(dsv3_jax.DeepSeekV3(cfg).init)(jax.random.key(seed), tokens[:, :-1])
    router = jax.tree.map(lambda b: jnp.asarray(rng.normal(size=b.shape) * 0.1, jnp.float32), variables["router"])
    return nn.unbox(variables["params"]), router, {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}


def run_paths(cfg, params, router, batch, mesh, payloads=("compute", "fp8"),
              dispatches=("ragged", "all_to_all")) -> dict:
    """{(dispatch, payload): (loss, grad norm)} for the forced EP paths and the local path."""
    out = {}
    with jax.default_matmul_precision("highest"):
        for payload in payloads:
            for dispatch in dispatches:
                c = cfg.replace(ep_dispatch=dispatch, ep_payload=payload)
                out[(dispatch, payload)] = tuple(float(v) for v in loss_and_grad_fn(c, mesh)(params, router, batch))
        local = loss_and_grad_fn(cfg.replace(ep_dispatch="auto"), mesh)
        out[("local", "compute")] = tuple(float(v) for v in local(params, router, batch))
    return out


def export_check(cfg, params, router, batch) -> bool:
    """Lower the ragged path's loss and gradient for CUDA on an expert axis over ALL local devices (works
    without a GPU, e.g. on 8 fake CPU devices), compute and FP8 payloads; True if every lowering holds the
    native ragged all-to-all for dispatch, combine and their transposes."""
    mesh = sharding.make_mesh({"expert": -1})
    unchecked = [jax.export.DisabledSafetyCheck.custom_call("ragged_all_to_all")]  # not serialized
    ok = True
    for payload in ("compute", "fp8"):
        fn = loss_and_grad_fn(cfg.replace(ep_dispatch="ragged", ep_payload=payload), mesh, platform="gpu")
        exported = jax.export.export(fn, platforms=["cuda"], disabled_checks=unchecked)(params, router, batch)
        n = re.findall(r"custom_call @(\w+)", exported.mlir_module()).count("ragged_all_to_all")
        print(f"CUDA lowering, expert axis {dict(mesh.shape)['expert']}, {payload} payload: "
              f"{n} ragged_all_to_all")
        ok &= n >= 4
    return ok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/tiny.py")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--rtol", type=float, default=1e-4)
    ap.add_argument("--export", action="store_true", help="lower for CUDA instead of running")
    args = ap.parse_args(argv)
    cfg = load_model_config(args.config)
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])  # expert axis of size 1
    params, router, batch = inputs(cfg, args.batch, args.seq)
    print(f"device {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}")
    if args.export:
        ok = export_check(cfg, params, router, batch)
        print("PASS" if ok else "FAIL")
        return 0 if ok else 1
    if jax.default_backend() == "cpu":
        print("note: on CPU the 'ragged' path runs an all_to_all emulation of ragged_all_to_all")
    out = run_paths(cfg, params, router, batch, mesh)
    for (dispatch, payload), (loss, gnorm) in out.items():
        print(f"{dispatch:>10} {payload:>7}: loss {loss:.7f}  grad norm {gnorm:.7f}")
    ok = True
    for a, b in [(("ragged", "compute"), ("all_to_all", "compute")), (("ragged", "compute"), ("local", "compute")),
                 (("ragged", "fp8"), ("all_to_all", "fp8"))]:
        good = bool(np.allclose(out[a], out[b], rtol=args.rtol))
        ok &= good
        print(f"{'/'.join(a)} vs {'/'.join(b)}: {'ok' if good else 'MISMATCH'} (rtol {args.rtol})")
    fp8_gap = abs(out[("ragged", "fp8")][0] / out[("ragged", "compute")][0] - 1)
    print(f"FP8 dispatch vs compute-dtype dispatch: relative loss difference {fp8_gap:.2e}")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
