"""Move block-stack leaves between the train state's ZeRO layout and the executor's (rank, slot) rows in two
explicit, cheap steps (V3 report §3.2.1; the layout is train/layout.py's, the rows model_layout.py's).

Between steps a stacked leaf [L, ...] lives split over the whole mesh on its model dims (pipe, data, expert),
never on its layer axis L; the executor wants rows [R, slots, ...] split over `pipe` on R, each rank holding
its stages' layers whole (routed experts still split over `expert`). Left to itself GSPMD converts between the
two by replicating (an "involuntary full rematerialization" of the whole stack, docs/paper.md §8), so:

    to rows    take the rows' layers (a local gather: L is not split)        [R, slots, ...]  state dims
               all-to-all over pipe: R split over pipe, the dims keep their data-parallel split only
               (the executor's own placement then all-gathers the data-parallel split)
    from rows  (gradients: already summed over the data-parallel axes, so replicated there)
               slice the dims to their data-parallel split (local), all-to-all over pipe back to the dims,
               take each layer's home row (local)

`spec` is the leaf's state PartitionSpec; a spec that splits L itself (tiny test models) falls back to GSPMD.
Legend: L layers of a stack, R rows (ranks × slots per rank), slots the layers a stage holds.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P


def _axes(entry) -> tuple[str, ...]:
    return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)


def _entry(axes: tuple[str, ...]):
    return None if not axes else axes[0] if len(axes) == 1 else axes


def _without(dims, axis: str) -> list:
    return [_entry(tuple(a for a in _axes(d) if a != axis)) for d in dims]


def _place(x, mesh, spec: P):
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def _explicit(spec: P | None, ndim: int) -> list | None:
    """The model dims' entries of a stacked leaf's spec, or None when L is split (GSPMD's way then)."""
    if spec is None:
        return None
    entries = list(tuple(spec)) + [None] * (ndim - len(tuple(spec)))
    return None if _axes(entries[0]) else entries[1:]


def to_rows(a, index, spec: P | None, mesh, pipe: str):
    """Stack leaf a [L, ...] -> rows [R, slots, ...] = a[index] (index int [R, slots]), R split over pipe."""
    rows = jnp.take(a, jnp.asarray(index.reshape(-1)), axis=0).reshape(index.shape + a.shape[1:])
    dims = _explicit(spec, a.ndim)
    if dims is None:
        return rows
    rows = _place(rows, mesh, P(None, None, *dims))
    return _place(rows, mesh, P(pipe, None, *_without(dims, pipe)))


def from_rows(g, rows, slots, spec: P | None, mesh, pipe: str):
    """Row leaf g [R, slots, ...] (R split over pipe) -> stack leaf [L, ...] = g[rows[l], slots[l]]."""
    dims = _explicit(spec, g.ndim - 1)
    if dims is not None:
        g = _place(g, mesh, P(pipe, None, *_without(dims, pipe)))
        g = _place(g, mesh, P(None, None, *dims))
    out = g[jnp.asarray(rows), jnp.asarray(slots)]
    return out if dims is None else _place(out, mesh, P(None, *dims))
