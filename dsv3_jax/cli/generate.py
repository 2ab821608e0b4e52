"""`dsv3-generate --workdir=runs/tiny --prompt="def "`: stream text from the latest checkpoint of a run.

Only parses flags and calls dsv3_jax.infer. The model config comes from workdir/config.json (saved by
dsv3-train), or from --config=configs/<name>.py when that file is missing. Only the model variables of the
newest usable checkpoint (or --step=N) are read, never the optimizer state; an unusable checkpoint (corrupt,
incomplete or non-finite) is reported on one line and the previous one is used. Every argument is checked
before anything is printed; orbax's INFO logs are shown only with -v 0 (or --verbosity=0).
Byte tokenizer: the prompt is BOS + its UTF-8 bytes; generation stops at EOS (or --stop_tokens).
`--hf=DIR [--chat]` generates from a Hugging Face checkpoint (or params directory) with its own tokenizer, and a
workdir fine-tuned from one uses the tokenizer it keeps in workdir/tokenizer/ (cli/hf_generate.py).
"""

from __future__ import annotations

import codecs
import sys
import time

from absl import app, flags
from ml_collections import config_flags

from dsv3_jax.cli import hf_generate  # no jax at import: flags are parsed first

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir (checkpoints/ and config.json).")
_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config, used when workdir/config.json is "
                                          "missing.", lock_config=True)
_PROMPT = flags.DEFINE_multi_string("prompt", ["def "], "Prompt text; repeat the flag for a batch.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 200, "Tokens to generate per prompt at most.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "Sampling temperature; 0 = greedy.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Keep the k most likely tokens (0 = off).")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass (1 = off).")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_STOP = flags.DEFINE_list("stop_tokens", ["257"], "Token ids that end a sequence (default: EOS).")
_SPECULATIVE = flags.DEFINE_bool("speculative", False, "MTP speculative decoding (needs model.mtp_depth >= 1).")
_CACHE = flags.DEFINE_enum("cache", "absorb", ["absorb", "naive"], "KV cache layout: MLA latent or full K/V.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to load (default: the newest usable one).")
# Checkpoints with their own tokenizer (cli/hf_generate.py).
_HF = flags.DEFINE_string("hf", None, "A Hugging Face DeepSeek checkpoint directory (or a params directory from "
                          "dsv3-convert) with its tokenizer files; instead of --workdir.")
_CHAT = flags.DEFINE_bool("chat", False, "Wrap each prompt in the checkpoint's chat template (a user turn).")
_KEEP_FP8 = flags.DEFINE_bool("keep_fp8", False, "--hf: keep FP8 weights FP8 (weight-only blockwise FP8 matmul).")
_HF_DTYPE = flags.DEFINE_enum("hf_dtype", "float32", ["float32", "bfloat16", "float16"], "--hf: parameter dtype.")


class ByteStream:
    """Writes byte-token ids to a text stream as they arrive (UTF-8 decoded incrementally, specials dropped)."""

    def __init__(self, out):
        self.out = out
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def write(self, ids):
        data = bytes(int(i) for i in ids if 0 <= int(i) < 256)
        self.out.write(self.decoder.decode(data))
        self.out.flush()

    def close(self):
        self.out.write(self.decoder.decode(b"", final=True) + "\n")
        self.out.flush()


