"""Config files on the command line: find, load, override, describe and print them (every tool, one style).

    --config=configs/tiny.py[:arg]          a config file (ml-collections style: get_config(arg) -> ConfigDict)
    --config.train.steps=300                override one field (int, float, bool true/false, str, tuple [a,b])
    --print_config                          print the resolved, validated config and exit

`configs/NAME.py` (or just NAME) resolves to the packaged `dsv3_jax/configs/NAME.py` when no such file exists
under the current directory, so the README commands and the notebooks find the configs after any install,
editable or not. Overrides are parsed by ml_collections' config_flags against the file's ConfigDict (the field's
current type decides how a value is read); an unknown field is a ValueError naming it with the closest spelling.
Flags are spelled with underscores in every tool (`--max_new_tokens`); `--max-new-tokens` is read the same.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib.util
import logging
import os
import sys
import traceback
from typing import Iterable, Sequence

import ml_collections

from dsv3_jax import registry
from dsv3_jax.config import ModelConfig
from dsv3_jax.data.config import BACKENDS, SOURCES, DataConfig
from dsv3_jax.experiment_config import (BLOCKS, NONFINITE_MODES, PIPELINE_RESIDUALS, ExperimentConfig, MeshConfig,
                                        TrainConfig)

PACKAGED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
OVERRIDE_PREFIX = "--config."
LOG = logging.getLogger("dsv3_jax")
_LOADED: list[str] = []  # config files loaded so far (unique module names)
_BLOCK_TYPES = {"model": ModelConfig, "train": TrainConfig, "data": DataConfig, "mesh": MeshConfig}


def config_names() -> list[str]:
    """Names of the packaged configs (dsv3_jax/configs/NAME.py)."""
    return sorted(f[:-3] for f in os.listdir(PACKAGED_DIR) if f.endswith(".py") and not f.startswith("_"))


def resolve_config_path(spec: str) -> str:
    """`path[:arg]` -> an existing file's absolute `path[:arg]`; `configs/NAME.py` or `NAME` falls back to the
    packaged config. ValueError naming the flag and the packaged names when nothing matches."""
    path, sep, arg = spec.partition(":")
    if os.path.isfile(path):
        return os.path.abspath(path) + sep + arg
    name = os.path.basename(path)[:-3] if path.endswith(".py") else path
    packaged = os.path.join(PACKAGED_DIR, f"{name}.py")
    if (os.path.dirname(path) in ("", "configs") or path == name) and os.path.isfile(packaged):
        return packaged + sep + arg
    raise ValueError(f"--config: no such config file {path!r} (relative to {os.getcwd()}); packaged configs: "
                     f"{', '.join(config_names())} (--config=configs/NAME.py or --config=NAME)")


def split_overrides(argv: Iterable[str]) -> tuple[list[str], list[str]]:
    """(['--config.block.field=value', ...], the other arguments). `--config.a.b value` is joined too."""
    argv, overrides, rest, i = list(argv), [], [], 0
    while i < len(argv):
        a = argv[i]
        if a.startswith(OVERRIDE_PREFIX):
            if "=" not in a and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                a, i = f"{a}={argv[i + 1]}", i + 1
            overrides.append(a)
        else:
            rest.append(a)
        i += 1
    return overrides, rest


def _check_override_names(cd: ml_collections.ConfigDict, overrides: Sequence[str]) -> None:
    """ValueError naming an override whose block or field the config does not have."""
    for o in overrides:
        dotted = o[len(OVERRIDE_PREFIX):].partition("=")[0]
        block, _, field = dotted.partition(".")
        if block not in cd:
            raise ValueError(f"{o}: unknown block {block!r}; expected --config.BLOCK.FIELD=VALUE with BLOCK one of "
                             f"{', '.join(BLOCKS)}")
        node = cd[block]
        for part in field.split("."):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                known = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
                close = difflib.get_close_matches(part, known, n=1)
                hint = f" (did you mean {block}.{close[0]}?)" if close else ""
                raise ValueError(f"{o}: {block} has no field {field!r}{hint}; `--help` lists the fields")
            node = node[part]


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """The ConfigDict of config file `spec` (path[:arg], see resolve_config_path: `get_config(arg)`) with
    `overrides` applied ('--config.train.steps=3' or 'train.steps=3'). ExperimentConfig validates the values."""
    path, _, arg = resolve_config_path(spec).partition(":")
    module_spec = importlib.util.spec_from_file_location(f"_dsv3_config_{len(_LOADED)}", path)
    module = importlib.util.module_from_spec(module_spec)
    _LOADED.append(path)
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:  # a user's file: one line naming it and the line that failed
        raise ValueError(f"--config={spec}: {path} does not load: {_where(e, path)}") from e
    if not callable(getattr(module, "get_config", None)):
        raise ValueError(f"--config={spec}: {path} defines no get_config(arg)")
    try:
        cd = module.get_config(arg or None)
    except Exception as e:
        raise ValueError(f"--config={spec}: get_config({arg or ''}) of {path} failed: {_where(e, path)}") from e
    if not isinstance(cd, ml_collections.ConfigDict):
        raise ValueError(f"--config={spec}: get_config() returned {type(cd).__name__}, expected a ConfigDict")
    return apply_overrides(cd, overrides)


def _where(error: Exception, path: str) -> str:
    """`line 3: SyntaxError: expected ':'`: the error and the line of `path` it was raised at (if any)."""
    line = getattr(error, "lineno", None) if isinstance(error, SyntaxError) else None
    for frame in traceback.extract_tb(error.__traceback__):
        if os.path.abspath(frame.filename) == os.path.abspath(path):
            line = frame.lineno
    message = error.msg if isinstance(error, SyntaxError) else str(error)
    return (f"line {line}: " if line else "") + f"{type(error).__name__}: {message}"


def apply_overrides(cd: ml_collections.ConfigDict, overrides: Sequence[str]) -> ml_collections.ConfigDict:
    """A copy of `cd` with '--config.block.field=value' (or 'block.field=value') overrides applied; each value
    is read as the field's current type (config_flags). ValueError naming the override when it does not fit."""
    from absl import flags
    from ml_collections import config_flags

    overrides = [o if o.startswith(OVERRIDE_PREFIX) else OVERRIDE_PREFIX + o for o in overrides]
    if not overrides:
        return cd
    _check_override_names(cd, overrides)
    argv = ["dsv3", *overrides]
    values = flags.FlagValues()
    config_flags.DEFINE_config_dict("config", ml_collections.ConfigDict(cd.to_dict()), flag_values=values,
                                    lock_config=True, sys_argv=argv)
    try:
        values(argv)
    except flags.Error as e:  # a value that does not parse as the field's type: name the flag
        raise ValueError(str(e).replace("flag --", "--", 1)) from None
    return values.config


