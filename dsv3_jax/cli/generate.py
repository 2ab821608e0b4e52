"""`dsv3-generate --workdir=runs/tiny --prompt="def "`: stream text from the latest checkpoint of a run.

Only parses flags and calls dsv3_jax.infer. The model config comes from workdir/config.json (saved by
dsv3-train), or from --config=configs/<name>.py when that file is missing. Only the model variables of the
newest usable checkpoint (or --step=N) are read, never the optimizer state; an unusable checkpoint (corrupt,
incomplete or non-finite) is reported on one line and the previous one is used. Every argument is checked
before anything is printed; INFO logs (the resolved config, orbax) are shown only with --verbose.
`--config.model.FIELD=VALUE` decodes with another setting that keeps the parameters (e.g. moe_impl=dense).
Byte tokenizer: the prompt is BOS + its UTF-8 bytes; generation stops at EOS (or --stop_tokens).
`--hf=DIR [--chat]` generates from a Hugging Face checkpoint (or params directory) with its own tokenizer, and a
workdir fine-tuned from one uses the tokenizer it keeps in workdir/tokenizer/ (cli/hf_generate.py).
"""

from __future__ import annotations

import codecs
import sys

from dsv3_jax import config_args
from dsv3_jax.cli import hf_generate  # no jax at import: flags are parsed first

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


def run(workdir, prompts, *, config=None, max_new_tokens=200, sampling=None, seed=0, stop_tokens=None,
        speculative=False, absorb=True, out=None, err=None, step=None, model=None, chat=False):
    """The CLI's work, callable from Python: returns the GenerateResult (and prints the text). `model`: a
    ModelConfig to decode with instead of the trained one (same parameters, e.g. another moe_impl). chat: wrap
    each prompt in the checkpoint tokenizer's chat template (workdirs fine-tuned from a checkpoint)."""
    out, err = out or sys.stdout, err or sys.stderr
    if max_new_tokens < 1:
        raise ValueError(f"--max_new_tokens: must be >= 1, got {max_new_tokens}")
    if not prompts:
        raise ValueError("--prompt: expected at least one prompt")
    from dsv3_jax.data import tokenizer
    from dsv3_jax.infer.restore import load_workdir
    from dsv3_jax.infer.sampling import SamplingParams

    cfg, variables, step = load_workdir(workdir, config, step)
    if model is not None:
        _check_same_shapes(model, variables)
        cfg = model
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
    result, stats, seconds = hf_generate.timed_generate(cfg, variables, ids, speculative, **kwargs)
    if stream:
        stream.close()
    else:
        for p, seq in zip(prompts, result.sequences()):
            out.write(p + tokenizer.decode(seq) + "\n---\n")
    hf_generate.report(err, f"step {step}", result, stats, seconds)
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
    p.add_argument("--stop_tokens", default=None,
                   help="comma-separated token ids that end a sequence (default: the tokenizer's EOS)")
    p.add_argument("--speculative", action="store_true", help="MTP speculative decoding (model.mtp_depth >= 1)")
    p.add_argument("--cache", choices=("absorb", "naive"), default="absorb",
                   help="KV cache layout: MLA latent (absorb) or full per-head K/V (naive)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step to load (default: newest usable)")
    # Checkpoints with their own tokenizer (cli/hf_generate.py).
    p.add_argument("--hf", metavar="DIR", help="a Hugging Face DeepSeek checkpoint directory (or a params directory "
                   "from dsv3-convert) with its tokenizer files; instead of --workdir")
    p.add_argument("--chat", action="store_true", help="wrap each prompt in the checkpoint's chat template")
    p.add_argument("--keep_fp8", action="store_true",
                   help="--hf: keep FP8 weights FP8 (weight-only blockwise FP8 matmul)")
    p.add_argument("--hf_dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                   help="--hf: parameter dtype")
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

    if bool(args.workdir) == bool(args.hf):
        raise ValueError("exactly one of --workdir=DIR (a dsv3-train workdir) and --hf=DIR (a Hugging Face "
                         "checkpoint) is required")
    sampling = SamplingParams(args.temperature, args.top_k, args.top_p)
    stops = None if args.stop_tokens is None else [s.strip() for s in args.stop_tokens.split(",")]
    if stops is not None and not all(s.lstrip("-").isdigit() for s in stops):
        raise ValueError(f"--stop_tokens: expected comma-separated token ids, got {args.stop_tokens!r}")
    if args.step is not None and args.step < 0:
        raise ValueError(f"--step: must be a checkpoint step >= 0, got {args.step}")
    stop = None if stops is None else [int(s) for s in stops]  # None: the tokenizer's EOS
    prompts = args.prompt or ["def "]
    if args.hf:  # a checkpoint with its own tokenizer (cli/hf_generate.py)
        if overrides or args.print_config or args.config:
            raise ValueError("--hf: the model config comes from the checkpoint; --config, --config.x=y and "
                             "--print_config apply to --workdir")
        hf_generate.run_hf(args.hf, prompts, keep_fp8=args.keep_fp8, dtype=args.hf_dtype, chat=args.chat,
                           max_new_tokens=args.max_new_tokens, sampling=sampling, seed=args.seed, stop_tokens=stop,
                           speculative=args.speculative, absorb=args.cache == "absorb")
        return 0
    fallback = config_args.load_config(args.config) if args.config else None
    exp = config_args.experiment(args, overrides, workdir_config(args.workdir, fallback))
    if args.print_config:
        config_args.print_config(exp)
        return 0
    bad_blocks = sorted({o[len(config_args.OVERRIDE_PREFIX):].split(".")[0] for o in overrides} - {"model"})
    if bad_blocks:
        raise ValueError(f"--config.{bad_blocks[0]}.*: dsv3-generate uses only the model block of the config")
    run(args.workdir, prompts, config=fallback, max_new_tokens=args.max_new_tokens, sampling=sampling,
        seed=args.seed, stop_tokens=stop, speculative=args.speculative, absorb=args.cache == "absorb",
        step=args.step, model=exp.model if overrides else None, chat=args.chat)
    return 0


if __name__ == "__main__":
    main()
