"""The input pipeline: packed windows -> seeded order -> global batch -> this host's rows, prefetched.

Batches are dicts of int32 numpy arrays, `{"inputs": [b, T], "targets": [b, T]}` with targets = inputs
shifted by one token (packing.py), b = train.batch_size // process_count rows for this host. Segment ids
and positions are not included (DeepSeek-V3 packs without cross-document masking); derive them with
`packing.document_segments(batch["inputs"])` when needed. Training batches never contain PAD; in
validation batches a target equal to `tokenizer.PAD_ID` is padding and must be masked out of the loss.

Order (sampler.py): a fresh seeded permutation of the windows per epoch; consecutive runs of `batch_size`
samples form the GLOBAL batches, and host p takes rows [p*b, (p+1)*b) of each, so hosts are disjoint, their
union is the global batch, and the sequence of global batches does not depend on the host count.

Execution: global batch k is a pure function of k. `Prefetcher` computes batches k+1..k+PREFETCH on a
background thread while the training step on batch k runs on the device (the loop waits for each step, so
without it the host would build the next batch only afterwards); its state is `{"next_index": k}`, the
batches handed out so far, so the order and the checkpoint never depend on timing. (Earlier versions ran
this through grain with threads and prefetching off; the states are the same.)

Checkpointing: `TrainIterator.get_state()` is a small JSON-serializable dict (the next batch index plus a
fingerprint of seq_len, batch size, seed and a digest of the token stream). `set_state` on a fresh
iterator over the same data resumes with exactly the next batch, also under another host count or
backend; a state from different data or settings is a ValueError naming what differs.

Validation: every val token is evaluated once, in a fixed order (a permutation with a constant seed so
that the first k batches are an unbiased sample); the final window and final global batch are padded with
PAD. Nothing here imports jax: arrays stay on the host until the training loop places them.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import math
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from dsv3_jax.data import baseline, corpus, packing, sampler
from dsv3_jax.data.config import BACKENDS, DataConfig
from dsv3_jax.data.tokenizer import PAD_ID
from dsv3_jax.data.tokenizers import ByteTokenizer, Tokenizer

STATE_FORMAT = "dsv3_jax.data.TrainIterator/1"
VAL_ORDER_SEED = 0
PREFETCH = 2  # batches computed ahead of the one being trained on


@dataclasses.dataclass(frozen=True)
class DataInfo:
    """What the pipeline was built from; `summary()` is the line the training loop prints."""

    corpus_summary: str
    train_docs: int
    val_docs: int
    train_tokens: int
    val_tokens: int
    train_windows: int
    train_tokens_left_out: int  # the final remainder of the train stream (< seq_len)
    val_unigram_bits_per_byte: float  # nan when there is no val split

    def summary(self) -> str:
        """Corpus line, split sizes and the val byte-unigram baseline."""
        return (f"{self.corpus_summary}\n  train: {self.train_docs} docs, {self.train_tokens:,} tokens, "
                f"{self.train_windows:,} windows ({self.train_tokens_left_out} final tokens left out); "
                f"val: {self.val_docs} docs, {self.val_tokens:,} tokens, byte-unigram entropy "
                f"{self.val_unigram_bits_per_byte:.4f} bits/byte")


def check_seq_len(seq_len: int, max_seq_len: int) -> None:
    """ValueError unless 1 <= train.seq_len <= model.max_seq_len, naming both numbers."""
    if not 1 <= seq_len <= max_seq_len:
        raise ValueError(f"train.seq_len={seq_len} must be between 1 and the model's max_seq_len="
                         f"{max_seq_len} (model.max_seq_len: the positions RoPE/YaRN is configured for)")


def host_rows(batch_size: int, process_index: int, process_count: int) -> slice:
    """Rows of the global batch that belong to `process_index`; ValueError on an uneven split."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} must be in [0, process_count={process_count})")
    if batch_size < 1 or batch_size % process_count:
        raise ValueError(f"train.batch_size={batch_size} (the global batch) must be a positive multiple "
                         f"of process_count={process_count}")
    local = batch_size // process_count
    return slice(process_index * local, (process_index + 1) * local)


def stream_digest(stream: np.ndarray) -> str:
    """A short content digest of a token stream, stored in iterator states to catch data changes."""
    return hashlib.blake2b(np.ascontiguousarray(stream).tobytes(), digest_size=8).hexdigest()


def batch_fn(stream: np.ndarray, seq_len: int, order: sampler.WindowOrder,
             rows: slice) -> Callable[[int], dict[str, np.ndarray]]:
    """Global batch index -> this host's {"inputs", "targets"} batch."""
    def make(batch_index: int) -> dict[str, np.ndarray]:
        ids = order.window_ids(int(batch_index))[rows]
        return packing.split_inputs_targets(packing.gather_windows(stream, ids, seq_len))
    return make


