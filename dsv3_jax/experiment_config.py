"""The one shape of an experiment config: model + train + data + mesh, typed and validated.

Config files in `configs/` call `experiment_config(model=...)`, which returns an ml-collections ConfigDict with
EVERY field (so any of them can be overridden from the command line, --config.train.lr=1e-3) and override the
few train/data/mesh knobs they care about. The training loop, the restore path and the CLIs then build the
frozen `ExperimentConfig` from that dict exactly once (`ExperimentConfig.from_dict`): `ModelConfig`
(config.py), `TrainConfig`, `DataConfig` (data/config.py) and `MeshConfig`. Unknown keys, values of the wrong
type and out-of-range values are ValueErrors naming `block.field`; the dataclass defaults below (and in
data/config.py and config.py) are the project's only defaults, so the rest of the code reads attributes and
never `cd.get(name, default)`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from dsv3_jax.config import ModelConfig
from dsv3_jax.config_fields import as_mapping, build, check, unknown_keys_error
from dsv3_jax.data.config import DataConfig
from dsv3_jax.data.pipeline import check_seq_len

BLOCKS = ("model", "train", "data", "mesh")
# Model fields that choose how the model runs, not what it is: the only ones a run with train.init_from may set
# (the checkpoint fixes the rest). mtp_depth may also be 0: fine-tune without the MTP modules.
RUNTIME_MODEL_FIELDS = ("dtype", "moe_impl", "ep_dispatch", "ep_payload", "ep_combine", "ep_nodes", "remat", "fp8",
                        "fp8_impl", "fp8_amax_history", "init_std")
_PY_TYPES = {"int": int, "float": float, "str": str, "bool": bool}
NONFINITE_MODES = ("stop", "skip")
PIPELINE_RESIDUALS = ("recompute", "store")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimizer, schedules, intervals and the reliability switches of a run (train/loop.py)."""

    seed: int = 0
    steps: int = 1000
    batch_size: int = 16  # global batch, sequences
    seq_len: int = 128
    # AdamW as V3 report §4.2.
    lr: float = 2.2e-4
    min_lr_ratio: float = 0.1  # 2.2e-4 -> 2.2e-5
    warmup_steps: int = 100
    b1: float = 0.9
    b2: float = 0.95
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    bf16_moments: bool = False
    # Loss weights and schedules (V3 report §4.2), scaled to the run.
    mtp_lambda: float = 0.3
    mtp_lambda_final: float = 0.1
    balance_alpha: float = 1e-4
    bias_update_speed: float = 1e-3  # gamma
    # Pipeline parallelism, used when mesh.pipe > 1 (V3 report §3.2.1; train/pipeline_step.py).
    pipeline_schedule: str = "dualpipe"  # "1f1b" | "zb1p" | "dualpipe" | "dualpipev" (dualpipe needs pipe even)
    pipeline_chunks: int = 0  # micro-batches per step; 0 = 2·pipe; batch_size must divide by chunks × data shards
    pipeline_residuals: str = "recompute"  # B/W recompute each stage's forward, or "store" F's vjp residuals
    log_every: int = 10
    eval_every: int = 100
    eval_batches: int = 8  # val batches per eval (a fixed order: the same sample each time); 0 = no evaluation
    checkpoint_every: int = 200
    sample_tokens: int = 200  # greedy sample printed at the end (0 = none)
    sample_prompt: str = "def "
    # Reliability (train/finite.py, train/resume.py, train/restore.py).
    nonfinite: str = "stop"  # a NaN/inf loss, gradient or update: "stop" the run, or "skip" (drop) that update
    max_nonfinite_skips: int = 10  # "skip": stop after this many non-finite steps in a row
    allow_config_change: str = ""  # comma-separated fields (e.g. "model.route_scale") a resume may change
    restore_step: int = -1  # resume from exactly this checkpoint (-1: the newest usable one)
    # Observability (train/profiling.py): [a, b] writes a jax.profiler trace of steps a..b (inclusive, the
    # step numbers of the log) to workdir/profile/; () = no trace.
    profile_steps: tuple = ()
    # Fine-tuning (train/init_from.py): a Hugging Face checkpoint or params directory whose weights start the run
    # (fresh optimizer) and whose tokenizer tokenizes the data; the model block then comes from the checkpoint.
    init_from: str = ""

    def __post_init__(self):
        if isinstance(self.profile_steps, list):  # from JSON (config.json) or a list literal
            object.__setattr__(self, "profile_steps", tuple(self.profile_steps))
        check("train", self, _train_rules())

    def warnings(self) -> list[str]:
        """Accepted but probably unintended settings, as lines the training loop logs."""
        out = []
        if self.warmup_steps > self.steps:
            out.append(f"warning: train.warmup_steps={self.warmup_steps} > train.steps={self.steps}: the learning "
                       f"rate never reaches train.lr={self.lr}")
        if self.profile_steps and self.profile_steps[1] > self.steps:
            out.append(f"warning: train.profile_steps={list(self.profile_steps)} ends after train.steps="
                       f"{self.steps}: the trace stops at step {self.steps}")
        return out

    @property
    def allowed_changes(self) -> tuple[str, ...]:
        """train.allow_config_change as a tuple of dotted field names."""
        return tuple(s.strip() for s in self.allow_config_change.split(",") if s.strip())

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        return build(cls, "train", d)


