"""Typed config blocks: build a frozen dataclass from a mapping and validate its fields, naming each one.

Shared by the run configs (experiment_config.TrainConfig / MeshConfig, data/config.DataConfig): the dataclass
holds the defaults, `build` rejects unknown keys (with a close spelling when there is one) and values of the
wrong type, and `check` applies per-field rules, so every error reads `block.field=value: what is expected`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from typing import Any, Callable, Mapping

Rules = Mapping[str, tuple[Callable[[Any], bool], str]]

# The annotation (a string under `from __future__ import annotations`) -> accepted Python types.
_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}


def as_mapping(d: Any) -> dict[str, Any]:
    """A plain dict of a ConfigDict, a mapping or None."""
    if d is None:
        return {}
    if hasattr(d, "to_dict"):
        return d.to_dict()
    if not isinstance(d, Mapping):
        raise ValueError(f"expected a mapping or ConfigDict, got {type(d).__name__}")
    return dict(d)


def unknown_keys_error(block: str, unknown, known) -> ValueError:
    """`block: unknown field(s) [...]` with the closest known spelling of each."""
    hints = []
    for k in unknown:
        close = difflib.get_close_matches(str(k), list(known), n=1)
        if close:
            hints.append(f"{block}.{k} -> did you mean {block}.{close[0]}?")
    hint = f" ({'; '.join(hints)})" if hints else ""
    return ValueError(f"{block}: unknown field(s) {sorted(map(str, unknown))}{hint}; known fields are "
                      f"{sorted(known)}")


def build(cls, block: str, d: Any):
    """cls(**d) for a frozen dataclass `cls`; missing keys take the dataclass defaults."""
    values = as_mapping(d)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in values if k not in names]
    if unknown:
        raise unknown_keys_error(block, unknown, names)
    kinds = {f.name: f.type for f in dataclasses.fields(cls)}
    for k, v in values.items():  # JSON and ConfigDicts may give an int for a float field
        if kinds[k] == "float" and isinstance(v, int) and not isinstance(v, bool):
            values[k] = float(v)
    return cls(**values)


def check_types(block: str, obj) -> None:
    """ValueError naming the first field whose value is not of its annotated type (bool is not an int)."""
    for f in dataclasses.fields(obj):
        v, want = getattr(obj, f.name), _TYPES.get(f.type)
        if want is None:
            continue
        bad = not isinstance(v, want) or (isinstance(v, bool) and bool not in want)
        if not bad and f.type == "float" and not math.isfinite(v):
            raise ValueError(f"{block}.{f.name}={v!r}: must be a finite number")
        if bad:
            raise ValueError(f"{block}.{f.name}={v!r}: must be of type {f.type}, got {type(v).__name__}")


def check(block: str, obj, rules: Rules) -> None:
    """check_types, then each `field: (predicate, what is expected)` rule."""
    check_types(block, obj)
    for name, (ok, expected) in rules.items():
        v = getattr(obj, name)
        if not ok(v):
            raise ValueError(f"{block}.{name}={v!r}: {expected}")