def run(workdir, prompts, *, config=None, max_new_tokens=200, sampling=None, seed=0, stop_tokens=(257,),
        speculative=False, absorb=True, out=None, err=None, step=None, chat=False):
    """The CLI's work, callable from Python: returns the GenerateResult (and prints the text)."""
    out, err = out or sys.stdout, err or sys.stderr
    if max_new_tokens < 1:
        raise ValueError(f"--max_new_tokens: must be >= 1, got {max_new_tokens}")
    if not prompts:
        raise ValueError("--prompt: expected at least one prompt")
    from dsv3_jax.data import tokenizer
    from dsv3_jax.infer.generate import generate
    from dsv3_jax.infer.restore import load_workdir
    from dsv3_jax.infer.sampling import SamplingParams
    from dsv3_jax.infer.speculative import speculative_generate

    cfg, variables, step = load_workdir(workdir, config, step)
    from dsv3_jax.data.hf_tokenizer import tokenizer_dir
    if tokenizer_dir(workdir) or chat:  # fine-tuned from a checkpoint (train.init_from): its tokenizer, its EOS
        from dsv3_jax.data.hf_tokenizer import saved_tokenizer
        return hf_generate.run_text(cfg, variables, saved_tokenizer(workdir), prompts, chat=chat,
                                    max_new_tokens=max_new_tokens, sampling=sampling, seed=seed,
                                    stop_tokens=stop_tokens, speculative=speculative, absorb=absorb, out=out,
                                    err=err, label=f"step {step}")
    stop_tokens = (tokenizer.EOS_ID,) if stop_tokens is None else stop_tokens
    tokenizer.check_vocab_size(cfg.vocab_size)
    ids = [list(tokenizer.encode(p, bos=True)) for p in prompts]
    hf_generate.check_request(cfg, ids, max_new_tokens, stop_tokens, speculative)
    stream = ByteStream(out) if len(prompts) == 1 else None
    if stream:
        stream.write(ids[0])
    kwargs = dict(max_new_tokens=max_new_tokens, sampling=sampling or SamplingParams(), seed=seed,
                  stop_tokens=stop_tokens, absorb=absorb, on_tokens=(lambda new: stream.write(new[0])) if stream
                  else None)
    start = time.perf_counter()
    if speculative:
        result, stats = speculative_generate(cfg, variables, ids, **kwargs)
    else:
        result, stats = generate(cfg, variables, ids, **kwargs), None
    seconds = time.perf_counter() - start
    if stream:
        stream.close()
    else:
        for p, seq in zip(prompts, result.sequences()):
            out.write(p + tokenizer.decode(seq) + "\n---\n")
    n = int(result.num_tokens.sum())
    msg = f"[step {step}] {n} tokens in {seconds:.2f} s ({n / seconds:.1f} tok/s incl. compile)"
    if stats is not None:
        msg += (f"; acceptance {stats.acceptance_rate:.3f}, {stats.tokens_per_step:.2f} tokens per main-model "
                "step")
    err.write(msg + "\n")
    return result


def _run(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from absl import logging

    if not flags.FLAGS["verbosity"].present:  # keep orbax's INFO lines out of the output (-v 0 shows them)
        logging.set_verbosity(logging.WARNING)
    from dsv3_jax.infer.sampling import SamplingParams  # after flag parsing: jax starts here

    try:
        sampling = SamplingParams(_TEMPERATURE.value, _TOP_K.value, _TOP_P.value)
        if not all(s.strip().lstrip("-").isdigit() for s in _STOP.value):
            raise ValueError(f"--stop_tokens: expected comma-separated token ids, got {','.join(_STOP.value)!r}")
        if _STEP.value is not None and _STEP.value < 0:
            raise ValueError(f"--step: must be a checkpoint step >= 0, got {_STEP.value}")
        stop = [int(s) for s in _STOP.value] if _STOP.present else None  # None: the tokenizer's EOS
        if _HF.value:  # a checkpoint with its own tokenizer (cli/hf_generate.py)
            hf_generate.run_hf(_HF.value, _PROMPT.value, keep_fp8=_KEEP_FP8.value, dtype=_HF_DTYPE.value,
                               chat=_CHAT.value, max_new_tokens=_MAX_NEW.value, sampling=sampling, seed=_SEED.value,
                               stop_tokens=stop, speculative=_SPECULATIVE.value, absorb=_CACHE.value == "absorb")
            return
        run(_WORKDIR.value, _PROMPT.value, config=_CONFIG.value, max_new_tokens=_MAX_NEW.value, sampling=sampling,
            seed=_SEED.value, stop_tokens=stop, speculative=_SPECULATIVE.value, absorb=_CACHE.value == "absorb",
            step=_STEP.value, chat=_CHAT.value)
    except ValueError as e:
        print(f"dsv3-generate: error: {e}", file=sys.stderr)
        sys.exit(1)


def main():
    flags.mark_flags_as_mutual_exclusive(["workdir", "hf"], required=True)
    app.run(_run)


if __name__ == "__main__":
    main()
