"""The main training loop: data -> jitted train_step -> logs, evals, checkpoints, resume.

Read top to bottom: `train(config, workdir)` is all there is. Multi-host set-up (jax.distributed) lives in
the CLI; here every process runs the same loop on its rows of each global batch, on the mesh of the config's
`mesh` block (parallel/layout.py), and only process 0 writes metrics, the config and the console lines
(train/console.py: compile time, a line per log group with tokens/s after compilation, TFLOP/s, MFU and ETA,
a line per evaluation and per checkpoint, the summary table; train/throughput.py), and a jax.profiler trace
of train.profile_steps (train/profiling.py).

Reliability (train/finite.py, train/resume.py, train/restore.py, train/interrupt.py): the typed config is
validated before anything is printed; a resume is checked against workdir/config.json and restored (with a
fallback past unusable checkpoints) before anything is written; a non-finite step never reaches a saved
checkpoint; SIGTERM/SIGINT save and stop every process at the same step; metrics.jsonl has each step once.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import time

import jax
import jax.numpy as jnp

from dsv3_jax import sharding
from dsv3_jax.data.pipeline import make_datasets
from dsv3_jax.data.tokenizers import ByteTokenizer
from dsv3_jax.experiment_config import ExperimentConfig
from dsv3_jax.parallel import layout
from dsv3_jax.train import checkpoint, init_from, optim, pipeline_step, resume, restore, sample, step as step_lib
from dsv3_jax.train import layout as train_layout
from dsv3_jax.train.finite import NonFiniteError
from dsv3_jax.train.interrupt import StopSignal, signal_name
from dsv3_jax.train.console import Console, summary_rows, table
from dsv3_jax.train.logging import MetricsWriter, write_summary
from dsv3_jax.train.profiling import StepProfiler
from dsv3_jax.train.throughput import CompileWatch, StepTimer, Stopwatch, devices_text
from dsv3_jax.train.state import init_state

NonFiniteLossError = NonFiniteError  # its name before it also covered gradients and updates (kept for imports)


def evaluate(eval_step, state, val_batches, max_batches, place=lambda b: jax.tree.map(jnp.asarray, b)):
    """Val loss in bits per byte, MTP depth-1 top-1 accuracy, per-layer max/mean expert load."""
    totals, counts = {}, None
    for batch in val_batches(max_batches):
        sums, c = eval_step(state, place(batch))
        totals = {k: totals.get(k, 0.0) + float(v) for k, v in sums.items()}
        counts = c if counts is None else jax.tree.map(jnp.add, counts, c)
    if not totals:
        raise ValueError("evaluation got no validation batches; set train.eval_batches=0 to train without it")
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


def _save_config(exp: ExperimentConfig, workdir: str):
    """workdir/config.json: the experiment config the checkpoints belong to (dsv3-generate reads it)."""
    os.makedirs(workdir, exist_ok=True)
    tmp = os.path.join(workdir, "config.json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(exp.to_dict(), f, indent=1)
    os.replace(tmp, os.path.join(workdir, "config.json"))


def _datasets(exp: ExperimentConfig, cfg, log, tok=None):
    train_iter, val_batches = make_datasets(exp.data, exp.train, cfg.max_seq_len, jax.process_index(),
                                            jax.process_count(), tokenizer=tok)
    if exp.train.eval_batches and val_batches.num_batches == 0:
        raise ValueError(f"the validation split is empty ({train_iter.info.val_docs} documents, "
                         f"{train_iter.info.val_tokens} tokens) but train.eval_batches={exp.train.eval_batches}; "
                         "set train.eval_batches=0 to train without evaluation")
    log(train_iter.info.summary())
    return train_iter, val_batches


def _resume(exp, ckpt, state, train_iter, saved, log):
    """Restore the newest usable checkpoint (or train.restore_step) into `state` and the data iterator, then
    move aside the unusable or superseded newer ones; returns (state, step resumed from or 0)."""
    want, note = resume.restore_step(saved, exp, ckpt.steps())
    if note:
        log(note)
    step, restored, rejected = restore.restore_newest(ckpt, state, want, warn=lambda m: log(f"warning: {m}"))
    if restored is None:
        return state, 0
    state, data_state = restored
    train_iter.set_state(data_state)  # a data change is a ValueError here, before anything is written
    for s in [s for s in ckpt.steps() if s > step]:
        why = "unusable" if s in rejected else f"newer than train.restore_step={step}"
        dest = ckpt.move_aside(s, rejected.get(s, f"checkpoint {s}: {why}"))
        log(f"moved checkpoint {s} ({why}) to {dest}")
    log(f"resumed from {ckpt.directory} at step {step}")
    return state, step


def _make_steps(exp, cfg, mesh, tok=None):
    t = exp.train
    # The run tokenizer's padding and, for a checkpoint's tokenizer, the text bytes of each id (bits per byte).
    tokens = {} if tok is None or isinstance(tok, ByteTokenizer) else dict(pad_id=tok.pad_id)
    optimizer = optim.make_optimizer(t)
    state_sh, batch_sh = train_layout.state_shardings(cfg, optimizer, mesh, t.seq_len), sharding.batch_sharding(mesh)
    state = jax.jit(lambda: init_state(cfg, optimizer, t.seed, t.seq_len), out_shardings=state_sh)()
    pipelined = pipeline_step.is_pipelined(mesh)  # mesh.pipe > 1: the blocks run as pipeline stages
    step_layout = train_layout.StepLayout(cfg, state_sh, pipelined)  # split stacks unless pipelined
    if pipelined:
        train_step = pipeline_step.make_pipeline_train_step(
            cfg, optimizer, t, mesh, t.pipeline_schedule, t.pipeline_chunks, state_sh, batch_sh,
            residuals=t.pipeline_residuals)
    else:
        train_step = step_lib.make_train_step(cfg, optimizer, t, step_layout.sharding, batch_sh, **tokens)
    token_bytes = dict(token_bytes=tok.token_bytes()) if tokens else {}
    eval_step = step_lib.make_eval_step(cfg, step_layout.sharding, batch_sh, **tokens, **token_bytes)
    return state, step_layout, train_step, eval_step


def _nonfinite_message(step, metrics, moved, ckpt) -> str:
    parts = ", ".join(f"{k}={float(metrics[k]):.4g}" for k in ("loss", "ce", "mtp", "balance", "grad_norm"))
    msg = f"non-finite update at step {step} ({parts}); the update was dropped and training stopped"
    if moved:
        msg += (f". Checkpoint {moved[0]}, whose next step this was, holds parameters that already give a "
                f"non-finite gradient: moved to {moved[1]}")
    last = ckpt.latest_step()
    if last:
        return msg + (f". The last good checkpoint is step {last}, in {ckpt.step_dir(last)}: rerun with a lower "
                      "train.lr to continue from it (or with train.nonfinite='skip' to drop such steps)")
    return msg + ". There is no good checkpoint yet: a rerun with a lower train.lr starts from scratch"


class _Run:
    """The per-step bookkeeping of one train() call: logging, eval, checkpoints and the non-finite policy.

    A non-finite step N is never saved. Stopping on it, the checkpoint of the state it started from (if one
    was saved) is moved aside too: its parameters give the non-finite gradient whatever the lr, so a rerun
    resuming from it would stop at the same step again; the rerun starts from the checkpoint before it."""

    def __init__(self, exp, ckpt, train_iter, val_batches, eval_step, place, writer, console, log, to_saved):
        self.t, self.ckpt, self.train_iter, self.val_batches = exp.train, ckpt, train_iter, val_batches
        self.to_saved = to_saved  # the step's state layout -> the checkpointed one (train/layout.py StepLayout)
        self.eval_step, self.place, self.writer, self.console, self.log = eval_step, place, writer, console, log
        self.skips, self.skipped_total, self.summary = 0, 0, {}
        self.eval_time, self.save_time = Stopwatch(), Stopwatch()

    def save(self, state) -> int:
        """Checkpoint `state` (a no-op at step 0 or when its step is saved already); one console line."""
        step = int(state.step)
        if step == 0 or self.ckpt.latest_step() == step:
            return step
        with self.save_time:
            self.ckpt.save(self.to_saved(state), self.train_iter.get_state())
        path = self.ckpt.step_dir(step)
        shown = os.path.relpath(path) if path.startswith(os.getcwd() + os.sep) else path  # as the user typed it
        self.console.checkpoint(step, shown, self.save_time.last)
        return step

    def nonfinite(self, state, metrics) -> None:
        """A dropped update: stop ("stop", or too many skips in a row) or go on ("skip")."""
        step = int(state.step) if self.t.nonfinite == "skip" else int(state.step) + 1
        self.skips, self.skipped_total = self.skips + 1, self.skipped_total + 1
        if self.t.nonfinite == "skip" and self.skips <= self.t.max_nonfinite_skips:
            self.log(f"warning: non-finite update at step {step} dropped (train.nonfinite='skip'; {self.skips} "
                     f"in a row, at most {self.t.max_nonfinite_skips})")
            return self.after_step(state, metrics, finite=False)
        self.writer.write(step, {**metrics, "skipped_total": self.skipped_total})
        origin = step - self.skips  # the state the first non-finite step of this streak started from
        moved = None
        if origin > 0 and origin in self.ckpt.steps():
            moved = (origin, self.ckpt.move_aside(origin, f"checkpoint {origin}: step {origin + 1} after it was "
                                                          "non-finite (a NaN/inf loss, gradient or update)"))
        msg = _nonfinite_message(origin + 1, metrics, moved, self.ckpt)
        if self.t.nonfinite == "skip":
            msg = (f"{self.skips} non-finite steps in a row, {origin + 1} to {step} (train.max_nonfinite_skips="
                   f"{self.t.max_nonfinite_skips}); " + msg)
        raise NonFiniteError(msg)

    def after_step(self, state, metrics, finite: bool = True) -> None:
        """Log (every dropped step too), evaluate and checkpoint on their intervals."""
        step, t = int(state.step), self.t
        if finite:
            self.skips = 0
        if not finite or step % t.log_every == 0 or step == t.steps:
            rates = {}
            if finite:  # tokens/s, TFLOP/s, MFU of the steps since the previous line (to TensorBoard too)
                rates = self.console.timer.rates(self.console.step(step, float(metrics["loss"]), float(metrics["lr"])))
            self.writer.write(step, {**metrics, **rates, "skipped_total": self.skipped_total})
        if t.eval_batches and (step % t.eval_every == 0 or step == t.steps):
            with self.eval_time:
                self.summary = evaluate(self.eval_step, state, self.val_batches, t.eval_batches, self.place)
            self.writer.write(step, self.summary, "eval")
            self.console.eval(step, self.summary, self.eval_time.last, first=self.eval_time.count == 1)
        if step % t.checkpoint_every == 0 and finite:  # a skipped step's state is its streak's origin's
            self.save(state)


def _steps(run: _Run, state, train_step, stop: StopSignal, timer: StepTimer, profiler: StepProfiler):
    """Train until train.steps or a stop signal; returns (state, the stopping signal number or 0, seconds of
    the first step, which compiles). Each step is timed up to its `finite` flag on the host (the step is done
    then); the first step's time goes to the compile line instead of the rates."""
    first, compile_seconds = True, 0.0
    while int(state.step) < run.t.steps:
        signum = stop.requested()
        if signum:
            return state, signum, compile_seconds
        profiler.before_step(int(state.step) + 1)
        if first:
            run.console.compiling()
        t0 = time.perf_counter()
        with CompileWatch() if first else contextlib.nullcontext() as watch:
            state, metrics = train_step(state, run.place(next(run.train_iter)))
            finite = bool(metrics["finite"])
        seconds = time.perf_counter() - t0
        if first:
            compile_seconds, first = seconds, False
            run.console.compiled(seconds, watch)
        else:
            timer.record(seconds)
        profiler.after_step(int(state.step))
        if finite:
            run.after_step(state, metrics)
        else:
            run.nonfinite(state, metrics)
    return state, 0, compile_seconds