def resolve_backend(backend: str) -> str:
    """The executor for data.backend: every accepted value runs the built-in Prefetcher."""
    if backend not in BACKENDS:
        raise ValueError(f"data.backend={backend!r} is not one of {BACKENDS}")
    return "numpy"


class Prefetcher:
    """Yields fn(k) for k = next_index, next_index + 1, ...; a worker thread computes the next `depth` items
    while the caller works. get_state/set_state: {"next_index": items handed out}."""

    def __init__(self, fn: Callable[[int], Any], depth: int = PREFETCH):
        self._fn, self._depth, self._next = fn, depth, 0
        self._pending: collections.deque = collections.deque()  # futures of fn(_next), fn(_next + 1), ...
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="dsv3-data")

    def _fill(self) -> None:
        while len(self._pending) < self._depth:
            self._pending.append(self._pool.submit(self._fn, self._next + len(self._pending)))

    def __iter__(self):
        return self

    def __next__(self):
        out = self._pending.popleft().result() if self._pending else self._fn(self._next)
        self._next += 1
        self._fill()  # start on the following batches now, while the device runs this one
        return out

    def get_state(self) -> dict[str, int]:
        return {"next_index": self._next}

    def set_state(self, state: dict[str, int]) -> None:
        for f in self._pending:
            f.cancel()
        self._pending.clear()
        self._next = int(state["next_index"])


class TrainIterator:
    """Infinite iterator of this host's training batches, with a JSON-serializable checkpoint state."""

    def __init__(self, stream: np.ndarray, seq_len: int, batch_size: int, seed: int,
                 process_index: int = 0, process_count: int = 1, info: DataInfo | None = None,
                 backend: str = "auto"):
        rows = host_rows(batch_size, process_index, process_count)
        n = packing.num_windows(len(stream), seq_len)
        if n < 1:
            raise ValueError(f"the train split has {len(stream)} tokens, fewer than train.seq_len + 1 = "
                             f"{seq_len + 1}; use more data or a shorter train.seq_len")
        if not 0 <= seed < 2**63:
            raise ValueError(f"train.seed={seed} must be in [0, 2**63) for the data order")
        order = sampler.WindowOrder(n, batch_size, seed)
        resolve_backend(backend)
        self._it = Prefetcher(batch_fn(stream, seq_len, order, rows))
        self.fingerprint = {"seq_len": int(seq_len), "batch_size": int(batch_size), "seed": int(seed),
                            "num_windows": n, "stream_digest": stream_digest(stream)}
        self.info = info

    def __iter__(self) -> "TrainIterator":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._it)

    @property
    def batches_per_epoch(self) -> float:
        """Global batches per pass over the train windows."""
        return self.fingerprint["num_windows"] / self.fingerprint["batch_size"]

    def get_state(self) -> dict[str, Any]:
        """The position in the batch sequence, as a JSON-serializable dict (save it with the model)."""
        return {"format": STATE_FORMAT, "next_batch": int(self._it.get_state()["next_index"]),
                "fingerprint": dict(self.fingerprint)}

    def set_state(self, state: dict[str, Any]) -> None:
        """Resume at `state` (from `get_state`, possibly of another process or host count)."""
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT or "next_batch" not in state:
            raise ValueError(f"data iterator state must be a dict from TrainIterator.get_state() with "
                             f"format={STATE_FORMAT!r}; got {str(state)[:200]}")
        saved = state.get("fingerprint", {})
        diffs = [f"{k}: saved {saved.get(k)!r}, now {v!r}" for k, v in self.fingerprint.items()
                 if saved.get(k) != v]
        if diffs:
            raise ValueError("data iterator state was saved for different data or settings ("
                             + "; ".join(diffs) + "); resuming would not replay the same batches")
        self._it.set_state({"next_index": int(state["next_batch"])})


