"""Variables with each unrolled stack's layers as separate arrays. Inference: `split_layers` once, then pass the
result wherever variables go (generate, prefill, decode_step, speculative decoding). Training: `split_params`
gives the layout the trainer steps in (params and optimizer moments per layer, train/state.py), `join_params`
the stacked tree again inside the step and wherever a checkpoint is written.

Why: a scanned stack keeps its layers in one [L, ...] array. Where the stack is unrolled (small models,
ModelConfig.scan_unroll), layer i's weights are a slice of that array, and XLA:CPU copies the slice before any
matmul that cannot read it in place (the batched expert matmuls: measured about a third of a decoding step
at 16 sequences, 3-18% of a forward+backward step of the side-by-side model, whose gradients are also
concatenated back into [L, ...] arrays). Given the layers as separate arguments, the model's own stacking inside the
jitted step is undone by XLA's slice-of-concatenate simplification, so every matmul reads its parameter
buffer directly. The numbers are identical: `join_layers` rebuilds the same stacked tree inside the step.
Stacks that are not unrolled stay stacked (their loop reads layer i with a dynamic slice either way).

The routed experts' gate and up projections are also fused, w13 = w1 | w3 [E, D, 2F] in place of w1 and w3,
where the expert backend has a fused form (moe_impl "blocked", no FP8: `fuses_experts`): a decoding step's
capacity batch then multiplies [E, C, D] by one [E, D, 2F] matrix instead of two [E, D, F] ones, which XLA:CPU
streams faster (measured: a batch-16 decoding step 8-16% shorter, the same tokens), and a lone token's gathered
blocks gather one [D, 2F] block per expert instead of two [D, F] ones (single-token decoding 9-25% shorter).
Each output is the same dot product, equal to float32 rounding. Stacked or split, join_layers keeps w13; the
model reads it (moe/layer.py).

Where the MoE stack unrolls, every routed expert's w13 and w2 are also kept as arrays of their own
(`copies_experts`, params .../routed_experts/per_expert/{e}/{w13, w2}): XLA copies whatever it cuts out of a
stacked array, a gathered block or a static slice alike, so only separate buffers can be read in place. A lone
token's experts (and two tokens') then run as one switch per assignment over them (layers/moe/block_switch.py)
instead of gathered blocks (measured: 64-token greedy generations of the side-by-side model in 0.86x the time at
batch 1 and 0.77x at batch 2, the same tokens); larger batches keep the capacity batch over the stacked arrays,
which one batched matmul streams faster than E separate ones (1.3x the time as 16 per-expert products at 8 rows
each). The cost is one more copy of the routed experts' weights.

With no FP8 recipe, every MLA module also gets its absorbed weights W_UK [H, N, C] and W_UV [H, C, V]
precomputed beside wkv_b (`absorbs_mla`; layers/mla.py:absorbed_weights): the latent-cache attention batches
its per-head products over heads, and cut from wkv_b's [C, H·(N+V)] layout every step those operands are
transposed copies (measured, two runs of the side-by-side model: a batch-16 decoding step 0-6% shorter,
batch 1 3-5%, the same tokens).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from dsv3_jax import param_tree as pt
from dsv3_jax.layers.block import scan_unroll
from dsv3_jax.layers.mla import absorbed_weights
from dsv3_jax.layers.moe import experts as expert_backends
from dsv3_jax.layers.resolve import resolve_config


@jax.tree_util.register_pytree_node_class
class LayerSplit:
    """Variables whose unrolled stacks hold a tuple of per-layer arrays in place of each [L, ...] leaf."""

    def __init__(self, tree: dict):
        self.tree = tree

    def tree_flatten(self):
        return (self.tree,), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        del aux
        return cls(*children)


def unrolled_stacks(cfg) -> set[str]:
    """The stacks that split (module docstring): those the model unrolls completely (ModelConfig.scan_unroll)."""
    return {name for name, n in pt.stack_sizes(cfg).items() if scan_unroll(cfg.scan_unroll, n) == n}


def is_split(params) -> bool:
    """Whether a params-structured tree holds per-layer tuples (split_params)."""
    return any(isinstance(x, tuple) for x in jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, tuple)))


def mesh_split(mesh, entry) -> int:
    """Into how many parts a PartitionSpec entry (None, an axis name or a tuple of them) splits its dim."""
    names = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
    return math.prod(dict(mesh.shape).get(a, 1) for a in names)


def split_params(cfg, params):
    """A params tree, or any tree of its structure (an optimizer moment, the NamedShardings of either), with
    every leaf of an unrolled stack as a tuple of its L per-layer leaves; unchanged where no stack unrolls
    (a scanned model at real size). The same numbers: join_params(cfg, split_params(cfg, p)) == p bitwise."""
    sizes, unrolled = pt.stack_sizes(cfg), unrolled_stacks(cfg)

    def cut(name):
        n = sizes[name]

        def one(leaf):
            if isinstance(leaf, jax.sharding.NamedSharding):  # each layer's: the stack's, less the layer axis
                if leaf.spec and mesh_split(leaf.mesh, leaf.spec[0]) > 1:
                    raise ValueError(f"split_params: stack {name!r} has its layer axis sharded ({leaf.spec}); "
                                     "only a pipeline shards it, and a pipelined step keeps its stacks stacked")
                return (jax.sharding.NamedSharding(leaf.mesh, jax.sharding.PartitionSpec(*leaf.spec[1:])),) * n
            if not leaf.shape or leaf.shape[0] != n:
                raise ValueError(f"split_params: a leaf of stack {name!r} has shape {tuple(leaf.shape)}; expected "
                                 f"its {n} layers first")
            return tuple(leaf[i] for i in range(n))
        return one

    return {g: (jax.tree.map(cut(g), sub) if g in unrolled else sub) for g, sub in params.items()}


def join_params(cfg, params):
    """split_params undone (inside a jitted step: free, module docstring); a stacked tree is returned as it is."""
    if not is_split(params):
        return params
    unrolled, is_layers = unrolled_stacks(cfg), lambda a: isinstance(a, tuple)
    return {g: (jax.tree.map(jnp.stack, sub, is_leaf=is_layers) if g in unrolled else sub) for g, sub in params.items()}


def fuses_experts(cfg) -> bool:
    """Whether split_layers fuses the routed experts' w1 | w3 (module docstring): the resolved backend has a
    fused form and no FP8 recipe scales w1 and w3 separately."""
    return cfg.fp8 == "none" and expert_backends.backend(resolve_config(cfg).moe_impl).fused is not None


def _fuse_experts(tree):
    """Every routed-experts dict {w1, w2, w3} of the params tree as {w13 = w1 | w3, w2}."""
    if not isinstance(tree, dict):
        return tree
    if pt.ROUTED in tree and {"w1", "w3"} <= set(tree[pt.ROUTED]):
        routed = dict(tree[pt.ROUTED])
        w1, w3 = routed.pop("w1"), routed.pop("w3")
        tree = {**tree, pt.ROUTED: {**routed, pt.FUSED_UP: jnp.concatenate([w1, w3], axis=-1)}}
    return {k: _fuse_experts(v) for k, v in tree.items()}


def absorbs_mla(cfg) -> bool:
    """Whether split_layers precomputes MLA's absorbed weights (module docstring): with no FP8 recipe, whose
    operand views of wkv_b the latent path must quantize itself."""
    return cfg.fp8 == "none"


def _absorb_attention(cfg, tree):
    """Every MLA params dict (one holding wkv_b) with W_UK, W_UV added (stacked leaves keep their layer axes)."""
    if not isinstance(tree, dict):
        return tree
    if "wkv_b" in tree and "kv_norm" in tree:
        w_uk, w_uv = absorbed_weights(tree["wkv_b"], cfg.n_heads, cfg.qk_nope_head_dim)
        tree = {**tree, pt.ABSORBED_UK: w_uk, pt.ABSORBED_UV: w_uv}
    return {k: _absorb_attention(cfg, v) for k, v in tree.items()}


PER_EXPERT_MAX = 32  # per-expert copies up to this many routed experts: block_switch.py compiles E branches a
# switch (the side-by-side model, 16 experts: its batch-1 generation loop compiles in 4.1 s instead of 1.8 s)


def copies_experts(cfg) -> bool:
    """Whether split_layers adds per-expert copies of the fused routed experts (module docstring): they fuse,
    the MoE stack unrolls (a scanned stack would copy every expert's slice per layer) and E is small."""
    return (fuses_experts(cfg) and pt.MOE in unrolled_stacks(cfg) and cfg.n_routed_experts <= PER_EXPERT_MAX)


def _copy_experts(tree):
    """Every fused routed-experts dict {w13, w2} with PER_EXPERT {str(e): {w13, w2}} added: expert e's slices
    (the expert axis is third from last, after a stack's layer axis)."""
    if not isinstance(tree, dict):
        return tree
    routed = tree.get(pt.ROUTED)
    if isinstance(routed, dict) and pt.FUSED_UP in routed and "w2" in routed:
        w13, w2 = routed[pt.FUSED_UP], routed["w2"]
        copies = {str(e): {pt.FUSED_UP: w13[..., e, :, :], "w2": w2[..., e, :, :]} for e in range(w13.shape[-3])}
        tree = {**tree, pt.ROUTED: {**routed, pt.PER_EXPERT: copies}}
    return {k: _copy_experts(v) for k, v in tree.items()}


def split_layers(cfg, variables: dict, fuse: bool | None = None, absorb: bool | None = None,
                 per_expert: bool | None = None) -> LayerSplit:
    """`variables` ({'params', 'router', ...}) with every leaf of an unrolled stack cut into its L layers and,
    when `fuse` (default: `fuses_experts(cfg)`), the routed experts' w1 | w3 fused into w13 (a copy of those
    weights: drop the original if memory matters); when `absorb` (default: `absorbs_mla(cfg)`), MLA's W_UK and
    W_UV added beside wkv_b; when `per_expert` (default: `copies_experts(cfg)`; needs the fusion), every routed
    expert's w13 and w2 also as arrays of their own (one more copy of the routed experts' weights). Unfused
    and unabsorbed, the logits are bitwise those of `variables`; otherwise equal to float32 rounding (the
    products may sum in another order)."""
    if isinstance(variables, LayerSplit):
        return variables
    supported = fuses_experts(cfg)
    fused = supported if fuse is None else fuse
    if per_expert and not (fused and supported):
        raise ValueError("split_layers(per_expert=True): the per-expert copies are of the fused w13, so they need "
                         f"fuse=True and a config that fuses (fp8='none', moe_impl 'blocked'); got fuse={fuse}, "
                         f"fp8={cfg.fp8!r}, moe_impl={resolve_config(cfg).moe_impl!r}")
    if fuse and not supported:
        raise ValueError(f"split_layers(fuse=True): the routed experts fuse only with no FP8 recipe and a backend "
                         f"with a fused form ('blocked'); got fp8={cfg.fp8!r}, moe_impl="
                         f"{resolve_config(cfg).moe_impl!r}")
    if absorb and not absorbs_mla(cfg):
        raise ValueError(f"split_layers(absorb=True): precomputed absorbed MLA weights would skip the FP8 recipe's "
                         f"quantization of wkv_b; got fp8={cfg.fp8!r}")
    variables = nn.unbox(variables)
    if fused and pt.PARAMS in variables:
        variables = {**variables, pt.PARAMS: _fuse_experts(variables[pt.PARAMS])}
    if (absorbs_mla(cfg) if absorb is None else absorb) and pt.PARAMS in variables:
        variables = {**variables, pt.PARAMS: _absorb_attention(cfg, variables[pt.PARAMS])}
    if ((copies_experts(cfg) and fused) if per_expert is None else per_expert) and pt.PARAMS in variables:
        variables = {**variables, pt.PARAMS: _copy_experts(variables[pt.PARAMS])}
    return LayerSplit({col: split_params(cfg, tree) if isinstance(tree, dict) else tree
                       for col, tree in variables.items()})


def join_layers(cfg, variables):
    """The stacked variables again (inside a jitted step: free, see the module docstring), a fused w13 kept;
    anything that is not a LayerSplit is returned as it is."""
    if not isinstance(variables, LayerSplit):
        return variables
    return {col: join_params(cfg, tree) if isinstance(tree, dict) else tree for col, tree in variables.tree.items()}
