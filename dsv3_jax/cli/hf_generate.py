"""The text side of dsv3-generate for a checkpoint with its own tokenizer: `--hf=DIR` (a Hugging Face DeepSeek
directory or a params directory, loaded by dsv3_jax.from_pretrained) and training workdirs fine-tuned from one
(workdir/tokenizer/, train/init_from.py).

Prompts are encoded by the checkpoint's tokenizer (BOS as its tokenizer_config.json says), or with --chat
wrapped in its chat template as one user turn with the assistant's turn opened; generation stops at the
checkpoint's EOS ids (generation_config.json) unless --stop_tokens is given; text is streamed as it decodes.
Only flag parsing lives in generate.py; this module does the work and is callable from Python.
"""

from __future__ import annotations

import sys
import time


def check_request(cfg, ids, max_new_tokens, stop_tokens, speculative):
    """Every error generate() would raise for these arguments, before anything is printed."""
    from dsv3_jax.infer.generate import cache_length, pad_prompts

    bad = [t for t in stop_tokens if not 0 <= int(t) < cfg.vocab_size]
    if bad:
        raise ValueError(f"--stop_tokens: token ids must be in [0, vocab_size={cfg.vocab_size}), got {bad}")
    if speculative and cfg.mtp_depth < 1:
        raise ValueError("--speculative needs MTP modules (model.mtp_depth >= 1); this model has mtp_depth=0")
    tokens, _ = pad_prompts(ids)
    cache_length(cfg, tokens.shape[1], max_new_tokens + (cfg.mtp_depth + 1 if speculative else 0))


def timed_generate(cfg, variables, ids, speculative: bool, **kwargs):
    """(GenerateResult, speculative stats or None, seconds) of plain or MTP speculative generation."""
    from dsv3_jax.infer.generate import generate
    from dsv3_jax.layer_split import split_layers
    from dsv3_jax.infer.speculative import speculative_generate

    variables = split_layers(cfg, variables)  # a set-up copy, like the load: the matmuls read layers in place
    start = time.perf_counter()
    if speculative:
        result, stats = speculative_generate(cfg, variables, ids, **kwargs)
    else:
        result, stats = generate(cfg, variables, ids, **kwargs), None
    return result, stats, time.perf_counter() - start


def report(err, label: str, result, stats, seconds: float) -> None:
    """The one stderr line after generating: tokens, seconds, tok/s (and the drafts' acceptance)."""
    n = int(result.num_tokens.sum())
    msg = f"[{label}] {n} tokens in {seconds:.2f} s ({n / seconds:.1f} tok/s incl. compile)"
    if stats is not None:
        msg += f"; acceptance {stats.acceptance_rate:.3f}, {stats.tokens_per_step:.2f} tokens per main-model step"
    err.write(msg + "\n")


def prompt_ids(tok, prompts, chat: bool) -> list[list[int]]:
    """Token ids of each prompt: as the tokenizer encodes text, or a chat turn through its template."""
    if not chat:
        return [list(map(int, tok.encode(p))) for p in prompts]
    texts = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True) for p in prompts]
    return [list(map(int, tok.encode(t, bos=False))) for t in texts]  # the template writes BOS itself


def run_text(cfg, variables, tok, prompts, *, chat=False, max_new_tokens=200, sampling=None, seed=0,
             stop_tokens=None, speculative=False, absorb=True, out=None, err=None, label=""):
    """Generate from `prompts` (text) with tokenizer `tok`; prints the text (streamed for one prompt) and a
    timing line; returns the GenerateResult."""
    from dsv3_jax.infer.sampling import SamplingParams

    out, err = out or sys.stdout, err or sys.stderr
    if max_new_tokens < 1:
        raise ValueError(f"--max_new_tokens: must be >= 1, got {max_new_tokens}")
    if not prompts:
        raise ValueError("--prompt: expected at least one prompt")
    stop = list(tok.eos_ids if stop_tokens is None else stop_tokens)
    ids = prompt_ids(tok, prompts, chat)
    check_request(cfg, ids, max_new_tokens, stop, speculative)
    stream = tok.stream() if len(prompts) == 1 else None
    if stream:
        out.write(prompts[0] if not chat else "")
        out.flush()

    def on_tokens(new):
        out.write(stream.write(new[0]))
        out.flush()

    kwargs = dict(max_new_tokens=max_new_tokens, sampling=sampling or SamplingParams(), seed=seed, stop_tokens=stop,
                  absorb=absorb, pad_id=tok.pad_id, on_tokens=on_tokens if stream else None)
    result, stats, seconds = timed_generate(cfg, variables, ids, speculative, **kwargs)
    if stream:
        out.write(stream.close() + "\n")
    else:
        for p, seq in zip(prompts, result.sequences()):
            out.write(p + tok.decode(seq) + "\n---\n")
    report(err, label, result, stats, seconds)
    return result


def run_hf(path, prompts, *, keep_fp8=False, dtype="float32", **kwargs):
    """dsv3-generate --hf=DIR: load DIR with from_pretrained (its tokenizer required) and run_text."""
    from dsv3_jax.interop.pretrained import from_pretrained

    cfg, variables, tok = from_pretrained(path, dtype=dtype, keep_fp8=keep_fp8)
    return run_text(cfg, variables, tok, prompts, label=path, **kwargs)
