"""Checkpoints with orbax: the train state (params, optimizer state, router biases, step, RNG) and the data
iterator's position, saved together under one step.

    workdir/checkpoints/<step>/state/   orbax pytree (StandardSave) of the TrainState fields
    workdir/checkpoints/<step>/data/    the data iterator's JSON state
    workdir/rejected_checkpoints/<step> checkpoints a resume could not use, moved aside (never deleted)

Orbax writes to a temporary directory and renames it when complete, so an interrupted save never leaves a
half-written checkpoint that a resume would pick up; `save` refuses a state with a NaN/inf anywhere
(train/finite.py). `restore` validates the checkpoint first (train/checkpoint_check.py) and reports any
failure as one CheckpointError (step, file, cause) or CheckpointMismatch; `restore_variables` reads only the
model variables (params, router, FP8 histories) with orbax's partial restore, never the optimizer state.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from dsv3_jax.train import checkpoint_check as check
from dsv3_jax.train import finite
from dsv3_jax.train.checkpoint_check import CheckpointError, CheckpointMismatch  # noqa: F401 (re-exported)

MODEL_COLLECTIONS = ("params", "router", "fp8_meta")
REJECTED = "rejected_checkpoints"


class Checkpointer:
    """Save / validate / restore in `workdir/checkpoints`."""

    def __init__(self, workdir: str, max_to_keep: int = 3, read_only: bool = False):
        self.workdir = os.path.abspath(workdir)
        self.directory = os.path.join(self.workdir, "checkpoints")
        self.max_to_keep, self.read_only = max_to_keep, read_only
        check.quiet_closed_loop_noise()
        self._open()

    def _open(self):
        # read_only: do not create the directory (orbax's own read_only option logs three warnings per open)
        options = ocp.CheckpointManagerOptions(max_to_keep=self.max_to_keep, create=not self.read_only)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"))

    def steps(self) -> list[int]:
        """The complete checkpoints on disk, oldest first."""
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def save(self, state, data_state: dict[str, Any]) -> int:
        """Save `state` under its step (a no-op when that step is saved already); NonFiniteError, and nothing
        written, when any collection holds a NaN/inf."""
        step = int(jax.device_get(state.step))
        if self.manager.latest_step() == step:
            return step
        bad = finite.nonfinite_collections(state)
        if bad:
            raise finite.NonFiniteError(f"refusing to save checkpoint {step}: non-finite values (NaN/inf) in "
                                        f"{', '.join(bad)}; the checkpoints in {self.directory} are unchanged")
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(_fields(state)),
                                                        data=ocp.args.JsonSave(data_state)))
        self.manager.wait_until_finished()
        return step

    def restore(self, step: int, abstract_state):
        """(state, data_state) of checkpoint `step`, validated and finite; CheckpointError/CheckpointMismatch."""
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, _fields(abstract_state))
        self._require(step)
        check.validate(step, self.step_dir(step), target)
        data_state = check.read_data_state(step, self.step_dir(step))
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                                          data=ocp.args.JsonRestore()))
        except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many types; all mean "unreadable"
            raise _read_error(step, e) from None
        state = abstract_state.replace(**restored["state"])
        _require_finite(step, state)
        return state, restored["data"] if restored["data"] is not None else data_state

    def restore_variables(self, step: int, abstract_variables: dict) -> dict:
        """The model variables {'params', 'router'[, 'fp8_meta']} of checkpoint `step` by orbax's partial
        restore (PyTreeRestore(partial_restore=True)): the optimizer state is neither read nor needed."""
        target = {k: v for k, v in abstract_variables.items() if k in MODEL_COLLECTIONS and jax.tree.leaves(v)}
        target = jax.tree.map(_on_one_device, target)
        self._require(step)
        check.validate(step, self.step_dir(step), target, partial=True)
        state_dir = epath.Path(self.step_dir(step)) / "state"
        reader = ocp.PyTreeCheckpointer()
        try:
            restored = reader.restore(state_dir, args=ocp.args.PyTreeRestore(
                item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True))
        except Exception as e:  # noqa: BLE001 - see restore
            raise _read_error(step, e) from None
        finally:
            reader.close()
        _require_finite(step, restored)
        return {k: restored.get(k, v) for k, v in abstract_variables.items() if k in MODEL_COLLECTIONS}

    def _require(self, step: int):
        if step not in self.steps():
            raise ValueError(f"{self.directory}: no checkpoint {step}; the checkpoints are {self.steps() or 'none'}")

    def move_aside(self, step: int, reason: str) -> str:
        """Move checkpoint `step` to workdir/rejected_checkpoints/ (so that newer saves are possible and max_to_keep
        never deletes a good one for it) with a REASON.txt; returns the new path. Process 0 moves, all wait."""
        dest = os.path.join(self.workdir, REJECTED, str(step))
        n = 1
        while os.path.exists(dest):
            dest, n = os.path.join(self.workdir, REJECTED, f"{step}.{n}"), n + 1
        self.close()
        if jax.process_index() == 0:
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            os.replace(self.step_dir(step), dest)
            with open(os.path.join(dest, "REASON.txt"), "w", encoding="utf-8") as f:
                f.write(reason + "\n")
        _sync(f"dsv3_jax_move_aside_{step}")
        self._open()  # the manager caches the step list
        return dest

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()


def list_steps(workdir: str) -> list[int]:
    """The step directories under workdir/checkpoints (without opening orbax; complete or not)."""
    d = os.path.join(workdir, "checkpoints")
    return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def _fields(state) -> dict:
    """The state's fields as a dict, without empty collections (orbax stores no empty subtree, so a state with
    e.g. no FP8 histories must not ask for one on restore)."""
    return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)
            if not (isinstance(getattr(state, f.name), dict) and not getattr(state, f.name))}


def _on_one_device(x):
    """A ShapeDtypeStruct with a sharding (orbax restores jax arrays only where it knows where to put them)."""
    sharding = getattr(x, "sharding", None) or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)


def _read_error(step: int, e: BaseException) -> CheckpointError:
    cause = check.error_cause(e)
    array = check.failing_array(cause)
    return CheckpointError(step, f"state/ array {array}" if array else "state/", cause)


def _require_finite(step: int, tree) -> None:
    bad = finite.nonfinite_collections(tree)
    if bad:
        raise CheckpointError(step, "state/", f"non-finite values (NaN/inf) in {', '.join(bad)}")


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)
