"""The data stage: ``prepare`` (text → sentencepiece → binarized arrays) and everything that reads the result.

Training uses ``ensure_prepared(DataConfig)`` → folder, ``PreparedData(folder)``, the datasets, samplers and
collaters below; it never tokenizes text and never imports ``datasets``. The collaters import torch, so they are
loaded on first access (``prepare`` alone stays quick to start).
"""

from __future__ import annotations

from typing import Any

from kernel_attention.data.config import DataConfig, DataError
from kernel_attention.data.dataset import LMBlockDataset, TranslationDataset
from kernel_attention.data.prepare import ensure_prepared, fingerprint
from kernel_attention.data.reader import PreparedData, TokenArray, Vocab
from kernel_attention.data.samplers import LMBatchSampler, ShardedBatchSampler, TokenBatchSampler
from kernel_attention.data.tokenizer import BOS, EOS, PAD, UNK, Tokenizer

__all__ = [
    "BOS",
    "EOS",
    "PAD",
    "UNK",
    "DataConfig",
    "DataError",
    "LMBatchSampler",
    "LMBlockDataset",
    "PreparedData",
    "ShardedBatchSampler",
    "TokenArray",
    "TokenBatchSampler",
    "Tokenizer",
    "TranslationDataset",
    "Vocab",
    "collate_lm",
    "collate_translation",
    "ensure_prepared",
    "fingerprint",
]


def __getattr__(name: str) -> Any:
    if name in ("collate_translation", "collate_lm"):
        from kernel_attention.data import collate

        return getattr(collate, name)
    raise AttributeError(f"module 'kernel_attention.data' has no attribute {name!r}")
