"""Fine-tuning from a checkpoint: `dsv3-train --config=configs/finetune.py --config.train.init_from=DIR`.

DIR is a Hugging Face DeepSeek-V2/V3 directory or a params directory from dsv3-convert. Then
  * the model config is the checkpoint's (`resolve_experiment`; a model field set to another value is a
    ValueError naming it, runtime fields such as moe_impl, dtype, fp8 may be set: experiment_config.py);
  * the data is tokenized with the checkpoint's tokenizer (`run_tokenizer`; its files are copied to
    workdir/tokenizer/ so dsv3-generate and dsv3-convert --to-hf find it: `save_tokenizer`);
  * the weights are loaded into the fresh train state, in its sharded layout, each process reading its own
    shards (`load_weights`); the optimizer state is new. A workdir that already has checkpoints resumes from
    them as usual and never reads DIR's weights again.

The readers live in interop/, above train/ in the layering (docs/architecture.md), so they register here as
`Source`s (interop/sources.py, run by `import dsv3_jax`), as the config-choice registries of registry.py do.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Callable

import flax
import jax

from dsv3_jax import param_tree as pt
from dsv3_jax.config import ModelConfig
from dsv3_jax.config_fields import as_mapping
from dsv3_jax.data import hf_tokenizer
from dsv3_jax.data.tokenizers import ByteTokenizer, Tokenizer
from dsv3_jax.experiment_config import ExperimentConfig


@dataclasses.dataclass(frozen=True)
class Source:
    """A kind of checkpoint directory: detect(path), model_config(path, mtp) -> ModelConfig, and
    load(path, cfg, shardings {variable path: sharding}) -> {'params', 'router'} float32 jax.Arrays."""

    name: str
    layout: str  # what such a directory holds, for error messages
    detect: Callable[[str], bool]
    model_config: Callable[[str, bool], ModelConfig]
    load: Callable[[str, ModelConfig, dict], dict]


SOURCES: dict[str, Source] = {}


def register_source(source: Source) -> None:
    SOURCES[source.name] = source


def find_source(path: str) -> Source:
    """The Source that reads directory `path`; ValueError naming what was expected."""
    if not os.path.isdir(path):
        raise ValueError(f"train.init_from={path!r}: no such directory")
    for source in SOURCES.values():
        if source.detect(path):
            return source
    kinds = "; or ".join(s.layout for s in SOURCES.values()) or "(no reader registered: import dsv3_jax)"
    raise ValueError(f"train.init_from={path!r}: not a checkpoint directory; expected {kinds}")


def resolve_experiment(cd) -> ExperimentConfig:
    """The validated ExperimentConfig of a run; with train.init_from its model block comes from the checkpoint."""
    if isinstance(cd, ExperimentConfig):
        return cd
    d = as_mapping(cd)
    path = as_mapping(d.get("train")).get("init_from")
    if not path or not isinstance(path, str):
        return ExperimentConfig.from_dict(d)
    mtp = as_mapping(d.get("model")).get("mtp_depth") != 0
    return ExperimentConfig.from_dict(d, checkpoint_model=find_source(path).model_config(path, mtp))


def run_tokenizer(exp: ExperimentConfig) -> Tokenizer:
    """The run's tokenizer: the byte tokenizer, or train.init_from's own; checked against the model's vocab."""
    path = exp.train.init_from
    if not path:
        tok = ByteTokenizer()
    elif hf_tokenizer.tokenizer_dir(path) is None:
        raise ValueError(f"train.init_from={path!r}: {os.path.join(path, hf_tokenizer.TOKENIZER_JSON)} is missing "
                         f"(nor in {hf_tokenizer.SUBDIR}/); the data must be tokenized with the checkpoint's tokenizer")
    else:
        tok = hf_tokenizer.load_tokenizer(path)
        if exp.mesh.pipe > 1:
            raise ValueError("mesh.pipe > 1 with train.init_from: the pipelined step masks the byte tokenizer's PAD "
                             "id (parallel/pipeline/model_stages.py), not the checkpoint tokenizer's; use mesh.pipe=1")
    tok.check_model(exp.model.vocab_size)
    return tok


def save_tokenizer(exp: ExperimentConfig, workdir: str) -> None:
    """Copy train.init_from's tokenizer files to workdir/tokenizer/ (once; a different one there is an error)."""
    path = exp.train.init_from
    if not path or hf_tokenizer.tokenizer_dir(path) is None:
        return
    dest = os.path.join(workdir, hf_tokenizer.SUBDIR)
    if os.path.isdir(dest):
        if not hf_tokenizer.same_tokenizer_files(path, workdir):
            raise ValueError(f"{dest}: holds another tokenizer than train.init_from={path!r}'s; this workdir was "
                             "trained with other ids (use a new --workdir)")
        return
    tmp = dest + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    hf_tokenizer.copy_tokenizer_files(path, tmp)
    os.replace(tmp, dest)


def load_weights(state, cfg: ModelConfig, path: str, log=print):
    """`state` (a fresh TrainState) with params and router biases read from checkpoint `path` in the state's own
    layout; every leaf's path, shape and dtype must match the state's."""
    source = find_source(path)
    shardings = {}
    for name, tree in ((pt.PARAMS, state.params), (pt.ROUTER, state.router)):
        for k, a in flax.traverse_util.flatten_dict(tree).items():
            shardings[(name,) + k] = a.sharding
    variables = source.load(path, cfg, shardings)
    for name, tree in ((pt.PARAMS, state.params), (pt.ROUTER, state.router)):
        want = flax.traverse_util.flatten_dict(tree)
        got = flax.traverse_util.flatten_dict(variables.get(name, {}))
        for k in sorted(set(want) | set(got)):
            a, b = want.get(k), got.get(k)
            if a is None or b is None or a.shape != b.shape or a.dtype != b.dtype:
                raise ValueError(f"train.init_from={path!r}: variable {'/'.join((name,) + k)} is "
                                 f"{_describe(b)} in the checkpoint but {_describe(a)} in the train state")
    n = sum(x.size for x in jax.tree.leaves(variables[pt.PARAMS]))
    log(f"init_from: {n:,} parameters from {source.name} checkpoint {path}; fresh optimizer state")
    return state.replace(params=variables[pt.PARAMS], router=variables.get(pt.ROUTER, state.router))


def _describe(a) -> str:
    return "absent" if a is None else f"{a.dtype} {tuple(a.shape)}"
