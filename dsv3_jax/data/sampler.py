"""The batch order: which windows form global batch k, as a pure function of (k, seed, sizes).

Window ids 0..n-1 are permuted afresh each epoch; sample g (g = 0, 1, 2, ...) is window
`epoch_permutation(n, seed, g // n)[g % n]`, and global batch k is samples [k*B, (k+1)*B). Epochs run back
to back, so a batch may straddle two epochs and every window is used exactly once per epoch.

The permutation is argsort of splitmix64 hashes (Steele et al. 2014) of the window ids keyed by
(seed, epoch): defined entirely here, vectorized, and independent of numpy's RNG algorithms and of grain,
so a run resumes on the same batches on any machine, with or without grain installed.
"""

from __future__ import annotations

import threading

import numpy as np

_MASK64 = (1 << 64) - 1


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer, elementwise on uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = np.asarray(x, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """A permutation of range(n) (int64), deterministic in (n, seed, epoch)."""
    key = splitmix64(np.array([(seed & _MASK64)], dtype=np.uint64))
    key = splitmix64(key ^ np.uint64(epoch & _MASK64))
    with np.errstate(over="ignore"):
        hashes = splitmix64(np.arange(n, dtype=np.uint64) + key)
    return np.argsort(hashes, kind="stable")


class WindowOrder:
    """Global batch k -> its window ids, caching the permutations of the epochs in use (thread-safe)."""

    def __init__(self, num_windows: int, batch_size: int, seed: int):
        if num_windows < 1 or batch_size < 1:
            raise ValueError(f"WindowOrder needs num_windows >= 1 and batch_size >= 1, got "
                             f"{num_windows}, {batch_size}")
        self.num_windows, self.batch_size, self.seed = num_windows, batch_size, seed
        self._cache: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def _perm(self, epoch: int) -> np.ndarray:
        with self._lock:
            if epoch not in self._cache:
                if len(self._cache) >= 3:
                    self._cache.pop(min(self._cache))
                self._cache[epoch] = epoch_permutation(self.num_windows, self.seed, epoch)
            return self._cache[epoch]

    def window_ids(self, batch_index: int) -> np.ndarray:
        """Window ids (int64 [batch_size]) of global batch `batch_index`."""
        g = batch_index * self.batch_size + np.arange(self.batch_size, dtype=np.int64)
        epochs, pos = np.divmod(g, self.num_windows)
        out = np.empty(self.batch_size, dtype=np.int64)
        for e in np.unique(epochs):
            sel = epochs == e
            out[sel] = self._perm(int(e))[pos[sel]]
        return out
