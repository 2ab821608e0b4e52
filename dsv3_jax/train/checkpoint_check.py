"""Validate a checkpoint before reading its arrays, and turn orbax/tensorstore failures into ONE clear error.

A checkpoint step directory (train/checkpoint.py) holds `state/` (orbax: `_METADATA`, the tree of saved
leaves; array data in an OCDBT/zarr store) and `data/metadata` (the data iterator's JSON state). Before any
array data is read:
  * `state/_METADATA` must exist and parse, and list exactly the leaves the model's state has (a partial
    restore needs only its own leaves);
  * every leaf to read must have readable zarr metadata, and its stored shape and dtype must be what the model
    expects (an error names the parameter; orbax's own message names none and suggests `strict=False`).
Two kinds of error come out: `CheckpointMismatch` (the checkpoint is fine but belongs to another model: an
older checkpoint won't help) and `CheckpointError` (missing, truncated or corrupt files, or non-finite
values: train/restore.py falls back to the previous checkpoint).
"""

from __future__ import annotations

import json
import os
import re
import sys

import jax
import numpy as np

STATUS = re.compile(r"\b(OUT_OF_RANGE|DATA_LOSS|NOT_FOUND|INVALID_ARGUMENT|FAILED_PRECONDITION|UNKNOWN|INTERNAL|"
                    r"UNAVAILABLE|PERMISSION_DENIED)\b")
