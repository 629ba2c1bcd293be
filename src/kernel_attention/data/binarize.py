"""Binarized token arrays: ``<prefix>.bin`` (flat token ids) + ``<prefix>.idx`` (int64 offsets, n+1).

The fairseq / nanoGPT layout: one flat array per split and language that training memory-maps, so nothing is
tokenized or held in Python lists at training time. Item ``i`` is ``bin[idx[i]:idx[i+1]]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kernel_attention.data.tokenizer import Tokenizer

ENCODE_CHUNK = 100_000  # lines per batched encode call: keeps peak memory bounded on WikiText-103


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 halves disk and page cache for every vocabulary that fits; int32 otherwise."""
    return np.dtype(np.uint16) if vocab_size <= 65535 else np.dtype(np.int32)


def encode_lines(tok: Tokenizer, lines: Sequence[str], threads: int) -> tuple[np.ndarray, np.ndarray]:
    """Encode ``lines`` in batched chunks → (flat int64 ids, int64 lengths)."""
    flats: list[np.ndarray] = []
    lens: list[np.ndarray] = []
    for start in range(0, len(lines), ENCODE_CHUNK):
        ids = tok.encode(lines[start : start + ENCODE_CHUNK], num_threads=threads)
        n = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        flat = np.fromiter((t for seq in ids for t in seq), dtype=np.int64, count=int(n.sum()))
        flats.append(flat)
        lens.append(n)
    if not flats:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(flats), np.concatenate(lens)


def select(flat: np.ndarray, lens: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The items where ``keep`` is True, order preserved."""
    if keep.all():
        return flat, lens
    owner = np.repeat(np.arange(len(lens)), lens)  # item index of every token
    return flat[keep[owner]], lens[keep]


def write_array(prefix: Path, flat: np.ndarray, lens: np.ndarray, dtype: np.dtype) -> None:
    """Write ``prefix.bin`` / ``prefix.idx``. Callers write into a temp folder; the folder rename publishes."""
    if flat.size and (flat.min() < 0 or flat.max() > np.iinfo(dtype).max):
        raise ValueError(f"token ids out of range for {dtype}")
    offsets = np.zeros(len(lens) + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    # Append the suffix: with_suffix would turn "train.de" into "train.bin".
    flat.astype(dtype, copy=False).tofile(f"{prefix}.bin")
    offsets.tofile(f"{prefix}.idx")