class ValBatches:
    """Callable giving a fresh, deterministic iterator over this host's validation batches."""

    def __init__(self, stream: np.ndarray, seq_len: int, batch_size: int,
                 process_index: int = 0, process_count: int = 1, info: DataInfo | None = None,
                 pad_id: int = PAD_ID):
        self._rows = host_rows(batch_size, process_index, process_count)
        self._pad_id = pad_id
        self._padded, n = packing.padded_windows(stream, seq_len, pad_id)
        self._seq_len, self._batch_size = seq_len, batch_size
        self._order = sampler.epoch_permutation(n, VAL_ORDER_SEED, 0)
        self.tokens = stream
        self.info = info

    @property
    def num_batches(self) -> int:
        """Global batches in one full pass (the last one padded)."""
        return math.ceil(len(self._order) / self._batch_size)

    def __call__(self, max_batches: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Batches in a fixed order; `max_batches` stops early (the same prefix every call)."""
        count = self.num_batches if max_batches is None else min(max_batches, self.num_batches)
        for k in range(count):
            ids = self._order[k * self._batch_size: (k + 1) * self._batch_size]
            windows = packing.gather_windows(self._padded, ids, self._seq_len)
            if len(ids) < self._batch_size:  # pad the last global batch with all-PAD rows
                pad = np.full((self._batch_size - len(ids), self._seq_len + 1), self._pad_id, np.int32)
                windows = np.concatenate([windows, pad])
            yield packing.split_inputs_targets(windows[self._rows])


def token_stream(docs, tok: Tokenizer | None) -> np.ndarray:
    """The BOS-prefixed concatenation of the documents' ids: packing.pack_documents for the byte tokenizer, a
    checkpoint tokenizer's ids (uint32) otherwise. A document containing the pad id (which pads validation
    batches and is masked out of every loss) is a ValueError naming it: it would be dropped silently."""
    if tok is None or isinstance(tok, ByteTokenizer):
        return packing.pack_documents([d.text for d in docs])
    if tok.bos_id is None:
        raise ValueError(f"{tok.name}: has no bos_token, which separates packed documents")
    ids = tok.encode_documents([d.text.decode("utf-8") for d in docs])
    for d, x in zip(docs, ids):
        if tok.pad_id in x:
            raise ValueError(f"document {d.name!r} contains token {tok.pad_id}, the pad token of {tok.name} "
                             "(validation padding, masked out of the loss); remove it from the text")
    lengths = np.asarray([len(x) + 1 for x in ids], np.int64)
    stream = np.empty(int(lengths.sum()), np.uint32)
    for start, x in zip(np.cumsum(lengths) - lengths, ids):
        stream[start] = tok.bos_id
        stream[start + 1:start + 1 + len(x)] = x
    return stream


def _val_baseline(val_docs, val_stream, tok) -> float:
    """Byte-unigram entropy of the val text (from the stream's byte ids, or the raw text for other tokenizers)."""
    if not val_docs:
        return math.nan
    if tok is None or isinstance(tok, ByteTokenizer):
        return baseline.unigram_bits_per_byte(val_stream)
    return baseline.unigram_bits_per_byte(np.frombuffer(b"".join(d.text for d in val_docs), np.uint8))


def make_datasets(data_cfg: DataConfig | Mapping[str, Any], train_cfg: Any, max_seq_len: int,
                  process_index: int = 0, process_count: int = 1, tokenizer: Tokenizer | None = None
                  ) -> tuple[TrainIterator, Callable[..., Iterator[dict]]]:
    """(train_iter, val_batches_fn) for the training loop, from the `data` block (a DataConfig, or a mapping
    validated into one) and the train block's seq_len, batch_size and seed (experiment_config.TrainConfig),
    tokenized by the run's `tokenizer` (default: the byte tokenizer; data/tokenizers.py).

    `val_batches_fn(max_batches=None)` returns a fresh iterator; `train_iter.info` and `val_batches_fn.info`
    hold the DataInfo (corpus summary, sizes, val byte-unigram baseline).
    """
    data_cfg = DataConfig.coerce(data_cfg)
    seq_len, batch_size, seed = int(train_cfg.seq_len), int(train_cfg.batch_size), int(train_cfg.seed)
    check_seq_len(seq_len, max_seq_len)
    host_rows(batch_size, process_index, process_count)
    full = corpus.load_corpus(data_cfg)
    train_docs, val_docs = corpus.split_documents(full.documents, data_cfg.val_fraction)
    train_stream, val_stream = token_stream(train_docs, tokenizer), token_stream(val_docs, tokenizer)
    n = packing.num_windows(len(train_stream), seq_len)
    info = DataInfo(
        corpus_summary=full.summary(), train_docs=len(train_docs), val_docs=len(val_docs),
        train_tokens=len(train_stream), val_tokens=len(val_stream), train_windows=n,
        train_tokens_left_out=max(0, len(train_stream) - 1 - n * seq_len),
        val_unigram_bits_per_byte=_val_baseline(val_docs, val_stream, tokenizer))
    train_iter = TrainIterator(train_stream, seq_len, batch_size, seed, process_index, process_count, info,
                               data_cfg.backend)
    pad_id = PAD_ID if tokenizer is None else tokenizer.pad_id
    return train_iter, ValBatches(val_stream, seq_len, batch_size, process_index, process_count, info, pad_id)
