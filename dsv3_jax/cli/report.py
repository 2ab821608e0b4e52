"""`dsv3-report`: the paper's tables (KV cache, GFLOPs/token, parameters, TPOT, ...) with ours and the ratio.

    dsv3-report                        # text tables
    dsv3-report --format=markdown      # markdown tables
    dsv3-report --json                 # {"tables": [{..., "rows": [{"name", "paper", "ours", ...}]}]}
    dsv3-report --config=configs/tiny.py [--devices=8] [--config.model.n_layers=8]   # add a table for one config
    python -m dsv3_jax.cli.report ...  # the same

All numbers come from dsv3_jax.analysis (see its modules for the conventions).
"""

from __future__ import annotations

import argparse
import sys

from dsv3_jax import config_args
from dsv3_jax.analysis import report, tables


def load_config(spec: str, overrides=()):
    """`path/to/config.py[:arg]` (or a packaged name) -> its ConfigDict with the overrides applied."""
    return config_args.load_config(spec, overrides)


def make_parser():
    p = config_args.make_parser("dsv3-report", __doc__, config="optional")
    p.add_argument("--format", choices=("text", "markdown"), default="text", help="table format")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--seq_len", type=int, default=4096, help="sequence length of the FLOPs table")
    p.add_argument("--devices", type=int, default=None, help="devices for --config's memory estimate")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    args, overrides = config_args.parse(make_parser(), argv)
    args.overrides = overrides
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.config or args.print_config or args.overrides:
        try:
            exp = config_args.experiment(args, args.overrides)
            if args.print_config:
                config_args.print_config(exp)
                return 0
            table = report.config_table(exp.to_configdict(), args.devices, label=args.config)
        except ValueError as e:  # bad file, bad config or bad mesh: say which, no traceback
            sys.stderr.write(f"dsv3-report: error: {e}\n")
            return 2
    out = report.build_tables(seq_len=args.seq_len)
    if args.config:
        out.append(table)
    if args.json:
        text = tables.to_json(out)
    else:
        text = tables.to_markdown(out) if args.format == "markdown" else tables.to_text(out)
    sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