def field_help() -> str:
    """Every config field with its type and default (and allowed values), for --help."""
    from dsv3_jax.parallel.pipeline import SCHEDULE_NAMES

    choices = {**{f"model.{k}": v for k, v in registry.choice_fields().items()},
               "train.nonfinite": NONFINITE_MODES, "train.pipeline_residuals": PIPELINE_RESIDUALS,
               "train.pipeline_schedule": SCHEDULE_NAMES, "data.source": SOURCES, "data.backend": BACKENDS}
    lines = []
    for block in BLOCKS:
        lines.append(f"  {block}:" + (" (defaults: DeepSeek-V3 671B; config files set them)" if block == "model"
                                      else ""))
        for f in dataclasses.fields(_BLOCK_TYPES[block]):
            name = f"{block}.{f.name}"
            allowed = f"  {{{'|'.join(choices[name])}}}" if name in choices else ""
            lines.append(f"    {name}: {f.type} = {f.default!r}{allowed}")
    return "\n".join(lines)


def config_lines(exp: ExperimentConfig) -> list[str]:
    """The resolved config, one `block.field = value` line per field (--print_config)."""
    return [f"{block}.{k} = {v!r}" for block, d in exp.to_dict().items() for k, v in d.items()]


def config_summary(exp: ExperimentConfig) -> list[str]:
    """The resolved config as one line per block (logged at start by every tool that takes a config)."""
    show = lambda v: repr(v) if isinstance(v, str) else str(v)  # noqa: E731 ('def ', '' stay visible)
    return [f"  {block}: " + " ".join(f"{k}={show(v)}" for k, v in d.items()) for block, d in exp.to_dict().items()]


def log_config(exp: ExperimentConfig, spec: str, overrides: Sequence[str]) -> None:
    """INFO: the config file, the overrides and the resolved config (--verbose shows library INFO logs too)."""
    given = ", ".join(o[len(OVERRIDE_PREFIX):] for o in overrides) or "none"
    LOG.info("config %s, overrides: %s; resolved:\n%s", spec, given, "\n".join(config_summary(exp)))