def _console(exp, start, flops_per_token, peak_flops, log):
    """(StepTimer, Console, the devices' description) for this run; peak_flops is one device's."""
    t = exp.train
    devices = devices_text()
    peak = peak_flops * jax.device_count() / 1e12 if peak_flops else None
    timer = StepTimer(t.batch_size * t.seq_len, flops_per_token, peak)
    if flops_per_token:
        log(f"devices: {devices}; {flops_per_token / 1e6:,.1f} MFLOPs per token (fwd+bwd, with MTP); peak "
            + ("unknown for this device: MFU n/a" if peak is None else f"{peak:,.0f} TFLOP/s"))
    else:
        log(f"devices: {devices}")
    return timer, Console(t.steps, start, timer, t.eval_every, t.eval_batches > 0, write=log), devices


def _finish(run, exp, workdir, state, train_iter, cfg, timer, devices, times, log, tok) -> dict:
    """The summary dict (final eval, step, baseline, throughput), the sample, summary.json and the table."""
    t = exp.train
    summary = {**run.summary, "step": int(state.step),
               "val_unigram_bits_per_byte": train_iter.info.val_unigram_bits_per_byte}
    rate = timer.tokens_per_second()
    if rate is not None:
        summary["train_tokens_per_second"] = rate
        for key, value in (("train_tflops", timer.tflops(rate)), ("train_mfu", timer.mfu(rate))):
            if value is not None:
                summary[key] = value
    if t.sample_tokens and jax.process_count() == 1:
        summary["sample"] = sample.greedy_sample(cfg, run.to_saved(state).variables(), t.sample_prompt,
                                                 t.sample_tokens, t.seq_len, tokenizer=tok)
    if jax.process_index() == 0:
        times["wall"] = time.perf_counter() - times.pop("_t0")
        write_summary(workdir, {**summary, "seconds": times["wall"]})
        log(table(f"summary ({workdir}; full numbers in metrics.jsonl, summary.json, tensorboard/)",
                  summary_rows(summary, timer, times, devices)))
        if "sample" in summary:
            log(f"greedy sample ({t.sample_tokens} tokens after {t.sample_prompt!r}):\n{summary['sample']}")
    return summary


