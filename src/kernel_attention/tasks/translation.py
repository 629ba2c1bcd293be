"""Translation: encoder-decoder, token-budget batches of similar-length pairs, BLEU on valid and test.

One scoring rule for validation and test (``score``): a corpus that arrives Moses-tokenized and lowercased
(``text_preprocessing`` says both, e.g. fairseq's IWSLT'14) also gets tokenized BLEU, the number fairseq papers
report, and validation selects on it; every other corpus (Multi30k: raw) is scored detokenized only.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from kernel_attention.config import _positive
from kernel_attention.data import DataError, TokenBatchSampler, TranslationDataset, collate_translation
from kernel_attention.evaluation.bleu import bleu_stats, corpus_scores, is_tokenized_lowercased
from kernel_attention.evaluation.generate import SearchConfig, SpecialIds, greedy_search, translate
from kernel_attention.evaluation.options import EvalOptions, TestSet
from kernel_attention.registry import ConfigError
from kernel_attention.store import atomic
from kernel_attention.tasks.base import TASKS, Task, TaskConfig, to_device
from kernel_attention.tasks.text import read_lines


@dataclass
class _LoadedSet:
    """A raw test set, read and encoded (``load_test_set``)."""

    src: str
    ref: str
    sacrebleu: str | None
    sources: list[np.ndarray]
    refs: list[str]


@dataclass
class TranslationConfig(TaskConfig):
    """Translation options: greedy BLEU on the first N valid sentences at each validation (0 = off), and the
    generation length limit ``max_len_a * src_len + max_len_b`` (validation, and the default of evaluation)."""

    type: str = "translation"
    valid_bleu_samples: int = 200
    max_len_a: float = 1.2
    max_len_b: int = 10

    def validate(self) -> None:
        super().validate()
        _positive("task.valid_bleu_samples", self.valid_bleu_samples, zero_ok=True)
        if self.max_len_a < 0 or self.max_len_b < 0:
            raise ConfigError(f"task.max_len_a={self.max_len_a} and task.max_len_b={self.max_len_b} must be >= 0")


@TASKS.register("translation")
class TranslationTask(Task):
    type = "translation"
    Config = TranslationConfig
    architecture = "encoder_decoder"
    metric = "bleu"
    higher_is_better = True
    valid_directions: ClassVar[Mapping[str, bool]] = {"loss": False, "bleu": True}
    cfg: TranslationConfig

    @classmethod
    def check(cls, cfg: TaskConfig, model: Any, trainer: Any) -> None:
        assert isinstance(cfg, TranslationConfig)
        if min(model.encoder_layers, model.decoder_layers) < 1:
            raise ConfigError(f"task {cfg.name!r} is translation but model.preset={model.preset!r} has no encoder; "
                              "pick an encoder-decoder preset, e.g. model=transformer_small")
        super().check(cfg, model, trainer)
        if trainer.best_metric == "bleu" and not cfg.valid_bleu_samples:
            raise ConfigError("trainer.best_metric=bleu needs task.valid_bleu_samples > 0 (validation BLEU)")

    @classmethod
    def longest_sequence(cls, cfg: TaskConfig) -> tuple[int, str]:
        return (cfg.data.max_len or 0) + 1, "task.data.max_len + 1"  # + EOS / BOS

    # ---- data ---------------------------------------------------------------------------------------------
    @cached_property
    def train_set(self) -> TranslationDataset:
        return TranslationDataset(self.data, "train")

    @cached_property
    def valid_set(self) -> TranslationDataset:
        return TranslationDataset(self.data, "valid")

    @property
    def ids(self) -> SpecialIds:
        v = self.vocab
        return SpecialIds(pad=v.pad, unk=v.unk, bos=v.bos, eos=v.eos)

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

    # ---- scoring: one rule for validation and test -----------------------------------------------------------
    @cached_property
    def tokenized_lowercased(self) -> bool:
        return is_tokenized_lowercased(str(self.data.meta.get("text_preprocessing", "raw")))

    def score(self, hyps: Sequence[str], refs: Sequence[str]) -> dict[str, Any]:
        """Corpus scores of ``hyps`` against ``refs`` by this corpus's convention (module docstring)."""
        return corpus_scores(hyps, refs, self.tokenized_lowercased)

    # ---- validation ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def greedy_translate(self, model: nn.Module, src_tokens: Tensor) -> list[list[int]]:
        """Greedy decoding (cached) of src_tokens (B, S) → token ids per sentence, without BOS/EOS."""
        cfg = SearchConfig(beam=1, max_len_a=self.cfg.max_len_a, max_len_b=self.cfg.max_len_b)
        return [h.tokens for h in greedy_search(model, src_tokens, self.ids, cfg)]

    def valid_metrics(self, model: nn.Module, device: torch.device, autocast: Any = None) -> dict[str, float]:
        """Greedy BLEU (sacreBLEU) on the first ``valid_bleu_samples`` valid sentences: the tokenized BLEU for
        tokenized+lowercased corpora, else the detokenized one (``score``)."""
        n = min(self.cfg.valid_bleu_samples, len(self.valid_set))
        if n == 0:
            return {}
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
        scores = self.score(hyps, refs)
        return {"bleu": float(scores.get("tok_bleu", scores["bleu"]))}

    # ---- test time ----------------------------------------------------------------------------------------
    def search_config(self, opts: EvalOptions) -> SearchConfig:
        search = SearchConfig(
            beam=opts.beam, lenpen=opts.lenpen,
            max_len_a=self.cfg.max_len_a if opts.max_len_a is None else opts.max_len_a,
            max_len_b=self.cfg.max_len_b if opts.max_len_b is None else opts.max_len_b,
            no_unk=opts.no_unk, use_cache=opts.use_cache)
        search.validate()  # a bad beam / length setting is a ConfigError
        return search

    def encode_sources(self, lines: Sequence[str], where: str, max_positions: int | None,
                       first_line: int = 1) -> list[np.ndarray]:
        """Raw source sentences → token ids (no EOS), as prepare encodes them; a sentence longer than learned
        positions allow is a ``DataError`` naming its line (truncating it would score a different input)."""
        ids = self.data.tokenizer.encode(list(lines)) if lines else []
        if max_positions is not None:
            for i, s in enumerate(ids):
                if len(s) + 1 > max_positions:
                    raise DataError(f"{where}: line {first_line + i} has {len(s)} tokens but the model's learned "
                                    f"positions hold {max_positions - 1} (+ EOS); split that sentence")
        return [np.asarray(s, dtype=np.int64) for s in ids]

    def translate_ids(self, model: nn.Module, sources: Sequence[np.ndarray], opts: EvalOptions,
                      device: torch.device) -> list[str]:
        """Beam-search translations of ``sources`` (ids without EOS), detokenized, in input order."""
        search = self.search_config(opts)
        # max_tokens bounds the beam-expanded batch, as the decoder holds beam rows per sentence.
        budget = max((opts.max_tokens or self.cfg.max_tokens) // search.beam, 1)
        hyp_ids = translate(model, sources, self.ids, search, budget, opts.batch_size, device)
        tok = self.data.tokenizer
        return [tok.decode(h) for h in hyp_ids]

    def _evaluate(self, model: nn.Module, sources: Sequence[np.ndarray], refs: Sequence[str], opts: EvalOptions,
                  device: torch.device, hyp_path: Path) -> dict[str, Any]:
        search = self.search_config(opts)
        t0 = time.perf_counter()
        hyps = self.translate_ids(model, sources, opts, device)
        seconds = time.perf_counter() - t0
        scores = self.score(hyps, refs)
        atomic.write_text(hyp_path, "".join(h + "\n" for h in hyps))
        return {
            "n": len(hyps), **scores, "beam": search.beam, "lenpen": search.lenpen,
            "max_len_a": search.max_len_a, "max_len_b": search.max_len_b,
            # Same settings as the reported BLEU, so summed stats reproduce it (paired bootstrap in the report).
            "bleu_stats": bleu_stats(hyps, refs, tokenize="13a", lowercase=self.tokenized_lowercased),
            "hypotheses": hyp_path.name,
            "sentences_per_s": round(len(hyps) / max(seconds, 1e-9), 2),
        }

    def evaluate(self, model: nn.Module, split: str, opts: EvalOptions, device: torch.device, out_dir: Path,
                 name: str) -> dict[str, Any]:
        tokens = self.data.tokens(split, self.data.langs[0])  # type: ignore[index]
        sources = [tokens[i] for i in range(len(tokens))]
        refs = self.data.references(split)
        if len(refs) != len(sources):
            raise DataError(f"{self.data.path}: {len(sources)} {split} sources but {len(refs)} references; "
                            "re-prepare")
        return self._evaluate(model, sources, refs, opts, device, out_dir / f"{name}.hyp.txt")

    def check_options(self, opts: EvalOptions) -> None:
        self.search_config(opts)

    def load_test_set(self, name: str, test_set: TestSet, model: nn.Module) -> _LoadedSet:
        if test_set.sacrebleu:
            if test_set.src or test_set.ref:
                raise ConfigError(f"test_sets.{name}: give either sacrebleu=<name> or src=<file> ref=<file>, "
                                  "not both")
            src, ref = self._sacrebleu_files(name, test_set)
        elif not test_set.src or not test_set.ref:
            raise ConfigError(f"test_sets.{name} needs src=<source file> and ref=<reference file> (or "
                              "sacrebleu=<test set name>)")
        else:
            src, ref = test_set.src, test_set.ref
        src_lines, refs = read_lines(src), read_lines(ref)
        if len(src_lines) != len(refs):
            raise DataError(f"test_sets.{name}: {src} has {len(src_lines)} lines but {ref} has {len(refs)}; "
                            "source and reference files must be aligned line by line")
        if not src_lines:
            raise DataError(f"test_sets.{name}: {src} is empty")
        cfg = model.cfg  # type: ignore[attr-defined]
        sources = self.encode_sources(src_lines, str(src), cfg.max_positions if cfg.positions == "learned" else None)
        return _LoadedSet(src=str(src), ref=str(ref), sacrebleu=test_set.sacrebleu, sources=sources, refs=refs)

    def _sacrebleu_files(self, name: str, test_set: TestSet) -> tuple[str, str]:
        from sacrebleu.dataset import DATASETS
        from sacrebleu.utils import get_reference_files, get_source_file

        src_lang, tgt_lang = self.data.langs  # type: ignore[misc]
        langpair = test_set.langpair or f"{src_lang}-{tgt_lang}"
        if test_set.sacrebleu not in DATASETS:
            raise ConfigError(f"test_sets.{name}.sacrebleu={test_set.sacrebleu!r} is not a sacreBLEU test set; "
                              "list them with `sacrebleu --list`")
        try:
            return get_source_file(test_set.sacrebleu, langpair), get_reference_files(test_set.sacrebleu,
                                                                                      langpair)[0]
        except Exception as e:  # offline, or a language pair the set lacks: one line, the way out
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise DataError(f"sacreBLEU test set {test_set.sacrebleu} ({langpair}) could not be fetched ({first}); "
                            f"on a machine that is offline pass test_sets.{name}.src=<file> "
                            f"test_sets.{name}.ref=<file> instead") from None

    def evaluate_test_set(self, model: nn.Module, test_set: _LoadedSet, opts: EvalOptions, device: torch.device,
                          out_dir: Path, name: str) -> dict[str, Any]:
        result = self._evaluate(model, test_set.sources, test_set.refs, opts, device, out_dir / f"{name}.hyp.txt")
        return {"src": test_set.src, "ref": test_set.ref,
                **({"sacrebleu": test_set.sacrebleu} if test_set.sacrebleu else {}), **result}

    def translate_lines(self, model: nn.Module, lines: Sequence[str], opts: EvalOptions, device: torch.device,
                        where: str = "input", first_line: int = 1) -> list[str]:
        cfg = model.cfg  # type: ignore[attr-defined]
        sources = self.encode_sources(lines, where, cfg.max_positions if cfg.positions == "learned" else None,
                                      first_line)
        return self.translate_ids(model, sources, opts, device)

    @staticmethod
    def summary(result: Mapping[str, Any]) -> str:
        tok = f"  tok BLEU {result['tok_bleu']:.2f}" if "tok_bleu" in result else ""
        return f"BLEU {result['bleu']:.2f}{tok}  chrF {result['chrf']:.2f}  [{result['bleu_signature']}]"
