"""Map-style datasets over ``PreparedData`` (numpy items; the collaters in ``collate.py`` make tensors)."""

from __future__ import annotations

from typing import Any

import numpy as np

from kernel_attention.data.config import DataError
from kernel_attention.data.reader import PreparedData


class TranslationDataset:
    """Item ``i`` → ``{"id": i, "source": int64 ids, "target": int64 ids}`` (no BOS/EOS; collate adds them)."""

    def __init__(self, data: PreparedData, split: str) -> None:
        if data.langs is None:
            raise DataError(f"{data.path} is LM data; TranslationDataset needs translation data")
        src, tgt = data.langs
        self.src, self.tgt = data.tokens(split, src), data.tokens(split, tgt)
        self.src_sizes, self.tgt_sizes = self.src.sizes, self.tgt.sizes

    def __len__(self) -> int:
        return len(self.src)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"id": int(i), "source": self.src[i], "target": self.tgt[i]}


class LMBlockDataset:
    """Contiguous blocks of ``block_size + 1`` tokens of a stream; block ``i`` starts at ``i * block_size``.

    Consecutive blocks overlap by one token, so every token after the first is a target exactly once. The last
    block may be shorter (collate pads it and its padding is not counted as targets); ``drop_last=True``
    drops it for uniform training shapes.
    """

    def __init__(self, stream: np.ndarray, block_size: int, *, drop_last: bool = False) -> None:
        if block_size < 1:
            raise DataError(f"block_size={block_size} must be ≥ 1")
        self.stream, self.block_size = stream, int(block_size)
        n_targets = max(len(stream) - 1, 0)
        self.num_blocks = n_targets // block_size if drop_last else -(-n_targets // block_size)

    def __len__(self) -> int:
        return self.num_blocks

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < self.num_blocks:
            raise IndexError(f"block {i} out of range for {self.num_blocks} blocks")
        start = i * self.block_size
        return np.asarray(self.stream[start : start + self.block_size + 1], dtype=np.int64)
