"""Translation: encoder-decoder, token-budget batches of similar-length pairs, greedy BLEU on valid."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from kernel_attention.data import TokenBatchSampler, TranslationDataset, collate_translation
from kernel_attention.tasks.base import TASKS, Task, to_device


@TASKS.register("translation")
class TranslationTask(Task):
    type = "translation"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.train_set = TranslationDataset(self.data, "train")
        self.valid_set = TranslationDataset(self.data, "valid")

    def _collate(self, dataset: TranslationDataset, indices: Sequence[int]) -> dict[str, Any]:
        v = self.vocab
        return collate_translation([dataset[int(i)] for i in indices], pad=v.pad, bos=v.bos, eos=v.eos)

    def train_sampler(self, seed: int, num_replicas: int = 1, rank: int = 0) -> TokenBatchSampler:
        return TokenBatchSampler(self.train_set.src_sizes, self.train_set.tgt_sizes, self.cfg.max_tokens,
                                 seed=seed, shuffle=True, num_replicas=num_replicas, rank=rank)

    def train_batch(self, indices: Sequence[int]) -> dict[str, Any]:
        return self._collate(self.train_set, indices)

    def valid_batches(self, num_replicas: int = 1, rank: int = 0, max_batches: int = 0) -> Iterator[dict[str, Any]]:
        max_tokens = self.cfg.max_tokens_valid or self.cfg.max_tokens
        sizes = self.valid_set.src_sizes, self.valid_set.tgt_sizes
        sampler = TokenBatchSampler(*sizes, max(max_tokens, int(max(sizes[0].max(), sizes[1].max())) + 1),
                                    shuffle=False, num_replicas=num_replicas, rank=rank)
        for i, indices in enumerate(sampler):
            if max_batches and i >= max_batches:
                return
            yield self._collate(self.valid_set, indices)

    def forward(self, model: nn.Module, batch: dict[str, Any], features_only: bool = False) -> Tensor:
        return model(batch["src_tokens"], batch["prev_output_tokens"], features_only=features_only)  # (B,T,V|C)

    @torch.no_grad()
    def greedy_translate(self, model: nn.Module, src_tokens: Tensor) -> list[list[int]]:
        """Greedy decoding (cached) of src_tokens (B, S) → token ids per sentence, without BOS/EOS."""
        from kernel_attention.evaluation.generate import SearchConfig, SpecialIds, greedy_search

        v = self.vocab
        ids = SpecialIds(pad=v.pad, unk=v.unk, bos=v.bos, eos=v.eos)
        cfg = SearchConfig(beam=1, max_len_a=self.cfg.max_len_a, max_len_b=self.cfg.max_len_b)
        return [h.tokens for h in greedy_search(model, src_tokens, ids, cfg)]

    def valid_metrics(self, model: nn.Module, device: torch.device, autocast: Any = None) -> dict[str, float]:
        """Greedy BLEU (sacreBLEU) on the first ``valid_bleu_samples`` valid sentences."""
        n = min(self.cfg.valid_bleu_samples, len(self.valid_set))
        if n == 0:
            return {}
        from kernel_attention.evaluation.bleu import corpus_scores

        refs = self.data.references("valid")[:n]
        tok = self.data.tokenizer
        order = sorted(range(n), key=lambda i: int(self.valid_set.src_sizes[i]))  # similar lengths per batch
        hyps: list[str] = [""] * n
        budget = self.cfg.max_tokens_valid or self.cfg.max_tokens
        start = 0
        while start < n:
            # Sorted ascending, so the batch's last sentence is its longest: fill up to the token budget.
            end = start + 1
            while end < n and (end - start + 1) * (int(self.valid_set.src_sizes[order[end]]) + 1) <= budget:
                end += 1
            chunk = order[start:end]
            batch = to_device(self._collate(self.valid_set, chunk), device)
            with autocast() if autocast else contextlib.nullcontext():
                out = self.greedy_translate(model, batch["src_tokens"])
            for i, ids in zip(chunk, out):
                hyps[i] = tok.decode(ids)
            start = end
        lowercased = "lowercased" in str(self.data.meta.get("text_preprocessing", ""))
        scores = corpus_scores(hyps, refs, tokenized_lowercased=lowercased)
        return {"bleu": float(scores.get("tok_bleu", scores["bleu"]))}