EPILOG = """config files and overrides:
  --config=configs/NAME.py[:arg] (or --config=NAME) picks a config file; packaged: {names}.
  --config.BLOCK.FIELD=VALUE overrides one field, e.g. --config.train.steps=300 --config.model.mtp_depth=2
  (ints, floats, bools true/false, strings, tuples [a,b]); --print_config prints the resolved config and exits.
  An unknown field or a bad value is an error naming the field. Every field, with its type and default:
{fields}"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog):
        super().__init__(prog, max_help_position=32, width=110)


def make_parser(prog: str, doc: str, *, config: str | None = None, log_info: bool = False) -> argparse.ArgumentParser:
    """An argparse parser in the project's one style; `config` = None (no config), "required" or "optional"
    adds --config, --print_config and the override help with every field. `log_info`: INFO lines (the
    resolved config) shown without --verbose."""
    epilog = EPILOG.format(names=", ".join(config_names()), fields=field_help()) if config else None
    p = argparse.ArgumentParser(prog=prog, description=doc, epilog=epilog, formatter_class=_Formatter,
                                allow_abbrev=False)
    if config:
        p.add_argument("--config", required=False, metavar="FILE[:ARG]",
                       help="experiment config file" + (" (required)" if config == "required" else ""))
        p.add_argument("--print_config", action="store_true", help="print the resolved config and exit")
    p.add_argument("-v", "--verbose", action="store_true", help="show INFO logs (the resolved config; orbax, absl)")
    p.set_defaults(log_info=log_info)
    return p


def normalize_flags(argv: Iterable[str]) -> list[str]:
    """`--max-new-tokens=3` -> `--max_new_tokens=3` (one spelling; config overrides are left as they are)."""
    out = []
    for a in argv:
        if a.startswith("--") and not a.startswith(OVERRIDE_PREFIX):
            name, eq, value = a.partition("=")
            a = "--" + name[2:].replace("-", "_") + eq + value
        out.append(a)
    return out


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None):
    """(args, overrides): the tool's flags (hyphens read as underscores) and its --config.x=y overrides.
    Unknown flags exit 2 with `prog: error: ...` (argparse); so do overrides for a tool without a config."""
    argv = normalize_flags(sys.argv[1:] if argv is None else argv)
    overrides, rest = split_overrides(argv)
    args = parser.parse_args(rest)
    setup_logging(args.verbose, info=parser.get_default("log_info") or False)
    if overrides and not hasattr(args, "config"):
        parser.error(f"{overrides[0]}: this tool takes no config")
    return args, overrides


def experiment(args, overrides: Sequence[str], cd: ml_collections.ConfigDict | None = None) -> ExperimentConfig:
    """The validated ExperimentConfig of --config (or of `cd`, e.g. a workdir's config.json) with the
    overrides; ValueError naming the flag or field. Logged at INFO unless --print_config (then the CLI prints
    it and stops)."""
    if cd is None:
        if not args.config:
            raise ValueError("--config=FILE is required" + (" for the overrides" if overrides else ""))
        cd = load_config(args.config, overrides)
    else:
        cd = apply_overrides(cd, overrides)
    exp = ExperimentConfig.from_dict(cd)
    if not args.print_config:
        log_config(exp, args.config or "(the workdir's config.json)", overrides)
    return exp


def print_config(exp: ExperimentConfig) -> None:
    """--print_config: every field of the resolved config, `block.field = value`, on stdout."""
    print("\n".join(config_lines(exp)))


class _Stderr(logging.Handler):
    """Writes to the current sys.stderr (looked up per record: tests and notebooks replace it)."""

    def emit(self, record):
        sys.stderr.write(self.format(record) + "\n")
        sys.stderr.flush()


def setup_logging(verbose: bool, info: bool = False) -> None:
    """The `dsv3_jax` logger writes to stderr: INFO lines (the resolved config, the cache directory) with
    `info` (dsv3-train, whose console is a log) or --verbose, warnings always; absl/orbax INFO only with
    --verbose."""
    if not any(isinstance(h, _Stderr) for h in LOG.handlers):
        LOG.addHandler(_Stderr())
        LOG.propagate = False
    LOG.setLevel(logging.INFO if info or verbose else logging.WARNING)
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.INFO if verbose else absl_logging.WARNING)
