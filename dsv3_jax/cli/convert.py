"""`dsv3-convert`: Hugging Face DeepSeek-V2/V3 checkpoints <-> dsv3_jax.

    dsv3-convert --from_hf=HF_DIR --to=PARAMS_DIR [--dtype=bfloat16] [--keep_fp8] [--no_mtp] [--overwrite]
    dsv3-convert --to_hf=HF_DIR --from=SRC [--step=N] [--dtype=bfloat16] [--shard_size=5GB] [--overwrite]
    python -m dsv3_jax.cli.convert ...          # the same

HF_DIR: config.json + safetensors shards (FP8 + weight_scale_inv supported). PARAMS_DIR: model_config.json +
an orbax `variables/` checkpoint ({'params', 'router'}). SRC: a params directory or a dsv3-train workdir
(the model variables of its newest usable checkpoint, or --step=N; an unusable checkpoint is reported on one
line and the previous one is used). Outputs are written to a temporary sibling, renamed when complete, and
honour the umask. Orbax's INFO logs are shown only with -v. The conversion code lives in dsv3_jax.interop;
this file only parses flags (spelled with underscores like every tool; --from-hf etc. are read the same).
Needs no extra (safetensors are read without torch). A checkpoint's tokenizer files travel with it: into
PARAMS_DIR/tokenizer/, and from SRC (PARAMS_DIR/tokenizer/, or a workdir fine-tuned with train.init_from) into
HF_DIR.
"""

from __future__ import annotations

import argparse
import sys

from dsv3_jax import config_args

DTYPES = ("float32", "bfloat16", "float16")


def parse_args(argv=None) -> argparse.Namespace:
    p = config_args.make_parser("dsv3-convert", __doc__)
    way = p.add_mutually_exclusive_group(required=True)
    way.add_argument("--from_hf", metavar="HF_DIR", help="convert this Hugging Face checkpoint to --to")
    way.add_argument("--to_hf", metavar="HF_DIR", help="write a Hugging Face checkpoint here from --from")
    p.add_argument("--to", metavar="PARAMS_DIR", help="output params directory (with --from-hf)")
    p.add_argument("--from", dest="src", metavar="SRC", help="params directory or training workdir (with --to-hf)")
    p.add_argument("--dtype", choices=DTYPES, default=None,
                   help="parameter dtype of the output (default: float32 from HF; as stored to HF)")
    p.add_argument("--keep_fp8", action="store_true", help="keep FP8 weights + block scales (from HF)")
    p.add_argument("--no_mtp", action="store_true", help="skip the MTP layers (from HF)")
    p.add_argument("--shard_size", default="5GB", help="max bytes per safetensors shard (to HF), e.g. 5GB")
    p.add_argument("--step", type=int, default=None, help="checkpoint step of a training workdir (--from)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    args, _ = config_args.parse(p, argv)
    if args.from_hf and not args.to:
        p.error("--from_hf needs --to=PARAMS_DIR")
    if args.to_hf and not args.src:
        p.error("--to_hf needs --from=PARAMS_DIR_OR_WORKDIR")
    if args.step is not None and (args.from_hf or args.step < 0):
        p.error("--step needs --to_hf with a training workdir as --from, and a step >= 0")
    return args


def run(args: argparse.Namespace) -> str:
    """Do the conversion the flags describe; returns the output directory."""
    from dsv3_jax.interop import hf, jax_dirs

    if args.from_hf:
        cfg, variables = hf.load_hf_checkpoint(args.from_hf, keep_fp8=args.keep_fp8,
                                               dtype=args.dtype or "float32", mtp=not args.no_mtp)
        return jax_dirs.save_params_dir(cfg, variables, args.to, overwrite=args.overwrite,
                                        tokenizer_from=args.from_hf)  # tokenizer files go along (tokenizer/)
    cfg, variables = jax_dirs.load_jax_source(args.src, args.step)
    return hf.save_hf_checkpoint(cfg, variables, args.to_hf, shard_size=args.shard_size,
                                 dtype=args.dtype, overwrite=args.overwrite, tokenizer_from=args.src)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        out = run(args)
    except ValueError as e:
        print(f"dsv3-convert: error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
