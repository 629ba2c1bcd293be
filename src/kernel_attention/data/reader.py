"""``PreparedData``: read a prepared folder (``meta.json``, memory-mapped token arrays, references, tokenizer).

This is all training and evaluation need: no text is tokenized here, and ``datasets`` is never imported.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from kernel_attention.data.config import DataError
from kernel_attention.data.tokenizer import Tokenizer


@dataclass(frozen=True)
class Vocab:
    """Vocabulary size and the fixed special ids."""

    size: int
    pad: int
    unk: int
    bos: int
    eos: int


class TokenArray:
    """Items of a ``.bin``/``.idx`` pair, memory-mapped: ``len``, ``[i]`` → int64 ``np.ndarray``, ``.sizes``."""

    def __init__(self, prefix: Path | str, dtype: np.dtype | str) -> None:
        prefix = str(prefix)
        bin_path, idx_path = Path(prefix + ".bin"), Path(prefix + ".idx")
        if not bin_path.is_file() or not idx_path.is_file():
            raise DataError(f"{bin_path} / {idx_path} not found; re-run prepare for this task")
        self.offsets = np.fromfile(idx_path, dtype=np.int64)
        # np.memmap refuses empty files; an empty split is a valid (if useless) array.
        self.data = (np.memmap(bin_path, dtype=np.dtype(dtype), mode="r") if bin_path.stat().st_size
                     else np.zeros(0, dtype=np.dtype(dtype)))
        if len(self.offsets) == 0 or self.offsets[-1] != len(self.data):
            raise DataError(f"{idx_path} does not match {bin_path} (truncated?); re-run prepare for this task")
        self.sizes = np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, i: int) -> np.ndarray:
        if not -len(self) <= i < len(self):
            raise IndexError(f"item {i} out of range for {len(self)} items")
        i = i % len(self)
        # A copy as int64: detaches from the mmap and is what torch.from_numpy / embedding lookups want.
        return self.data[self.offsets[i] : self.offsets[i + 1]].astype(np.int64)

    @property
    def num_tokens(self) -> int:
        return len(self.data)


class PreparedData:
    """One prepared folder ``<out_root>/<task>/<fingerprint>/`` (see docs/contracts.md §2)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not meta_path.is_file():
            raise DataError(f"{self.path} is not a prepared data folder (no meta.json); run "
                            "scripts/prepare_data.py task=<name> or ensure_prepared(cfg)")
        self.meta: dict[str, Any] = json.loads(meta_path.read_text(encoding="utf-8"))
        v = self.meta["vocab"]
        self.vocab = Vocab(size=v["size"], pad=v["pad"], unk=v["unk"], bos=v["bos"], eos=v["eos"])
        self.type: str = self.meta["type"]
        self.dtype = np.dtype(self.meta["dtype"])

    def __repr__(self) -> str:
        return f"PreparedData({str(self.path)!r}, task={self.meta['task']!r}, type={self.type!r})"

    @property
    def splits(self) -> list[str]:
        """The splits present, e.g. ['train', 'valid', 'test'] (Tiny Shakespeare: train, valid)."""
        return list(self.meta["splits"])

    @property
    def langs(self) -> tuple[str, str] | None:
        langs = self.meta.get("langs")
        return (langs["src"], langs["tgt"]) if langs else None

    def _check_split(self, split: str) -> None:
        if split not in self.meta["splits"]:
            raise DataError(f"split {split!r} is not in {self.path} (has: {', '.join(self.splits)})")

    def tokens(self, split: str, lang: str | None = None) -> TokenArray:
        """Translation: the sentences of ``split`` in ``lang``; LM (lang None): the lines of the stream."""
        self._check_split(split)
        if self.type == "translation":
            if lang not in (self.langs or ()):
                raise DataError(f"tokens({split!r}, lang={lang!r}): choose lang from {self.langs}")
            return TokenArray(self.path / f"{split}.{lang}", self.dtype)
        if lang is not None:
            raise DataError(f"tokens({split!r}, lang={lang!r}): an LM corpus has no languages; pass lang=None")
        return TokenArray(self.path / split, self.dtype)

    def stream(self, split: str) -> np.ndarray:
        """LM: the whole split as one memory-mapped 1-D token array (uint16/int32)."""
        if self.type != "lm":
            raise DataError(f"stream({split!r}) is for language-modelling data; {self.path} is {self.type}")
        return self.tokens(split).data

    def references(self, split: str) -> list[str]:
        """Translation valid/test: the target lines exactly as they came from the source (for BLEU)."""
        self._check_split(split)
        if self.type != "translation":
            raise DataError(f"references({split!r}): only translation data has references")
        path = self.path / f"{split}.{self.langs[1]}.ref.txt"  # type: ignore[index]
        if not path.is_file():
            raise DataError(f"{path} not found (references are written for valid/test only)")
        text = path.read_text(encoding="utf-8")
        lines = text.split("\n")
        return lines[:-1] if lines and lines[-1] == "" else lines

    @cached_property
    def tokenizer(self) -> Tokenizer:
        """The sentencepiece model (loaded on first use: training itself does not need it)."""
        return Tokenizer(self.path / "spm.model")
