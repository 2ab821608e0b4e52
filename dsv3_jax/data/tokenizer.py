"""Byte-level tokenizer: ids 0..255 are the UTF-8 bytes of the text, then three special ids.

    BOS_ID = 256  starts every document in a packed stream (see packing.py)
    EOS_ID = 257  reserved (generation may stop on it; packing does not emit it)
    PAD_ID = 258  fills padded positions; a target equal to PAD_ID is never a real token
    VOCAB_SIZE = 259

Encoding is exact: `decode(encode(text)) == text` for every str. Decoding drops the special ids and, only
because its result is for display, replaces invalid UTF-8 (e.g. a sampled sequence that ends mid-character)
with U+FFFD. The corpus loaders (corpus.py) never replace anything: bad input is an error there.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

NUM_BYTES = 256
BOS_ID = 256
EOS_ID = 257
PAD_ID = 258
VOCAB_SIZE = 259
SPECIAL_IDS = (BOS_ID, EOS_ID, PAD_ID)


def encode(text: str | bytes, *, bos: bool = False, eos: bool = False) -> np.ndarray:
    """Token ids (int32 [N]) of `text`: its UTF-8 bytes, optionally framed by BOS and EOS.

    `bytes` are taken as already-encoded UTF-8 and are not validated here.
    """
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    ids = np.frombuffer(data, dtype=np.uint8).astype(np.int32)
    head = [BOS_ID] if bos else []
    tail = [EOS_ID] if eos else []
    if head or tail:
        ids = np.concatenate([np.asarray(head, np.int32), ids, np.asarray(tail, np.int32)])
    return ids


def decode(ids: Iterable[int] | np.ndarray) -> str:
    """Display text of a 1-D id sequence: special ids dropped, invalid UTF-8 replaced by U+FFFD.

    Raises ValueError naming the first id outside [0, VOCAB_SIZE).
    """
    arr = np.asarray(ids if isinstance(ids, np.ndarray) else list(ids), dtype=np.int64).reshape(-1)
    bad = (arr < 0) | (arr >= VOCAB_SIZE)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(f"decode: token id {int(arr[first])} at position {first} is outside the byte "
                         f"tokenizer's vocabulary [0, {VOCAB_SIZE})")
    return arr[arr < NUM_BYTES].astype(np.uint8).tobytes().decode("utf-8", errors="replace")


def check_vocab_size(vocab_size: int) -> None:
    """Raise ValueError unless a model with `vocab_size` outputs can represent every tokenizer id."""
    if vocab_size < VOCAB_SIZE:
        raise ValueError(f"model.vocab_size={vocab_size} is too small for the byte tokenizer, which needs "
                         f"at least {VOCAB_SIZE} (256 bytes + BOS/EOS/PAD)")


class ByteTokenizer:
    """The same functions as an object, for code that wants a tokenizer instance (e.g. infer/)."""

    vocab_size = VOCAB_SIZE
    bos_id = BOS_ID
    eos_id = EOS_ID
    pad_id = PAD_ID

    def encode(self, text: str | bytes, *, bos: bool = False, eos: bool = False) -> np.ndarray:
        """See module-level `encode`."""
        return encode(text, bos=bos, eos=eos)

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        """See module-level `decode`."""
        return decode(ids)
