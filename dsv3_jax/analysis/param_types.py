"""ParamCounts: a model's parameters split the way the cost model needs them, and the activation convention.

Activated-per-token convention (one rule for every model):
    activated = every parameter a token multiplies by, i.e. all non-routed parameters (attention, norms,
    dense FFNs, gates, shared experts, the output head) + n_activated_experts / n_routed_experts of the
    routed experts of each MoE layer. The embedding table counts 0: a token's lookup reads one row and does
    no multiply-add. The output head counts in full. MTP modules are excluded (reported separately).

Why the embedding counts 0: DeepSeek's README says V3's 36.7B activated "includes 0.9B embedding and 0.9B
output head", but counting both gives 37.55B (+2.3%) for V3 and 2.66B (+11%) for V2-Lite's published 2.4B.
Only the count without the embedding table matches both (V3 36.63B, V2-Lite 2.45B), so that is the rule.
This also makes `activated` exactly the N of the 6·N training-FLOPs term (flops.py).
MTP: `mtp_activated` (0.69B for V3) excludes the shared embedding and head; docs/paper.md's "2.4B activated" for
the MTP module matches only with both added (0.69 + 2 × 0.93 = 2.54B), so it is not one of our checks.
"""

from __future__ import annotations

import dataclasses

from dsv3_jax.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class ParamCounts:
    """Parameter counts (numbers of values, not bytes) of one model."""

    config: ModelConfig
    embedding: int  # V·D token embedding table
    head: int  # output projection D·V (never tied in DeepSeek-V2/V3)
    final_norm: int
    dense_layers: int  # all parameters of the n_dense_layers blocks
    moe_nonrouted: int  # attention, norms, gate, shared experts of the MoE blocks
    routed: int  # all routed-expert parameters of the main model
    mtp_nonrouted: int  # MTP modules without their routed experts (embedding/head shared, not counted)
    mtp_routed: int
    router_state: int = 0  # aux-loss-free biases ('router' collection, not trainable): not in any total
    source: str = "formula"  # "model" (jax.eval_shape of DeepSeekV3) or "formula" (param_formula.py)

    @property
    def active_fraction(self) -> float:
        """Fraction of routed experts one token uses (V3: 8/256)."""
        c = self.config
        return c.n_activated_experts / c.n_routed_experts if c.n_routed_experts else 0.0

    @property
    def total(self) -> int:
        """All parameters of the main model (MTP excluded), as DeepSeek's 671B."""
        return (self.embedding + self.head + self.final_norm + self.dense_layers + self.moe_nonrouted
                + self.routed)

    @property
    def routed_activated(self) -> int:
        return round(self.routed * self.active_fraction)

    @property
    def activated(self) -> int:
        """Parameters one token multiplies by in the main model (see the module docstring)."""
        return (self.head + self.final_norm + self.dense_layers + self.moe_nonrouted
                + self.routed_activated)

    @property
    def mtp(self) -> int:
        """Unique parameters of all MTP modules (V3: 11.5B, docs/paper.md §1)."""
        return self.mtp_nonrouted + self.mtp_routed

    @property
    def mtp_activated(self) -> int:
        """Parameters a token multiplies by inside the MTP modules (shared embedding/head excluded)."""
        return self.mtp_nonrouted + round(self.mtp_routed * self.active_fraction)

    @property
    def total_with_mtp(self) -> int:
        """What a checkpoint holds: V3 671B + MTP (HF says 685B with MTP's own copies of embedding/head)."""
        return self.total + self.mtp