ARRAY_KEY = re.compile(r'"([^"/]+)/[^"]*" in OCDBT|Metadata at "([^"/]+)/')


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: `step`, the file or array (`where`) and the `cause`."""

    def __init__(self, step: int, where: str, cause: str):
        self.step, self.where, self.cause = step, where, cause
        super().__init__(f"checkpoint {step}: {where}: {cause}")


class CheckpointMismatch(ValueError):
    """A readable checkpoint whose leaves do not match the model being restored (a config change)."""


def leaf_name(path) -> str:
    """Orbax's parameter name of a key path: the keys joined by '.' (e.g. 'opt_state.1.mu.embed.embedding')."""
    parts = []
    for k in path:
        for attr in ("key", "idx", "name"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return ".".join(parts)


def expected_leaves(target: dict) -> dict[str, tuple[tuple[int, ...], str]]:
    """{leaf name: (shape, dtype name)} of an abstract target tree."""
    return {leaf_name(p): (tuple(x.shape), str(np.dtype(x.dtype)))
            for p, x in jax.tree_util.tree_flatten_with_path(target)[0]}


def read_tree_metadata(step: int, state_dir: str) -> dict:
    """state/_METADATA as a dict; CheckpointError when it is missing or not valid JSON."""
    path = os.path.join(state_dir, "_METADATA")
    if not os.path.isdir(state_dir):
        raise CheckpointError(step, os.path.basename(state_dir) + "/", "directory missing (incomplete checkpoint)")
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(step, "state/_METADATA", "file missing (incomplete checkpoint)") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(step, "state/_METADATA", f"unreadable or not valid JSON ({e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("tree_metadata"), dict):
        raise CheckpointError(step, "state/_METADATA", "no 'tree_metadata' entry (not an orbax pytree checkpoint)")
    return meta


def saved_leaf_names(meta: dict) -> set[str]:
    """The names of the array leaves listed in _METADATA (empty nodes such as optax's EmptyState excluded)."""
    names = set()
    for entry in meta["tree_metadata"].values():
        value = entry.get("value_metadata", {})
        if value.get("skip_deserialize") or value.get("value_type") == "None":
            continue
        names.add(".".join(str(k["key"]) for k in entry["key_metadata"]))
    return names


def _list(names, n=5) -> str:
    names = sorted(names)
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def check_leaves(step: int, saved: set[str], want: dict, partial: bool) -> None:
    """CheckpointMismatch when the saved leaves are not the model's (for `partial`, when some are missing)."""
    missing, extra = set(want) - saved, (set() if partial else saved - set(want))
    if missing or extra:
        parts = ([f"missing {len(missing)} leaves the model has ({_list(missing)})"] if missing else []) + \
                ([f"has {len(extra)} leaves the model lacks ({_list(extra)})"] if extra else [])
        raise CheckpointMismatch(f"checkpoint {step} does not match the model being restored: it is "
                                 + "; it ".join(parts) + ". The model config differs from the one this checkpoint "
                                 "was trained with (compare workdir/config.json)")


def _store_spec(state_dir: str, name: str, meta: dict) -> dict:
    driver = "zarr3" if meta.get("use_zarr3") else "zarr"
    if meta.get("use_ocdbt", True):
        kv = {"driver": "ocdbt", "base": "file://" + os.path.abspath(state_dir) + "/", "path": name + "/"}
    else:
        kv = {"driver": "file", "path": os.path.join(os.path.abspath(state_dir), name) + "/"}
    return {"driver": driver, "kvstore": kv}


def check_shapes(step: int, state_dir: str, meta: dict, want: dict) -> None:
    """Stored shape and dtype of every wanted leaf (its zarr metadata only, no array data) against the model."""
    import tensorstore as ts

    # The model's own parameters first: they are what a reader of the error recognises.
    order = sorted(want, key=lambda n: (not n.startswith("params."), n))
    futures = {name: ts.open(_store_spec(state_dir, name, meta), open=True, read=True) for name in order}
    wrong = []
    for name, fut in futures.items():
        try:
            store = fut.result()
        except Exception as e:  # noqa: BLE001 - tensorstore raises ValueError or its own status errors
            raise CheckpointError(step, f"state/ array {name}", error_cause(e)) from None
        got = (tuple(store.shape), str(np.dtype(store.dtype.numpy_dtype)))
        if got != want[name]:
            wrong.append(f"{name}: stored {got[0]} {got[1]}, the model has {want[name][0]} {want[name][1]}")
    if wrong:
        raise CheckpointMismatch(f"checkpoint {step} does not match the model being restored: "
                                 + "; ".join(wrong[:5]) + (f"; and {len(wrong) - 5} more" if len(wrong) > 5 else "")
                                 + ". The model config differs from the one this checkpoint was trained with "
                                 "(compare workdir/config.json)")


def validate(step: int, step_dir: str, target: dict, partial: bool = False) -> None:
    """All the checks of the module docstring for restoring `target` (an abstract tree) from `step_dir/state`."""
    state_dir = os.path.join(step_dir, "state")
    meta = read_tree_metadata(step, state_dir)
    want = expected_leaves(target)
    check_leaves(step, saved_leaf_names(meta), want, partial)
    check_shapes(step, state_dir, meta, want)


def read_data_state(step: int, step_dir: str) -> dict:
    """data/metadata: the data iterator's JSON state; CheckpointError when missing or corrupt."""
    path = os.path.join(step_dir, "data", "metadata")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise CheckpointError(step, "data/metadata", "file missing (incomplete checkpoint)") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(step, "data/metadata", f"unreadable or not valid JSON ({e})") from None


def error_cause(exc: BaseException) -> str:
    """The root cause of an orbax/tensorstore failure on one line: status, array and reason, without the
    multi-kilobyte tensorstore spec."""
    chain, e = [], exc
    while e is not None and len(chain) < 20:
        chain.append(e)
        e = e.__cause__ or e.__context__
    best = next((x for x in reversed(chain) if STATUS.search(str(x))), chain[-1])
    text = str(best).split(" [tensorstore_spec")[0].split("See full TensorStore details")[0]
    text = " ".join(text.split())
    return (text[:400] + "...") if len(text) > 400 else text or type(best).__name__


def failing_array(cause: str) -> str | None:
    """The array named in a tensorstore error message, if any."""
    m = ARRAY_KEY.search(cause)
    return (m.group(1) or m.group(2)) if m else None


def quiet_closed_loop_noise() -> None:
    """Drop the two reports (via sys.unraisablehook) a failed orbax read leaves behind for every read still in
    flight: tensorstore callbacks into the closed event loop ("RuntimeError: Event loop is closed") and orbax
    re-raising the GeneratorExit of each abandoned read coroutine. Both are benign echoes of the one failure
    already raised, and hundreds of lines of them buried its cause. Every other report reaches the previous hook."""
    previous = sys.unraisablehook
    if getattr(previous, "_dsv3_quiet", False):
        return

    def hook(unraisable):
        exc = unraisable.exc_value
        if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
            return
        if exc is not None and isinstance(exc.__cause__, GeneratorExit):
            return
        previous(unraisable)

    hook._dsv3_quiet = True
    sys.unraisablehook = hook