def _train_rules():
    from dsv3_jax.parallel.pipeline import SCHEDULE_NAMES  # lazy: keeps this module free of jax imports

    positive = (lambda v: v >= 1, "must be >= 1")
    unit = (lambda v: 0.0 <= v < 1.0, "must be in [0, 1)")
    non_negative = (lambda v: v >= 0, "must be >= 0")
    return {
        "seed": non_negative, "steps": positive, "batch_size": positive, "seq_len": positive,
        "lr": (lambda v: v > 0, "must be > 0"), "min_lr_ratio": (lambda v: 0.0 <= v <= 1.0, "must be in [0, 1]"),
        "warmup_steps": non_negative, "b1": unit, "b2": unit, "weight_decay": non_negative,
        "grad_clip": (lambda v: v > 0, "must be > 0 (the global-norm clip)"),
        "mtp_lambda": non_negative, "mtp_lambda_final": non_negative, "balance_alpha": non_negative,
        "bias_update_speed": non_negative,
        "pipeline_schedule": (lambda v: v in SCHEDULE_NAMES, f"must be one of {SCHEDULE_NAMES}"),
        "pipeline_chunks": (lambda v: v >= 0, "must be >= 0 (0 = 2·mesh.pipe)"),
        "pipeline_residuals": (lambda v: v in PIPELINE_RESIDUALS, f"must be one of {PIPELINE_RESIDUALS}"),
        "log_every": positive, "eval_every": positive, "checkpoint_every": positive,
        "eval_batches": (lambda v: v >= 0, "must be >= 0 (0 = no evaluation)"),
        "sample_tokens": non_negative,
        "nonfinite": (lambda v: v in NONFINITE_MODES, f"must be one of {NONFINITE_MODES}"),
        "max_nonfinite_skips": positive,
        "restore_step": (lambda v: v >= -1, "must be -1 (the newest usable checkpoint) or a step >= 0"),
        "profile_steps": (_profile_steps_ok, "must be [] (no trace) or [a, b]: two integer steps with 1 <= a <= b"),
    }


