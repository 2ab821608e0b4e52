"""Packing documents into one token stream and cutting it into fixed-length training windows.

Stream: every document is prefixed by BOS and the documents are concatenated in order,
    [BOS d0_0 d0_1 ... BOS d1_0 ... BOS dN_0 ...]   (uint16; ids < 259)
so BOS both starts a document and, as the token predicted after a document's last byte, ends the previous
one. EOS is not emitted. Documents run across window boundaries; nothing is cut out.

Windows: window w is stream[w*T : w*T + T + 1] (T = seq_len): inputs = window[:-1], targets = window[1:].
Consecutive windows overlap by one token, so the windows' targets tile stream[1 : n*T + 1] exactly and every
token after the first is a target once per epoch. Only the final remainder, the last
(len(stream) - 1) % T tokens, is left out of training windows (fewer than T tokens per split); for evaluation
`padded_windows` keeps it, padding the last window's tail with PAD (whose targets must be masked).

As in DeepSeek-V3 (report §4.1: document packing "but do not incorporate cross-sample attention masking"),
the model attends across document boundaries. `document_segments` derives segment ids and positions from
the BOS markers for code that wants per-document masking or positions.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from dsv3_jax.data.tokenizer import BOS_ID, PAD_ID

STREAM_DTYPE = np.uint16


def pack_documents(texts: Sequence[bytes]) -> np.ndarray:
    """The BOS-prefixed concatenation of `texts` as a uint16 [sum(len) + len(texts)] array."""
    lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    starts = np.cumsum(lengths + 1) - (lengths + 1)  # BOS positions
    stream = np.empty(int(lengths.sum()) + len(texts), dtype=STREAM_DTYPE)
    is_text = np.ones(stream.shape, dtype=bool)
    is_text[starts] = False
    stream[starts] = BOS_ID
    stream[is_text] = np.frombuffer(b"".join(texts), dtype=np.uint8)
    return stream


def num_windows(stream_len: int, seq_len: int) -> int:
    """How many full windows of seq_len + 1 tokens, stride seq_len, fit in a stream."""
    return max(0, (stream_len - 1) // seq_len)


def gather_windows(stream: np.ndarray, window_ids: np.ndarray, seq_len: int) -> np.ndarray:
    """int32 [len(window_ids), seq_len + 1]: rows stream[w*T : w*T + T + 1] (stream may be padded)."""
    idx = np.asarray(window_ids, dtype=np.int64)[:, None] * seq_len + np.arange(seq_len + 1)
    return stream[idx].astype(np.int32)


def padded_windows(stream: np.ndarray, seq_len: int, pad_id: int = PAD_ID) -> tuple[np.ndarray, int]:
    """(stream padded with pad_id so that windows cover every token, number of windows). For evaluation."""
    n = -(-(len(stream) - 1) // seq_len) if len(stream) > 1 else 0
    padded = np.full(n * seq_len + 1, pad_id, dtype=stream.dtype)
    padded[: len(stream)] = stream[: len(padded)]
    return padded, n


def split_inputs_targets(windows: np.ndarray) -> dict[str, np.ndarray]:
    """{"inputs": windows[:, :-1], "targets": windows[:, 1:]} (int32 [B, T] each)."""
    return {"inputs": windows[:, :-1], "targets": windows[:, 1:]}


def document_segments(inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(segment_ids, positions), int32 [B, T], from BOS markers in `inputs` [B, T].

    Segment ids count documents within a row starting at 1 (a row that starts mid-document starts with
    segment 1 too); PAD positions get segment 0. Positions restart at 0 on every BOS; a row that starts
    mid-document counts from its first column (the document's true offset is not known to the row).
    """
    inputs = np.asarray(inputs)
    is_bos = inputs == BOS_ID
    seg = np.cumsum(is_bos, axis=1) + (~is_bos[:, :1]).astype(np.int64)
    seg = np.where(inputs == PAD_ID, 0, seg).astype(np.int32)
    col = np.broadcast_to(np.arange(inputs.shape[1]), inputs.shape)
    start = np.maximum.accumulate(np.where(is_bos, col, 0), axis=1)
    return seg, (col - start).astype(np.int32)
