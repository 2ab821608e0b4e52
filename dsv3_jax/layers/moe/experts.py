"""The expert-backend registry (ModelConfig.moe_impl): how the routed experts' SwiGLU FFNs run.

Every backend computes Σ_k g_k · FFN_{e_k}(x) for each token exactly, with no capacity and no token dropped
(V3 report §2.1.2 "No Token-Dropping"); they differ in speed and memory only:

    "dense"    every expert on every token, masked by the routing weights (the per-expert reference)
    "blocked"  sort by expert + a loop of per-block GEMMs (fast on XLA:CPU)   dispatch.py, block_loop.py
    "ragged"   sort by expert + grouped GEMM jax.lax.ragged_dot (GPU; the FP8 GEMMs)   dispatch.py
    "ep"       expert parallelism over the mesh's expert axis (all-to-all exchange)    ep.py
    "auto"     resolved once at set-up (layers/resolve.py): "ragged" on GPU/TPU or with FP8, "blocked" on CPU

A backend is `fn(x [N,D], weights [N,k], experts [N,k], w1, w2, w3, *, cfg, ctx, gmm) -> (y [N,D], comm)`
with comm the expert-parallel byte counts [len(node_routing.COMM_FIELDS)] or None. w1/w3 [E,D,F], w2 [E,F,D]
(MetaKernel-wrapped under the per-tensor delayed FP8 recipe, for the backends with `delayed_fp8`); gmm is
the grouped GEMM of the FP8 recipe (layers/linear.grouped_matmul_fn). A backend may also have a `fused` form,
`fused(x, weights, experts, w13, w2, *, cfg, per_expert=None) -> (y, comm)` over the gate and up projections as
one [E, D, 2F] matrix (the inference variables of layer_split.py; per_expert: the same weights as E separate
(w13 [D, 2F], w2 [F, D]) arrays where the variables hold them). Adding a backend: its implementation
file plus one `register` line here.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax.numpy as jnp

from dsv3_jax.layers.linear import kernel_of
from dsv3_jax.layers.moe import dispatch, ep
from dsv3_jax.registry import Registry


class ExpertBackend(NamedTuple):
    fn: Callable
    fp8: bool = False  # runs the FP8 grouped GEMM (ModelConfig.fp8 != "none")
    delayed_fp8: bool = False  # also the per-tensor delayed recipe (its weights carry amax histories)
    fused: Callable | None = None  # the same over w13 = w1 | w3 [E, D, 2F] (module docstring)


EXPERT_BACKENDS = Registry("moe_impl", "expert backend", aliases=("auto",))


def _plain(impl):
    """A single-device dispatch.py implementation as a backend (bare kernels, no comm bytes)."""
    def fn(x, weights, experts, w1, w2, w3, *, cfg, ctx, gmm):
        del ctx, gmm
        return impl(x, weights, experts, w1, w2, w3, jnp.dtype(cfg.dtype)), None
    return fn


def _blocked_fused(x, weights, experts, w13, w2, *, cfg, per_expert=None):
    return dispatch.routed_experts_blocked(x, weights, experts, w13, w2, None, jnp.dtype(cfg.dtype),
                                           per_expert=per_expert), None


def _ragged(x, weights, experts, w1, w2, w3, *, cfg, ctx, gmm):
    del ctx
    return dispatch.routed_experts_ragged(x, weights, experts, w1, w2, w3, jnp.dtype(cfg.dtype), gmm), None


def _ep(x, weights, experts, w1, w2, w3, *, cfg, ctx, gmm):
    ctx = ctx or ep.ExpertParallel()  # no context: one device, the exact grouped GEMM
    return ep.routed_experts_ep(x, weights, experts, *map(kernel_of, (w1, w2, w3)), cfg, ctx, gmm)


EXPERT_BACKENDS.register("dense", ExpertBackend(_plain(dispatch.routed_experts_dense)))
EXPERT_BACKENDS.register("blocked", ExpertBackend(_plain(dispatch.routed_experts_blocked), fused=_blocked_fused))
EXPERT_BACKENDS.register("ragged", ExpertBackend(_ragged, fp8=True, delayed_fp8=True))
EXPERT_BACKENDS.register("ep", ExpertBackend(_ep, fp8=True))


@EXPERT_BACKENDS.rule
def _fp8_needs_grouped_gemm(cfg) -> None:
    if cfg.fp8 == "none" or cfg.moe_impl == "auto":
        return
    backend = EXPERT_BACKENDS.get(cfg.moe_impl)
    if not backend.fp8 or (cfg.fp8 == "per_tensor_delayed" and not backend.delayed_fp8):
        ok = [n for n in EXPERT_BACKENDS if EXPERT_BACKENDS.get(n).fp8 and
              (cfg.fp8 != "per_tensor_delayed" or EXPERT_BACKENDS.get(n).delayed_fp8)]
        raise ValueError(f"ModelConfig.moe_impl: FP8 experts use the grouped FP8 GEMM; fp8={cfg.fp8!r} needs "
                         f"moe_impl in {ok + ['auto']}, got {cfg.moe_impl!r}")


def resolve(moe_impl: str, platform: str, fp8: str) -> str:
    """The concrete backend for ModelConfig.moe_impl on `platform` ("auto": see the module docstring)."""
    EXPERT_BACKENDS.check(moe_impl)
    return ep.local_backend(platform, fp8) if moe_impl == "auto" else moe_impl


def backend(name: str) -> ExpertBackend:
    return EXPERT_BACKENDS.get(name)
