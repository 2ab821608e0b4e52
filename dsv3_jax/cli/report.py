"""`dsv3-report`: the paper's tables (KV cache, GFLOPs/token, parameters, TPOT, ...) with ours and the ratio.

    dsv3-report                        # text tables
    dsv3-report --format=markdown      # markdown tables
    dsv3-report --json                 # {"tables": [{..., "rows": [{"name", "paper", "ours", ...}]}]}
    dsv3-report --config=configs/tiny.py [--devices=8]   # add a table for one experiment config
    python -m dsv3_jax.cli.report ...  # the same

All numbers come from dsv3_jax.analysis (see its modules for the conventions).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

from dsv3_jax.analysis import report, tables


def load_config(spec: str):
    """`path/to/config.py[:arg]` -> the file's get_config(arg) ConfigDict (ml-collections config file)."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise ValueError(f"--config: no such config file {path!r}")
    mod_spec = importlib.util.spec_from_file_location("_dsv3_report_config", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"--config: {path!r} defines no get_config(arg)")
    return module.get_config(arg or None)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dsv3-report", description=__doc__.splitlines()[0])
    p.add_argument("--format", choices=("text", "markdown"), default="text", help="table format")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--seq-len", type=int, default=4096, help="sequence length of the FLOPs table")
    p.add_argument("--config", default=None, help="an experiment config file (path[:arg]) to add a table for")
    p.add_argument("--devices", type=int, default=None, help="devices for --config's memory estimate")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = report.build_tables(seq_len=args.seq_len)
    if args.config:
        try:
            out.append(report.config_table(load_config(args.config), args.devices, label=args.config))
        except ValueError as e:  # bad file, bad config or bad mesh: say which, no traceback
            sys.stderr.write(f"dsv3-report: error: {e}\n")
            return 2
    if args.json:
        text = tables.to_json(out)
    else:
        text = tables.to_markdown(out) if args.format == "markdown" else tables.to_text(out)
    sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
