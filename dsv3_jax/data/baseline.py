"""Reference numbers a language model must beat, in bits per byte.

`unigram_bits_per_byte` is the entropy of the empirical byte distribution of a token array: the loss of
the best possible context-free model fitted to that very data (a lower bound for every unigram model on
it). The README prints it for the val split next to the model's val loss, converted with
`nats_to_bits`. For an exact per-byte comparison the model's loss should be averaged over byte targets
(`targets < 256`); BOS targets are ~0.01% of the stdlib stream (mean document ~9 KB), so averaging over all
non-PAD targets differs only in the fourth digit.
"""

from __future__ import annotations

import math

import numpy as np

from dsv3_jax.data.tokenizer import NUM_BYTES


def unigram_bits_per_byte(tokens: np.ndarray) -> float:
    """Entropy (bits) of the byte distribution of `tokens`; special ids (>= 256) are ignored."""
    t = np.asarray(tokens).reshape(-1)
    byte_ids = t[(t >= 0) & (t < NUM_BYTES)].astype(np.int64)
    if byte_ids.size == 0:
        raise ValueError("unigram_bits_per_byte: the token array holds no byte tokens (ids < 256)")
    counts = np.bincount(byte_ids, minlength=NUM_BYTES)
    p = counts[counts > 0] / byte_ids.size
    return float(-(p * np.log2(p)).sum())


def nats_to_bits(loss_nats: float) -> float:
    """A cross-entropy in nats per token as bits per token (= bits per byte for byte targets)."""
    return float(loss_nats) / math.log(2.0)
