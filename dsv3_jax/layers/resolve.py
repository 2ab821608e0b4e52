"""Set-up resolution of the config choices that depend on the platform ("auto"), done once and logged once.

`DeepSeekV3.setup` calls `resolve_config(cfg)`, so the layers below only ever see concrete names and never
ask which backend they run on. Resolved here: ModelConfig.moe_impl="auto" (layers/moe/experts.py). The
expert-parallel exchange (ModelConfig.ep_dispatch) is resolved with the mesh, by
layers/moe/ep.make_expert_parallel, which the set-up code calls.
"""

from __future__ import annotations

import functools
import logging

import jax

from dsv3_jax.layers.moe import experts

log = logging.getLogger("dsv3_jax")


@functools.cache
def platform() -> str:
    """The default backend's platform name ("cpu", "gpu", "tpu"), read once."""
    return jax.default_backend()


@functools.lru_cache(maxsize=256)
def resolve_config(cfg, platform_name: str | None = None):
    """cfg with its "auto" choices replaced by the concrete implementation for the platform."""
    name = platform_name or platform()
    moe_impl = experts.resolve(cfg.moe_impl, name, cfg.fp8)
    if moe_impl == cfg.moe_impl:
        return cfg
    _log_choice("moe_impl", cfg.moe_impl, moe_impl, name)
    return cfg.replace(moe_impl=moe_impl)


@functools.cache
def _log_choice(field: str, asked: str, chosen: str, platform_name: str) -> None:
    log.info("ModelConfig.%s=%r resolves to %r on %s", field, asked, chosen, platform_name)
