"""Resume checks that run before anything is written to the workdir.

The config a workdir's checkpoints were trained with is workdir/config.json (train/loop.py writes it only
after a successful restore or a fresh init, so a refused resume leaves it alone). A rerun compares it with the
new config field by field:
  * a model change (shape-changing or not: score_func, route_scale, n_limited_groups, ...), a data change
    (which documents, how they are split) or train.bf16_moments (the optimizer state's dtype) is refused with
    an error listing the fields, unless train.allow_config_change names every one of them;
  * any other train or mesh change (steps, lr, intervals, a new mesh: checkpoints move between meshes) is
    allowed and logged;
  * data.backend (the same batches either way, data/pipeline.py), train.allow_config_change and
    train.restore_step (resume controls, not run settings) are not compared.
train.restore_step=N is applied once: when the saved config already has the same restore_step, the rerun
resumes from the newest checkpoint instead of rolling back to N again.
"""

from __future__ import annotations

import json
import os

from dsv3_jax.experiment_config import ExperimentConfig, flat_fields, typed_blocks

NOT_COMPARED = ("data.backend", "train.allow_config_change", "train.restore_step")
GUARDED_BLOCKS = ("model.", "data.")
GUARDED_FIELDS = ("train.bf16_moments",)


def saved_config(workdir: str) -> dict | None:
    """The typed blocks of workdir/config.json (each block validated), or None when there is none."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return typed_blocks(json.load(f))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read the saved experiment config ({e}); it describes the "
                         "checkpoints in this workdir, so fix or remove it (or use a new --workdir)") from None


def config_changes(saved: dict, new: ExperimentConfig) -> list[tuple[str, object, object]]:
    """(field, saved value, new value) for every compared field that differs."""
    old, now = flat_fields(saved), flat_fields(new)
    return [(k, old.get(k), now[k]) for k in sorted(now) if k not in NOT_COMPARED and old.get(k) != now[k]]


def check_config(saved: dict | None, new: ExperimentConfig, workdir: str) -> list[str]:
    """The allowed changes as log lines; ValueError listing every refused one (see the module docstring)."""
    if saved is None:
        return [f"warning: {os.path.join(workdir, 'config.json')} is missing, so the new config cannot be "
                "compared with the checkpoints' (the restore still checks every shape)"]
    changes = config_changes(saved, new)
    allowed = set(new.train.allowed_changes)
    guarded = lambda k: k.startswith(GUARDED_BLOCKS) or k in GUARDED_FIELDS
    refused = [c for c in changes if guarded(c[0]) and c[0] not in allowed]
    if refused:
        listing = "; ".join(f"{k}: saved {a!r}, now {b!r}" for k, a, b in refused)
        names = ",".join(k for k, _, _ in refused)
        raise ValueError(f"refusing to resume {workdir}: the config differs from the one its checkpoints were "
                         f"trained with ({listing}). Use a new --workdir, or rerun with "
                         f"--config.train.allow_config_change={names} to accept the change (shapes must still "
                         "match); nothing in the workdir was changed")
    return [f"resuming with a changed config: {k}: {a!r} -> {b!r}" for k, a, b in changes]


def restore_step(saved: dict | None, new: ExperimentConfig, steps: list[int]) -> tuple[int, str | None]:
    """(the checkpoint to resume from: -1 for the newest usable one, or train.restore_step applied once; a log
    line when restore_step is not applied again)."""
    want = new.train.restore_step
    if want < 0:
        return -1, None
    if saved is not None and saved["train"].restore_step == want and steps and max(steps) > want:
        # The same command again: the run that wrote the newer checkpoints already rolled back to `want`.
        return -1, (f"train.restore_step={want} was applied by an earlier run of this workdir; resuming from the "
                    "newest checkpoint (set another restore_step to roll back again)")
    return want, None
