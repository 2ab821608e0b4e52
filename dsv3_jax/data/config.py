"""DataConfig: the typed, validated `data` block of an experiment config (see corpus.py for the sources).

Built once from the ml-collections dict (`DataConfig.from_dict`, via experiment_config.ExperimentConfig);
unknown keys are an error naming them, and every value is checked here, so the readers in corpus.py and
pipeline.py take plain attributes and never fall back to a default of their own. The defaults below are the
project's only ones (experiment_config.experiment_config builds the ConfigDict from them).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from dsv3_jax.data import synthetic
from dsv3_jax.config_fields import build, check

SOURCES = ("stdlib", "files", "synthetic", "hf")
BACKENDS = ("auto", "numpy")  # one executor (pipeline.py); the field stays so that saved configs load


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the documents come from and how they are split (corpus.py, pipeline.py)."""

    source: str = "stdlib"  # "stdlib" | "files" | "synthetic" | "hf"
    path: str = ""  # glob of .txt/.jsonl files (source "files") or a dataset name (source "hf")
    val_fraction: float = 0.02  # documents held out for evaluation; 0 = none (then set train.eval_batches=0)
    max_docs: int = 0  # cap on documents (0 = all)
    text_field: str = "text"  # jsonl / hf column
    skip_non_utf8: bool = False  # user files that are not UTF-8 are an error unless this is set
    hf_config: str = ""
    hf_split: str = "train"
    synthetic_bytes: int = synthetic.DEFAULT_BYTES
    seed: int = 0  # the synthetic generator's seed (the batch order uses train.seed)
    backend: str = "auto"  # "auto" | "numpy": the same prefetching iterator (grain is no longer used)

    def __post_init__(self):
        check("data", self, {
            "source": (lambda v: v in SOURCES, f"must be one of {SOURCES}"),
            "val_fraction": (lambda v: 0.0 <= v < 1.0, "must be in [0, 1)"),
            "max_docs": (lambda v: v >= 0, "must be >= 0 (0 = all documents)"),
            "synthetic_bytes": (lambda v: v >= 1, "must be >= 1"),
            "seed": (lambda v: v >= 0, "must be >= 0"),
            "backend": (lambda v: v in BACKENDS, f"must be one of {BACKENDS} (the 'grain' backend was removed: the "
                        "built-in iterator prefetches the next batches with identical order and state)"),
        })
        if self.path and self.source in ("stdlib", "synthetic"):
            raise ValueError(f"data.path={self.path!r} is set but data.source={self.source!r} does not read it; "
                             f"use data.source='files' (a glob) or 'hf' (a dataset name), or clear data.path")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DataConfig":
        """From a mapping or ConfigDict; unknown keys are an error, missing ones take the defaults above."""
        return build(cls, "data", d)

    @classmethod
    def coerce(cls, d: "DataConfig | Mapping[str, Any]") -> "DataConfig":
        """`d` itself if it is a DataConfig, else DataConfig.from_dict(d)."""
        return d if isinstance(d, cls) else cls.from_dict(d)
