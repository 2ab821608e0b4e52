"""Dense SwiGLU MLP: w2(silu(w1 x) ⊙ w3 x) (docs/paper.md §2; w1=gate_proj, w3=up_proj, w2=down_proj).

Used for the first n_dense_layers and for the shared experts of DeepSeekMoE.
Legend: D model dim, F hidden dim.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax

from dsv3_jax.layers.linear import fp8_kernel, matmul_fn, normal_init, weight
from dsv3_jax.layers.recompute import regions_on


def swiglu(x, w1, w2, w3, mm):
    """x [..., D] -> [..., D] with w1, w3 [D, F] and w2 [F, D]."""
    return mm(jax.nn.silu(mm(x, w1)) * mm(x, w3), w2)


class MLP(nn.Module):
    """Holds w1, w2, w3 of a SwiGLU MLP with `hidden` channels."""

    cfg: "object"
    hidden: int
    mesh: Any = None  # the activation mesh: weights gathered at use (linear.weight)

    @nn.compact
    def __call__(self, x, norm=None):
        """x [..., D] -> [..., D]. norm: an RMSNorm applied to x first; under ModelConfig.remat="paper" it
        shares a recompute region with w1 and w3 (layers/recompute.py), so its output is not kept."""
        c, f = self.cfg, self.hidden

        def w(name, shape, axes):
            return fp8_kernel(self, name, weight(self, name, shape, axes, normal_init(c.init_std), self.mesh), c)

        w1 = w("w1", (c.dim, f), ("embed", "mlp"))
        w2 = w("w2", (f, c.dim), ("mlp", "embed"))
        w3 = w("w3", (c.dim, f), ("embed", "mlp"))
        mm = matmul_fn(c)
        if norm is None:
            return swiglu(x, w1, w2, w3, mm)
        a1, a3 = norm(x, then=lambda h: (mm(h, w1), mm(h, w3)), recompute=regions_on(c))
        return mm(jax.nn.silu(a1) * a3, w2)
