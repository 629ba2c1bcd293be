"""Language modelling: a decoder-only model over contiguous blocks of the token stream."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from torch import Tensor, nn

from kernel_attention.data import LMBatchSampler, LMBlockDataset, collate_lm
from kernel_attention.tasks.base import TASKS, Task


@TASKS.register("lm")
class LanguageModelingTask(Task):
    type = "lm"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        bs = self.cfg.block_size
        # Training drops the short last block so every batch has one shape (compile- and throughput-friendly).
        self.train_set = LMBlockDataset(self.data.stream("train"), bs, drop_last=True)
        self.valid_set = LMBlockDataset(self.data.stream("valid"), bs)
        self.batch_size = max(self.cfg.max_tokens // bs, 1)

    def train_sampler(self, seed: int, num_replicas: int = 1, rank: int = 0) -> LMBatchSampler:
        return LMBatchSampler(len(self.train_set), self.batch_size, seed=seed, shuffle=True,
                              num_replicas=num_replicas, rank=rank)

    def train_batch(self, indices: Sequence[int]) -> dict[str, Any]:
        return collate_lm([self.train_set[int(i)] for i in indices], pad=self.vocab.pad)

    def valid_batches(self, num_replicas: int = 1, rank: int = 0, max_batches: int = 0) -> Iterator[dict[str, Any]]:
        # Every valid token is a target exactly once (non-overlapping blocks), so ppl is the split's ppl
        # with context restarting every block_size tokens.
        sampler = LMBatchSampler(len(self.valid_set), self.batch_size, shuffle=False, num_replicas=num_replicas,
                                 rank=rank)
        for i, indices in enumerate(sampler):
            if max_batches and i >= max_batches:
                return
            yield collate_lm([self.valid_set[int(j)] for j in indices], pad=self.vocab.pad)

    def forward(self, model: nn.Module, batch: dict[str, Any], features_only: bool = False) -> Tensor:
        return model(batch["tokens"], features_only=features_only)  # (B, T, V) or (B, T, C)
