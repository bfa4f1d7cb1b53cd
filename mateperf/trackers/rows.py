"""Fixed-width float rows in preallocated blocks: the store every sampler of mateperf.trackers
records into (memory, gc, GPU)."""

from __future__ import annotations

import numpy as np


class RowBlocks:
    """Fixed-width float rows in preallocated blocks: appending never reallocates what is
    stored, so a recorder running for hours does not copy its history (the caller locks)."""

    def __init__(self, width: int, rows_per_block: int):
        self._width = int(width)
        self._rows_per_block = int(rows_per_block)
        self._blocks: list[np.ndarray] = [self._new_block()]
        self._n_in_block = 0

    def _new_block(self) -> np.ndarray:
        return np.full((self._rows_per_block, self._width), np.nan)

    def append(self, values) -> None:
        if self._n_in_block == self._rows_per_block:
            self._blocks.append(self._new_block())
            self._n_in_block = 0
        self._blocks[-1][self._n_in_block] = values
        self._n_in_block += 1

    def __len__(self) -> int:
        return (len(self._blocks) - 1) * self._rows_per_block + self._n_in_block

    def array(self) -> np.ndarray:
        return np.concatenate(self._blocks[:-1] + [self._blocks[-1][: self._n_in_block]])