def train(cd, workdir: str, log=print, *, flops_per_token: float | None = None,
          peak_flops: float | None = None) -> dict:
    """Train the model of experiment config `cd` (a ConfigDict or ExperimentConfig) in `workdir`, resuming from
    its newest usable checkpoint. Returns the final eval metrics, "step", "train_tokens_per_second" (after
    compilation), "sample" when train.sample_tokens, and "interrupted" (the signal's name) when SIGTERM/SIGINT
    stopped it. `flops_per_token`: model FLOPs per token (analysis/flops.py) for TFLOP/s; `peak_flops`: one
    device's peak FLOP/s (analysis/hardware.py) for MFU."""
    t0 = time.perf_counter()
    exp = init_from.resolve_experiment(cd)  # every field validated before anything is printed or written
    t, primary = exp.train, jax.process_index() == 0
    if log is print:
        log = functools.partial(print, flush=True)  # each line shows at once, also through a pipe
    log = log if primary else (lambda *a: None)
    tok = init_from.run_tokenizer(exp)  # bytes, or train.init_from's tokenizer; checked against the vocab
    for line in t.warnings():
        log(line)
    saved = resume.saved_config(workdir)
    if checkpoint.list_steps(workdir):
        for note in resume.check_config(saved, exp, workdir):
            log(note)
    mesh, cfg = layout.setup_mesh(exp.mesh, exp.model, t.batch_size)
    train_iter, val_batches = _datasets(exp, cfg, log, tok)
    state, step_layout, train_step, eval_step = _make_steps(exp, cfg, mesh, tok)
    ckpt = checkpoint.Checkpointer(workdir)
    try:
        state, start = _resume(exp, ckpt, state, train_iter, saved, log)
        if start == 0 and t.init_from:  # a fresh run: the checkpoint's weights, a new optimizer state
            state = init_from.load_weights(state, cfg, t.init_from, log)
        state = step_layout.to_step(state)  # restored and initialized stacked; stepped split (train/state.py)
        if primary:
            init_from.save_tokenizer(exp, workdir)
            _save_config(exp, workdir)
        writer = MetricsWriter(workdir, start) if primary else _Silent()
        if primary and writer.dropped:
            log(f"metrics.jsonl: dropped {writer.dropped} rows past step {start} (from the interrupted run)")
        timer, console, devices = _console(exp, start, flops_per_token, peak_flops, log)
        run = _Run(exp, ckpt, train_iter, val_batches, eval_step, lambda b: train_layout.global_batch(b, mesh),
                   writer, console, log, step_layout.to_saved)
        profiler = StepProfiler(workdir, t.profile_steps, start, log)
        try:
            with StopSignal() as stop, jax.set_mesh(mesh):
                state, signum, compile_seconds = _steps(run, state, train_step, stop, timer, profiler)
                profiler.stop()
                run.save(state)  # final, or on SIGTERM/SIGINT
        finally:
            profiler.stop()
            writer.close()
    finally:
        ckpt.close()
    if signum:
        saved_in = (f"checkpoint saved in {ckpt.step_dir(int(state.step))}" if int(state.step) else
                    "nothing trained yet, so no checkpoint")
        log(f"interrupted at step {int(state.step)} ({signal_name(signum)}), {saved_in}; rerun the same command "
            "to resume")
        return {**run.summary, "step": int(state.step), "interrupted": signal_name(signum),
                "val_unigram_bits_per_byte": train_iter.info.val_unigram_bits_per_byte}
    count = lambda n, what: f"{n} {what}" + ("" if n == 1 else "s")  # noqa: E731
    times = {"_t0": t0, "compile": compile_seconds, count(timer.steps, "timed step"): timer.seconds,
             count(run.eval_time.count, "eval"): run.eval_time.total,
             count(run.save_time.count, "checkpoint"): run.save_time.total}
    return _finish(run, exp, workdir, state, train_iter, cfg, timer, devices, times, log, tok)