def _profile_steps_ok(v) -> bool:
    if not isinstance(v, tuple):
        return False
    ints = all(isinstance(x, int) and not isinstance(x, bool) for x in v)
    return v == () or (len(v) == 2 and ints and 1 <= v[0] <= v[1])


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh axis sizes (parallel/layout.py, sharding.py); one of them may be -1 = the rest."""

    data: int = -1
    fsdp: int = 1
    expert: int = 1
    pipe: int = 1
    tensor: int = 1

    def __post_init__(self):
        size = (lambda v: v == -1 or v >= 1, "must be >= 1, or -1 for the devices left over")
        check("mesh", self, {f.name: size for f in dataclasses.fields(self)})
        free = [f.name for f in dataclasses.fields(self) if getattr(self, f.name) == -1]
        if len(free) > 1:
            raise ValueError(f"mesh: at most one axis may be -1, got {['mesh.' + a for a in free]}")

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "MeshConfig":
        return build(cls, "mesh", d)


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """A whole run: the four typed blocks, cross-checked."""

    model: ModelConfig
    train: TrainConfig = TrainConfig()
    data: DataConfig = DataConfig()
    mesh: MeshConfig = MeshConfig()

    def __post_init__(self):
        check_seq_len(self.train.seq_len, self.model.max_seq_len)
        if self.train.eval_batches and self.data.val_fraction == 0:
            raise ValueError(f"data.val_fraction=0 leaves no validation data, but train.eval_batches="
                             f"{self.train.eval_batches} asks for evaluation; set train.eval_batches=0 to "
                             "train without evaluation, or a data.val_fraction > 0")
        fields = set(flat_fields(self))
        unknown = [name for name in self.train.allowed_changes if name not in fields]
        if unknown:
            raise ValueError(f"train.allow_config_change names unknown field(s) {unknown}; expected dotted "
                             f"names such as 'model.route_scale' or 'data.path'")

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: getattr(self, name).to_dict() for name in BLOCKS}

    def to_configdict(self) -> "ml_collections.ConfigDict":
        import ml_collections  # imported here: the typed configs work without it (e.g. on a bare GPU host)
        return ml_collections.ConfigDict(self.to_dict())

    @classmethod
    def from_dict(cls, d: Any, checkpoint_model: ModelConfig | None = None) -> "ExperimentConfig":
        """From a ConfigDict (e.g. --config=configs/tiny.py), a mapping or an ExperimentConfig (returned as is);
        a missing train/data/mesh block takes the defaults, a missing model block is an error. With
        `checkpoint_model` (the ModelConfig of train.init_from's checkpoint; train/init_from.py reads it) the
        model is that one, with only the runtime fields the model block sets (`model_from_checkpoint`)."""
        return d if isinstance(d, cls) else cls(**typed_blocks(d, checkpoint_model))


def typed_blocks(d: Any, checkpoint_model: ModelConfig | None = None) -> dict[str, Any]:
    """{"model": ModelConfig, "train": TrainConfig, "data": DataConfig, "mesh": MeshConfig} of a config mapping,
    each block validated on its own (ExperimentConfig adds the cross-block checks)."""
    d = as_mapping(d)
    unknown = [k for k in d if k not in BLOCKS]
    if unknown:
        raise unknown_keys_error("config", unknown, BLOCKS)
    train = TrainConfig.from_dict(d.get("train"))
    if checkpoint_model is not None:
        model = model_from_checkpoint(d.get("model"), checkpoint_model, train.init_from)
    elif "model" not in d:
        raise ValueError("config: no model block; expected the keys model, train, data, mesh")
    elif train.init_from and any(v is None for v in as_mapping(d["model"]).values()):
        raise ValueError(f"train.init_from={train.init_from!r}: the model block comes from the checkpoint; build "
                         "the run config with dsv3_jax.train.init_from.resolve_experiment (train() does)")
    else:
        model = _model_from_dict(d["model"])
    return dict(model=model, train=train, data=DataConfig.from_dict(d.get("data")),
                mesh=MeshConfig.from_dict(d.get("mesh")))


def model_from_checkpoint(block: Any, ckpt: ModelConfig, init_from: str) -> ModelConfig:
    """The checkpoint's ModelConfig with the runtime fields (RUNTIME_MODEL_FIELDS) that `block` sets; a set
    field that describes the model differently from the checkpoint is a ValueError naming it (unset fields,
    None, are the checkpoint's; configs/finetune.py leaves every one unset)."""
    block = as_mapping(block)
    names = [f.name for f in dataclasses.fields(ModelConfig)]
    unknown = [k for k in block if k not in names]
    if unknown:
        raise unknown_keys_error("model", unknown, names)
    changes = {}
    for k, v in block.items():
        if v is None or v == getattr(ckpt, k):
            continue
        if k in RUNTIME_MODEL_FIELDS or (k == "mtp_depth" and v == 0):
            changes[k] = v
            continue
        raise ValueError(f"model.{k}={v!r} conflicts with the checkpoint's {k}={getattr(ckpt, k)!r}: with "
                         f"train.init_from={init_from!r} the model config comes from the checkpoint; only the "
                         f"runtime fields {list(RUNTIME_MODEL_FIELDS)} (and mtp_depth=0) may be set. Use "
                         "configs/finetune.py, which leaves the model fields unset")
    try:
        return ckpt.replace(**changes)
    except (ValueError, TypeError) as e:
        raise ValueError(f"model: {e}") from None


def _model_from_dict(d: Any) -> ModelConfig:
    d = as_mapping(d)
    names = [f.name for f in dataclasses.fields(ModelConfig)]
    unknown = [k for k in d if k not in names]
    if unknown:
        raise unknown_keys_error("model", unknown, names)
    try:
        return ModelConfig.from_dict(d)
    except TypeError as e:  # a required field is missing
        raise ValueError(f"model: {e}") from None


def flat_fields(exp) -> dict[str, Any]:
    """{"block.field": value} over the four blocks of an ExperimentConfig or a typed_blocks dict (what config
    diffs and train.allow_config_change talk about)."""
    blocks = exp if isinstance(exp, dict) else {name: getattr(exp, name) for name in BLOCKS}
    return {f"{name}.{k}": v for name, block in blocks.items() for k, v in block.to_dict().items()}


def experiment_config(model: dict) -> "ml_collections.ConfigDict":
    """A full experiment ConfigDict: the given model fields and the default train/data/mesh blocks."""
    # Validate the model now (errors name the field) and list EVERY field, so any of them can be overridden
    # from the command line (--config.model.attention=gqa) or by an ablation. The cross-block checks run when
    # the run builds its ExperimentConfig, after the config file's own overrides.
    blocks = dict(model=_model_from_dict(model), train=TrainConfig(), data=DataConfig(), mesh=MeshConfig())
    import ml_collections
    return ml_collections.ConfigDict({name: block.to_dict() for name, block in blocks.items()})


def finetune_config() -> "ml_collections.ConfigDict":
    """An experiment ConfigDict for a run with train.init_from: every model field unset (a typed placeholder:
    the checkpoint gives it, and --config.model.moe_impl=... still parses), the default train/data/mesh blocks."""
    import ml_collections
    from ml_collections import config_dict

    model = {f.name: config_dict.placeholder(_PY_TYPES[f.type]) for f in dataclasses.fields(ModelConfig)}
    blocks = dict(train=TrainConfig(), data=DataConfig(), mesh=MeshConfig())
    return ml_collections.ConfigDict(dict(model=model, **{name: b.to_dict() for name, b in blocks.items()}))


def model_config(cd) -> ModelConfig:
    """The validated ModelConfig of an experiment ConfigDict (or mapping)."""
    return _model_from_dict(as_mapping(cd)["model"])
