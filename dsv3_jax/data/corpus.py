"""Text corpora as documents (UTF-8 bytes), and the deterministic train/val split by document.

Sources (`data.source`):
  "stdlib"     the *.py files of the running interpreter's standard library (`sysconfig` "stdlib" path), in
               sorted relative-path order. Pruned: `site-packages`/`dist-packages` (third-party code, not the
               stdlib, and ~10x its size), `__pycache__`, and the test directories `test`, `tests`,
               `idle_test` (over half the bytes, and full of deliberately odd inputs: wrong encodings, bad
               syntax, generated tables). That leaves ~14 MB on CPython 3.11. Non-UTF-8 or unreadable
               files are skipped and counted in `Corpus.summary()`. The corpus depends on the Python version.
  "files"      `data.path` is a glob (recursive `**` allowed; a matched directory contributes every file
               under it). `*.jsonl` files hold one JSON object per line whose `data.text_field` ("text")
               is a document; any other file is one UTF-8 text document. A non-UTF-8 file is an error
               naming it unless `data.skip_non_utf8=True`, which skips and counts it.
  "hf"         `data.path` is a Hugging Face dataset name (optional `data.hf_config`, `data.hf_split`);
               needs the `datasets` package and network or a local HF cache.
  "synthetic"  generated, learnable documents for benchmarks (see synthetic.py).

Split (`split_documents`): the unit is the document (a file for "stdlib"/text files, a record for jsonl
and "hf"). Documents are ranked by a hash of their name and the first round(val_fraction * n) (at least
one) go to val, so the split is deterministic, independent of file order, and a file never straddles it.
Empty documents are dropped and counted; nothing else is dropped silently.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import hashlib
import json
import os
import platform
import sysconfig
from typing import Any, Mapping, Sequence

from dsv3_jax.data import synthetic
from dsv3_jax.data.config import SOURCES, DataConfig
STDLIB_PRUNED_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__", "test", "tests",
                                "idle_test"})


@dataclasses.dataclass(frozen=True)
class Document:
    """One document: `name` (relative path, `path:line` or row id) and its UTF-8 `text` bytes."""

    name: str
    text: bytes


@dataclasses.dataclass(frozen=True)
class Corpus:
    """The documents of a source, in deterministic order, plus what was skipped and why."""

    description: str
    documents: tuple[Document, ...]
    skipped: tuple[str, ...] = ()  # "name: reason"
    num_empty: int = 0

    @property
    def num_bytes(self) -> int:
        """Total text bytes over all documents."""
        return sum(len(d.text) for d in self.documents)

    def summary(self) -> str:
        """One human-readable line: source, sizes, and every kind of skipped input with a count."""
        line = f"{self.description}: {len(self.documents)} documents, {self.num_bytes / 1e6:.2f} MB"
        if self.num_empty:
            line += f"; {self.num_empty} empty documents ignored"
        line += f"; {len(self.skipped)} files skipped"
        if self.skipped:
            line += " (" + ", ".join(self.skipped[:3]) + (", ..." if len(self.skipped) > 3 else "") + ")"
        return line


def load_corpus(data_cfg: DataConfig | Mapping[str, Any]) -> Corpus:
    """The Corpus named by a `data` config block (a DataConfig, or a mapping validated into one; see the module
    docstring for the fields)."""
    c = DataConfig.coerce(data_cfg)
    if c.source == "stdlib":
        return load_stdlib(max_files=c.max_docs or None)
    if c.source == "files":
        return load_files(c.path, text_field=c.text_field, max_docs=c.max_docs, skip_non_utf8=c.skip_non_utf8)
    if c.source == "hf":
        return load_hf(c.path, config=c.hf_config or None, split=c.hf_split, text_field=c.text_field,
                       max_docs=c.max_docs)
    if c.source == "synthetic":
        docs = synthetic.documents(c.synthetic_bytes, seed=c.seed)
        return _make_corpus(f"synthetic ({c.synthetic_bytes} bytes)", [Document(k, v) for k, v in docs], [])
    raise ValueError(f"data.source={c.source!r} is not one of {SOURCES}")  # unreachable: DataConfig checks it


def _make_corpus(description: str, docs: Sequence[Document], skipped: Sequence[str]) -> Corpus:
    """A Corpus of the non-empty `docs`; ValueError when nothing is left."""
    kept = tuple(d for d in docs if d.text)
    if not kept:
        raise ValueError(f"{description}: the corpus is empty ({len(docs)} documents, all empty; "
                         f"{len(skipped)} files skipped); expected at least one non-empty UTF-8 document")
    return Corpus(description, kept, tuple(skipped), len(docs) - len(kept))


# ----------------------------------------------------------------------------------------------- stdlib

def stdlib_root() -> str:
    """The running interpreter's standard-library directory."""
    return sysconfig.get_paths()["stdlib"]


