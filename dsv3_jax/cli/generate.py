"""`dsv3-generate --workdir=runs/tiny --prompt="def "`: stream text from the latest checkpoint of a run.

Only parses flags and calls dsv3_jax.infer. The model config comes from workdir/config.json (saved by
dsv3-train), or from --config=configs/<name>.py when that file is missing. Only the model variables of the
newest usable checkpoint (or --step=N) are read, never the optimizer state; an unusable checkpoint (corrupt,
incomplete or non-finite) is reported on one line and the previous one is used. Every argument is checked
before anything is printed; INFO logs (the resolved config, orbax) are shown only with --verbose.
`--config.model.FIELD=VALUE` decodes with another setting that keeps the parameters (e.g. moe_impl=dense).
Byte tokenizer: the prompt is BOS + its UTF-8 bytes; generation stops at EOS (or --stop_tokens).
"""

from __future__ import annotations

import codecs
import sys
import time

from dsv3_jax import config_args

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


def _check_request(cfg, ids, max_new_tokens, stop_tokens, speculative):
    """Every error generate() would raise for these arguments, before anything is printed."""
    from dsv3_jax.infer.generate import cache_length, pad_prompts

    bad = [t for t in stop_tokens if not 0 <= int(t) < cfg.vocab_size]
    if bad:
        raise ValueError(f"--stop_tokens: token ids must be in [0, vocab_size={cfg.vocab_size}), got {bad}")
    if speculative and cfg.mtp_depth < 1:
        raise ValueError("--speculative needs MTP modules (model.mtp_depth >= 1); this model has mtp_depth=0")
    tokens, _ = pad_prompts(ids)
    cache_length(cfg, tokens.shape[1], max_new_tokens + (cfg.mtp_depth + 1 if speculative else 0))


def run(workdir, prompts, *, config=None, max_new_tokens=200, sampling=None, seed=0, stop_tokens=(257,),
        speculative=False, absorb=True, out=None, err=None, step=None, model=None):
    """The CLI's work, callable from Python: returns the GenerateResult (and prints the text). `model`: a
    ModelConfig to decode with instead of the trained one (same parameters, e.g. another moe_impl)."""
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
    if model is not None:
        _check_same_shapes(model, variables)
        cfg = model
    tokenizer.check_vocab_size(cfg.vocab_size)
    ids = [list(tokenizer.encode(p, bos=True)) for p in prompts]
    _check_request(cfg, ids, max_new_tokens, stop_tokens, speculative)
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


def _check_same_shapes(cfg, variables) -> None:
    """ValueError when a --config.model override changes the parameter shapes of the trained model."""
    import jax

    from dsv3_jax.train.restore import abstract_variables

    want = {k: v for k, v in abstract_variables(cfg).items() if k in ("params", "router", "fp8_meta")}
    have = {k: v for k, v in variables.items() if k in want}
    shapes = lambda tree: jax.tree.map(lambda x: tuple(x.shape), tree)  # noqa: E731
    if jax.tree.structure(want) != jax.tree.structure(have) or shapes(want) != shapes(have):
        raise ValueError("--config.model overrides change the model's parameters (shapes or collections); "
                         "only fields such as moe_impl, dtype or fp8_impl can differ from the trained model")


def make_parser():
    p = config_args.make_parser("dsv3-generate", __doc__, config="optional")
    p.add_argument("--workdir", metavar="DIR", help="training workdir (checkpoints/ and config.json); required")
    p.add_argument("--prompt", action="append", help="prompt text; repeat the flag for a batch (default: 'def ')")
    p.add_argument("--max_new_tokens", type=int, default=200, help="tokens to generate per prompt at most")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 = greedy")
    p.add_argument("--top_k", type=int, default=0, help="keep the k most likely tokens (0 = off)")
    p.add_argument("--top_p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--stop_tokens", default="257", help="comma-separated token ids that end a sequence (EOS)")
    p.add_argument("--speculative", action="store_true", help="MTP speculative decoding (model.mtp_depth >= 1)")
    p.add_argument("--cache", choices=("absorb", "naive"), default="absorb",
                   help="KV cache layout: MLA latent (absorb) or full per-head K/V (naive)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step to load (default: newest usable)")
    return p


def main(argv=None) -> None:
    """Console-script entry point: exits 0, or 1 with one `dsv3-generate: error:` line (2 on unknown flags)."""
    parser = make_parser()
    args, overrides = config_args.parse(parser, argv)
    try:
        sys.exit(_main(args, overrides))
    except ValueError as e:
        print(f"dsv3-generate: error: {e}", file=sys.stderr)
        sys.exit(1)


def _main(args, overrides) -> int:
    from dsv3_jax.infer.sampling import SamplingParams  # after flag parsing: jax starts here
    from dsv3_jax.train.restore import workdir_config

    if not args.workdir:
        raise ValueError("--workdir=DIR is required (a dsv3-train workdir)")
    fallback = config_args.load_config(args.config) if args.config else None
    exp = config_args.experiment(args, overrides, workdir_config(args.workdir, fallback))
    if args.print_config:
        config_args.print_config(exp)
        return 0
    bad_blocks = sorted({o[len(config_args.OVERRIDE_PREFIX):].split(".")[0] for o in overrides} - {"model"})
    if bad_blocks:
        raise ValueError(f"--config.{bad_blocks[0]}.*: dsv3-generate uses only the model block of the config")
    sampling = SamplingParams(args.temperature, args.top_k, args.top_p)
    stops = [s.strip() for s in args.stop_tokens.split(",")]
    if not all(s.lstrip("-").isdigit() for s in stops):
        raise ValueError(f"--stop_tokens: expected comma-separated token ids, got {args.stop_tokens!r}")
    if args.step is not None and args.step < 0:
        raise ValueError(f"--step: must be a checkpoint step >= 0, got {args.step}")
    run(args.workdir, args.prompt or ["def "], config=fallback, max_new_tokens=args.max_new_tokens,
        sampling=sampling, seed=args.seed, stop_tokens=[int(s) for s in stops], speculative=args.speculative,
        absorb=args.cache == "absorb", step=args.step, model=exp.model if overrides else None)
    return 0


if __name__ == "__main__":
    main()
