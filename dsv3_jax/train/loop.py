"""The main training loop: data -> jitted train_step -> logs, evals, checkpoints, resume.

Read top to bottom: `train(config, workdir)` is all there is. Multi-host set-up lives in the CLI.
"""

from __future__ import annotations

import math
import os
import signal

import jax
import jax.numpy as jnp

from dsv3_jax.data import tokenizer
from dsv3_jax.data.pipeline import make_datasets
from dsv3_jax.experiment_config import model_config
from dsv3_jax.train import checkpoint, optim, sample, step as step_lib
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


def evaluate(eval_step, state, val_batches, max_batches):
    """Val loss in bits per byte, MTP depth-1 top-1 accuracy, per-layer max/mean expert load."""
    totals, counts = {}, None
    for batch in val_batches(max_batches):
        sums, c = eval_step(state, jax.tree.map(jnp.asarray, batch))
        totals = {k: totals.get(k, 0.0) + float(v) for k, v in sums.items()}
        counts = c if counts is None else jax.tree.map(jnp.add, counts, c)
    out = {"val_bits_per_byte": totals["nll"] / max(totals["bytes"], 1.0) / math.log(2)}
    if "mtp_hits" in totals:
        out["val_mtp_acc"] = totals["mtp_hits"] / max(totals["mtp_count"], 1.0)
    if counts:
        out["val_load_max"] = step_lib.load_stats(counts)[0]
    return out


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
    train_iter, val_batches = make_datasets(cd.data, t, cfg.max_seq_len, jax.process_index(), jax.process_count())
    log(train_iter.info.summary())
    _save_config(cd, workdir)
    optimizer = optim.make_optimizer(t)
    state = init_state(cfg, optimizer, t.seed, t.seq_len)
    ckpt = checkpoint.Checkpointer(workdir)
    restored, data_state = ckpt.restore_latest(state)
    if restored is not None:
        state = restored
        train_iter.set_state(data_state)
        log(f"resumed from {ckpt.directory} at step {int(state.step)}")
    train_step = step_lib.make_train_step(cfg, optimizer, t)
    eval_step = step_lib.make_eval_step(cfg)
    writer = MetricsWriter(workdir)
    progress = Progress(t.steps, int(state.step), t.batch_size * t.seq_len)
    summary = {}
    try:
        with _StopSignal() as stop:
            while int(state.step) < t.steps and not stop.requested:
                batch = jax.tree.map(jnp.asarray, next(train_iter))
                new_state, metrics = train_step(state, batch)
                step = int(new_state.step)
                loss = _check_finite(metrics, step, ckpt)
                state = new_state
                if step % t.log_every == 0 or step == t.steps:
                    writer.write(step, metrics)
                    progress.update(step, loss, float(metrics["lr"]))
                if step % t.eval_every == 0 or step == t.steps:
                    summary = evaluate(eval_step, state, val_batches, t.get("eval_batches", 8))
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
    if int(state.step) >= t.steps and t.get("sample_tokens", 0):
        summary["sample"] = sample.greedy_sample(cfg, state.params, state.router, t.get("sample_prompt", "def "),
                                                 t.sample_tokens, t.seq_len)
    return summary