def stdlib_files(root: str) -> list[str]:
    """Relative paths of the stdlib *.py files under `root`, sorted, pruned as in the module docstring."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in STDLIB_PRUNED_DIRS]
        rel = os.path.relpath(dirpath, root)
        for f in filenames:
            if f.endswith(".py"):
                found.append(f if rel == "." else os.path.join(rel, f).replace(os.sep, "/"))
    return sorted(found)


@functools.lru_cache(maxsize=4)
def load_stdlib(max_files: int | None = None, root: str | None = None) -> Corpus:
    """The stdlib corpus (cached per process). `max_files` keeps the first N files (tests, quick runs)."""
    root = root or stdlib_root()
    names = stdlib_files(root)
    if not names:
        raise ValueError(f"no *.py files found under the Python standard library directory {root!r} "
                         f"(sysconfig 'stdlib'); use data.source='files' with data.path")
    docs, skipped = [], []
    for name in names[:max_files]:
        try:
            text = _read_utf8(os.path.join(root, name))
        except ValueError as e:
            reason = "not UTF-8" if isinstance(e.__cause__, UnicodeDecodeError) else "unreadable"
            skipped.append(f"{name}: {reason}")
            continue
        docs.append(Document(name, text))
    description = f"stdlib of Python {platform.python_version()} at {root}"
    return _make_corpus(description, docs, skipped)


# ----------------------------------------------------------------------------------------------- files

def _read_utf8(path: str) -> bytes:
    """The bytes of `path`, which must be valid UTF-8; ValueError naming the file otherwise."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"cannot read data file {path!r}: {e.strerror or e}") from e
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"data file {path!r} is not valid UTF-8 (byte {e.start}: {e.reason}); expected "
                         f"UTF-8 text. Convert it, or set data.skip_non_utf8=True to skip such files") from e
    return data


def expand_glob(pattern: str) -> list[str]:
    """Sorted files matched by `pattern` (directories expand to the non-hidden files under them)."""
    if not pattern:
        raise ValueError("data.path is empty; data.source='files' needs a glob of .txt/.jsonl files")
    files = set()
    for match in glob.glob(os.path.expanduser(pattern), recursive=True):
        if not os.path.isdir(match):
            files.add(match)
            continue
        for dirpath, dirnames, filenames in os.walk(match):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            files.update(os.path.join(dirpath, f) for f in filenames if not f.startswith("."))
    if not files:
        raise ValueError(f"data.path={pattern!r} matched no files; expected a glob of UTF-8 text or "
                         f".jsonl files (e.g. 'data/**/*.txt')")
    return sorted(files)


def _jsonl_documents(path: str, name: str, data: bytes, text_field: str) -> list[Document]:
    """One Document per non-blank line of a jsonl file; ValueError naming file:line on bad records."""
    docs = []
    for lineno, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno}: invalid JSON ({e.msg}); expected one JSON object per line") from e
        if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
            raise ValueError(f"{path}:{lineno}: expected a JSON object with a string field "
                             f"{text_field!r} (data.text_field); got {type(record).__name__} "
                             f"{sorted(record)[:5] if isinstance(record, dict) else ''}")
        docs.append(Document(f"{name}:{lineno}", record[text_field].encode("utf-8")))
    return docs


