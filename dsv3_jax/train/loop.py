"""The main training loop: data -> jitted train_step -> logs, evals, checkpoints, resume.

Read top to bottom: `train(config, workdir)` is all there is. Multi-host set-up (jax.distributed) lives in
the CLI; here every process runs the same loop on its rows of each global batch, on the mesh of the config's
`mesh` block (parallel/layout.py), and only process 0 writes metrics, the config and the progress line.
"""

from __future__ import annotations

import math
import os
import signal

import jax
import jax.numpy as jnp

from dsv3_jax import sharding
from dsv3_jax.data import tokenizer
from dsv3_jax.data.pipeline import make_datasets
from dsv3_jax.experiment_config import model_config
from dsv3_jax.parallel import layout
from dsv3_jax.train import checkpoint, optim, pipeline_step, sample, step as step_lib
from dsv3_jax.train import layout as train_layout
from dsv3_jax.train.logging import MetricsWriter, Progress
from dsv3_jax.train.state import init_state


class NonFiniteLossError(RuntimeError):
    """Training stopped on a NaN/inf loss; the last good checkpoint is kept."""


class _StopSignal:
    """Turns SIGTERM/SIGINT into a flag the loop checks, so the run saves a checkpoint and exits cleanly."""

    def __init__(self):
        self.requested = False
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. inside a notebook worker): no handler
                pass
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def evaluate(eval_step, state, val_batches, max_batches, place=lambda b: jax.tree.map(jnp.asarray, b)):
    """Val loss in bits per byte, MTP depth-1 top-1 accuracy, per-layer max/mean expert load."""
    totals, counts = {}, None
    for batch in val_batches(max_batches):
        sums, c = eval_step(state, place(batch))
        totals = {k: totals.get(k, 0.0) + float(v) for k, v in sums.items()}
        counts = c if counts is None else jax.tree.map(jnp.add, counts, c)
    out = {"val_bits_per_byte": totals["nll"] / max(totals["bytes"], 1.0) / math.log(2)}
    if "mtp_hits" in totals:
        out["val_mtp_acc"] = totals["mtp_hits"] / max(totals["mtp_count"], 1.0)
    if counts:
        out["val_load_max"] = step_lib.load_stats(counts)[0]
    return out


class _Silent:
    """Stands in for the metrics writer and progress line on processes other than 0."""

    def __getattr__(self, name):
        return lambda *a, **k: None


def _check_finite(metrics, step, ckpt):
    loss = float(metrics["loss"])
    if not math.isfinite(loss):
        parts = ", ".join(f"{k}={float(metrics[k]):.4g}" for k in ("ce", "mtp", "balance", "grad_norm"))
        raise NonFiniteLossError(
            f"non-finite loss {loss} at step {step} ({parts}); training stopped. The last good checkpoint "
            f"(step {ckpt.latest_step()}) in {ckpt.directory} is kept; lower train.lr or check the data.")
    return loss


def _save_config(cd, workdir: str):
    """workdir/config.json: the experiment config a checkpoint belongs to (dsv3-generate reads it)."""
    os.makedirs(workdir, exist_ok=True)
    tmp = os.path.join(workdir, "config.json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(cd.to_json(indent=1))
    os.replace(tmp, os.path.join(workdir, "config.json"))


def train(cd, workdir: str, log=print) -> dict:
    """Train the model of experiment config `cd` in `workdir`, resuming from its latest checkpoint."""
    cfg, t = model_config(cd), cd.train
    tokenizer.check_vocab_size(cfg.vocab_size)
    mesh, cfg = layout.setup_mesh(cd.get("mesh", {"data": -1}), cfg, t.batch_size)
    train_iter, val_batches = make_datasets(cd.data, t, cfg.max_seq_len, jax.process_index(), jax.process_count())
    primary = jax.process_index() == 0
    log = log if primary else (lambda *a: None)
    log(train_iter.info.summary())
    if primary:
        _save_config(cd, workdir)
    optimizer = optim.make_optimizer(t)
    state_sh, batch_sh = train_layout.state_shardings(cfg, optimizer, mesh, t.seq_len), sharding.batch_sharding(mesh)
    state = jax.jit(lambda: init_state(cfg, optimizer, t.seed, t.seq_len), out_shardings=state_sh)()
    ckpt = checkpoint.Checkpointer(workdir)
    restored, data_state = ckpt.restore_latest(state)
    if restored is not None:
        state = restored
        train_iter.set_state(data_state)
        log(f"resumed from {ckpt.directory} at step {int(state.step)}")
    if pipeline_step.is_pipelined(mesh):  # mesh.pipe > 1: the blocks run as pipeline stages
        train_step = pipeline_step.make_pipeline_train_step(
            cfg, optimizer, t, mesh, t.get("pipeline_schedule", "dualpipe"), t.get("pipeline_chunks", 0),
            state_sh, batch_sh, residuals=t.get("pipeline_residuals", "recompute"))
    else:
        train_step = step_lib.make_train_step(cfg, optimizer, t, state_sh, batch_sh)
    eval_step = step_lib.make_eval_step(cfg, state_sh, batch_sh)
    place = lambda b: train_layout.global_batch(b, mesh)
    writer = MetricsWriter(workdir) if primary else _Silent()
    progress = Progress(t.steps, int(state.step), t.batch_size * t.seq_len) if primary else _Silent()
    summary = {}
    try:
        with _StopSignal() as stop, jax.set_mesh(mesh):
            while int(state.step) < t.steps and not stop.requested:
                batch = place(next(train_iter))
                new_state, metrics = train_step(state, batch)
                step = int(new_state.step)
                loss = _check_finite(metrics, step, ckpt)
                state = new_state
                if step % t.log_every == 0 or step == t.steps:
                    writer.write(step, metrics)
                    progress.update(step, loss, float(metrics["lr"]))
                if step % t.eval_every == 0 or step == t.steps:
                    summary = evaluate(eval_step, state, val_batches, t.get("eval_batches", 8), place)
                    writer.write(step, summary, "eval")
                if step % t.checkpoint_every == 0:
                    ckpt.save(state, train_iter.get_state())
            ckpt.save(state, train_iter.get_state())  # also on SIGTERM/SIGINT
    finally:
        progress.close()
        writer.close()
        ckpt.close()
    summary = {**summary, "step": int(state.step),
               "val_unigram_bits_per_byte": train_iter.info.val_unigram_bits_per_byte}
    if int(state.step) >= t.steps and t.get("sample_tokens", 0) and jax.process_count() == 1:
        summary["sample"] = sample.greedy_sample(cfg, state.variables(), t.get("sample_prompt", "def "),
                                                 t.sample_tokens, t.seq_len)
    return summary

