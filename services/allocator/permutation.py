"""Seeded permutations of [0, n) that are computed, never stored.

An epoch visits every prompt once in a shuffled order. Storing that order for a 10M-prompt
dataset would cost 40+ MB per epoch in Redis, so the order is a keyed Feistel network over
the next power of four with cycle walking: position -> prompt id is O(1), vectorised
with numpy, and identical on every allocator replica.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

_ROUNDS = 6
_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xBF58476D1CE4E5B9)


def _round_keys(seed: int, epoch: int) -> list[np.uint64]:
    digest = hashlib.blake2b(f"{seed}:{epoch}".encode(), digest_size=8 * _ROUNDS).digest()
    return [np.uint64(int.from_bytes(digest[8 * i : 8 * i + 8], "little")) for i in range(_ROUNDS)]


class EpochPermutation:
    """The order in which epoch `epoch` of a run with seed `seed` visits n prompts."""

    def __init__(self, n: int, seed: int, epoch: int) -> None:
        if n < 1:
            raise ValueError("a permutation needs n >= 1")
        self.n = n
        self._half = max(1, ((n - 1).bit_length() + 1) // 2)
        self._mask = np.uint64((1 << self._half) - 1)
        self._keys = _round_keys(seed, epoch)

    def _mix(self, half: npt.NDArray[np.uint64], key: np.uint64) -> npt.NDArray[np.uint64]:
        with np.errstate(over="ignore"):
            mixed = (half ^ key) * _M1
            mixed = (mixed ^ (mixed >> np.uint64(29))) * _M2
        out: npt.NDArray[np.uint64] = (mixed >> np.uint64(17)) & self._mask
        return out

    def _feistel(self, x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
        shift = np.uint64(self._half)
        left, right = x >> shift, x & self._mask
        for key in self._keys:
            left, right = right, left ^ self._mix(right, key)
        out: npt.NDArray[np.uint64] = (left << shift) | right
        return out

    def _feistel_inverse(self, x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
        shift = np.uint64(self._half)
        left, right = x >> shift, x & self._mask
        for key in reversed(self._keys):
            left, right = right ^ self._mix(left, key), left
        out: npt.NDArray[np.uint64] = (left << shift) | right
        return out

    def _walk(self, values: npt.NDArray[np.uint64], step: object) -> list[int]:
        # Cycle walking: a value outside [0, n) is mapped again until it lands inside;
        # this keeps the map a bijection on [0, n).
        outside = values >= self.n
        while outside.any():
            values[outside] = step(values[outside])  # type: ignore[operator]
            outside = values >= self.n
        return [int(v) for v in values]

    def positions(self, prompt_ids: Sequence[int]) -> list[int]:
        """Inverse of `ids`: the position of each prompt id in this epoch's order."""
        if not prompt_ids:
            return []
        values = self._feistel_inverse(np.array(prompt_ids, dtype=np.uint64))
        return self._walk(values, self._feistel_inverse)

    def ids(self, start: int, stop: int) -> list[int]:
        """Prompt ids at positions [start, stop) of this epoch's order."""
        stop = min(stop, self.n)
        if start >= stop:
            return []
        return self._walk(self._feistel(np.arange(start, stop, dtype=np.uint64)), self._feistel)