def load_files(pattern: str, *, text_field: str = "text", max_docs: int = 0,
               skip_non_utf8: bool = False) -> Corpus:
    """User text/jsonl files matched by `pattern` (see the module docstring)."""
    paths = expand_glob(pattern)
    base = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths])
    docs, skipped = [], []
    for path in paths:
        name = os.path.relpath(os.path.abspath(path), base).replace(os.sep, "/")
        try:
            data = _read_utf8(path)
        except ValueError as e:
            if not (skip_non_utf8 and isinstance(e.__cause__, UnicodeDecodeError)):
                raise
            skipped.append(f"{name}: not UTF-8")
            continue
        if path.endswith(".jsonl"):
            docs.extend(_jsonl_documents(path, name, data, text_field))
        else:
            docs.append(Document(name, data))
        if max_docs and len(docs) >= max_docs:
            docs = docs[:max_docs]
            break
    return _make_corpus(f"files {pattern!r} ({len(paths)} matched)", docs, skipped)


# ----------------------------------------------------------------------------------------------- hf

def load_hf(name: str, *, config: str | None = None, split: str = "train", text_field: str = "text",
            max_docs: int = 0) -> Corpus:
    """Rows of a Hugging Face dataset; ValueError saying what is missing (package, network, field)."""
    if not name:
        raise ValueError("data.path is empty; data.source='hf' needs a Hugging Face dataset name")
    try:
        import datasets  # pylint: disable=import-outside-toplevel
    except ImportError as e:
        raise ValueError(f"data.source='hf' (data.path={name!r}) needs the optional `datasets` package: "
                         f"pip install datasets") from e
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as e:  # network, missing dataset/config/split: all surface as one clear message
        raise ValueError(f"could not load Hugging Face dataset data.path={name!r} (data.hf_config={config!r}, "
                         f"data.hf_split={split!r}): {type(e).__name__}: {e}. It needs network access or "
                         f"a local Hugging Face cache") from e
    if text_field not in ds.column_names:
        raise ValueError(f"Hugging Face dataset {name!r} has no column {text_field!r} (data.text_field); "
                         f"columns: {ds.column_names}")
    if max_docs:
        ds = ds.select(range(min(max_docs, len(ds))))
    docs = [Document(f"{split}/{i}", str(t).encode("utf-8")) for i, t in enumerate(ds[text_field])]
    return _make_corpus(f"hf {name!r} {config or ''} [{split}]", docs, [])


# ----------------------------------------------------------------------------------------------- split

def _name_hash(name: str) -> int:
    """A stable 64-bit hash of a document name (independent of PYTHONHASHSEED and platform)."""
    return int.from_bytes(hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest(), "big")


def split_documents(docs: Sequence[Document], val_fraction: float) -> tuple[tuple[Document, ...],
                                                                           tuple[Document, ...]]:
    """(train, val) documents, each in the input order; val = the round(val_fraction * n) (>= 1)
    documents with the smallest name hashes. val_fraction=0 gives an empty val split."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"data.val_fraction={val_fraction} must be in [0, 1)")
    if val_fraction == 0.0:
        return tuple(docs), ()
    if len(docs) < 2:
        raise ValueError(f"data.val_fraction={val_fraction} splits by document but the corpus has "
                         f"{len(docs)} document(s); provide more files/records, or set data.val_fraction=0 "
                         f"together with train.eval_batches=0 (no evaluation)")
    k = min(len(docs) - 1, max(1, round(val_fraction * len(docs))))
    ranked = sorted(range(len(docs)), key=lambda i: (_name_hash(docs[i].name), docs[i].name))
    val_ids = set(ranked[:k])
    train = tuple(d for i, d in enumerate(docs) if i not in val_ids)
    return train, tuple(d for i, d in enumerate(docs) if i in val_ids)
