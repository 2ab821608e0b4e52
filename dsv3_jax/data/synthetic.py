"""Synthetic documents for benchmarks and smoke tests: deterministic, ASCII, and learnable.

Each document is one random lowercase "word" (3-12 letters) repeated with single spaces, 64-2048 bytes
long. A model can only guess the first occurrence of the word; after that every byte is predictable by
copying, so the loss of a working model falls far below the unigram entropy within a few hundred steps.
"""

from __future__ import annotations

import numpy as np

DEFAULT_BYTES = 2_000_000
_LETTERS = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)


def documents(num_bytes: int = DEFAULT_BYTES, seed: int = 0) -> list[tuple[str, bytes]]:
    """(name, text) pairs totalling exactly `num_bytes` bytes, identical for equal (num_bytes, seed)."""
    if num_bytes < 1:
        raise ValueError(f"data.synthetic_bytes={num_bytes} must be positive")
    rng = np.random.default_rng(seed)
    docs, total = [], 0
    while total < num_bytes:
        word = _LETTERS[rng.integers(0, 26, size=int(rng.integers(3, 13)))].tobytes() + b" "
        length = min(int(rng.integers(64, 2049)), num_bytes - total)
        text = (word * (length // len(word) + 1))[:length]
        docs.append((f"synthetic/{len(docs):06d}", text))
        total += length
    return docs
