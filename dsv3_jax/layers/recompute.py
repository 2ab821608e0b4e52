"""Recompute regions of ModelConfig.remat="paper": the paper's selective recomputation (V3 report §3.2.3,
"Recomputation of RMSNorm and MLA Up-Projection"; docs/architecture.md "Remat policies").

A jax.checkpoint policy alone cannot express "recompute the RMSNorm output": the norm's consumers (the matmuls
that read it) keep their input for their own backward, and a policy that refuses the norm's output by name
still saves the norm's fp32 intermediates in its place (same bytes). So under "paper" the block itself is not
rematerialized; instead each RMSNorm runs together with its consumers' first step inside one `region`
(a jax.checkpoint that saves nothing inside): the region's residuals are its inputs (the residual stream, the
small MLA latents, the weights), its outputs are the consumers' results, and the norm output lives only inside
it. Every other activation is kept as under "none".
"""

from __future__ import annotations

from typing import Callable

import jax

PAPER = "paper"  # the ModelConfig.remat name (registered in layers/block.py REMAT_POLICIES)


def regions_on(cfg) -> bool:
    """Whether `cfg` (a ModelConfig) asks for the paper's recompute regions."""
    return getattr(cfg, "remat", "none") == PAPER


def region(fn: Callable, on: bool = True) -> Callable:
    """fn, recomputed in the backward from its inputs when `on` (nothing inside it is kept); else fn itself."""
    return jax.checkpoint(fn, prevent_cse=False) if on else fn
