"""Language modelling: a decoder-only model over contiguous blocks of the token stream; perplexity; sampling."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from kernel_attention.config import _positive
from kernel_attention.data import DataError, LMBatchSampler, LMBlockDataset, collate_lm
from kernel_attention.data.prepare import encode_lm_text
from kernel_attention.evaluation.lm import lm_perplexity
from kernel_attention.evaluation.options import EvalOptions, TestSet
from kernel_attention.models import DecoderCache
from kernel_attention.registry import ConfigError
from kernel_attention.tasks.base import TASKS, Task, TaskConfig
from kernel_attention.tasks.text import read_text


@dataclass
class LMConfig(TaskConfig):
    """LM options: ``block_size`` tokens per training sequence (also the evaluation window and the longest
    context the sampler keeps)."""

    type: str = "lm"
    block_size: int = 256

    def validate(self) -> None:
        super().validate()
        _positive("task.block_size", self.block_size)
        if self.block_size > self.max_tokens:
            raise ConfigError(f"task.block_size={self.block_size} exceeds task.max_tokens={self.max_tokens}; "
                              "a batch must hold at least one sequence")


@TASKS.register("lm")
class LanguageModelingTask(Task):
    type = "lm"
    Config = LMConfig
    architecture = "decoder_only"
    metric = "ppl"  # a subword vocabulary; a character one reports bpc (metric_for)
    higher_is_better = False
    valid_directions: ClassVar[Mapping[str, bool]] = {"loss": False}
    cfg: LMConfig

    @classmethod
    def longest_sequence(cls, cfg: TaskConfig) -> tuple[int, str]:
        assert isinstance(cfg, LMConfig)
        return cfg.block_size, "task.block_size"

    # ---- data ---------------------------------------------------------------------------------------------
    @cached_property
    def train_set(self) -> LMBlockDataset:
        # Training drops the short last block so every batch has one shape (compile- and throughput-friendly).
        return LMBlockDataset(self.data.stream("train"), self.cfg.block_size, drop_last=True)

    @cached_property
    def valid_set(self) -> LMBlockDataset:
        return LMBlockDataset(self.data.stream("valid"), self.cfg.block_size)

    @property
    def batch_size(self) -> int:
        return max(self.cfg.max_tokens // self.cfg.block_size, 1)

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

    # ---- test time ----------------------------------------------------------------------------------------
    @property
    def char_level(self) -> bool:
        return bool(self.data.meta.get("char_level"))

    @classmethod
    def metric_for(cls, cfg: Any) -> str:
        # Character models are compared in bits per character (the field's unit: nanoGPT, enwik8 results); a
        # subword vocabulary has no per-character unit, so it reports perplexity. Character level is what
        # prepare records as meta.char_level: spm_model_type=char.
        data = cfg.get("data") if isinstance(cfg, Mapping) else getattr(cfg, "data", None)
        spm = data.get("spm_model_type") if isinstance(data, Mapping) else getattr(data, "spm_model_type", None)
        return "bpc" if spm == "char" else "ppl"

    def valid_from_loss(self, loss: float) -> dict[str, float]:
        # bpc = nats per character / ln 2: each token of a character vocabulary is one character.
        return {"bpc": loss / math.log(2)} if self.char_level else {}

    def _perplexity(self, model: nn.Module, stream: np.ndarray, opts: EvalOptions) -> dict[str, Any]:
        window = self.cfg.block_size
        out = lm_perplexity(model, torch.from_numpy(np.asarray(stream, dtype=np.int64)), window,
                            stride=opts.lm_stride,
                            batch_size=max(1, (opts.max_tokens or self.cfg.max_tokens) // window),
                            char_level=self.char_level)
        result = {"n": out["n_tokens"], "loss": out["loss"], "ppl": out["ppl"], "window": out["window"],
                  "stride": out["stride"]}
        if "bpc" in out:
            result["bpc"] = out["bpc"]
        return result

    def evaluate(self, model: nn.Module, split: str, opts: EvalOptions, device: torch.device, out_dir: Path,
                 name: str) -> dict[str, Any]:
        return self._perplexity(model, self.data.stream(split), opts)

    def encode_text(self, text: str) -> np.ndarray:
        """Raw text → the token stream prepare would write for it (the run's tokenizer and conventions)."""
        flat, _ = encode_lm_text(self.data.tokenizer, text, self.char_level)
        return flat

    def load_test_set(self, name: str, test_set: TestSet, model: nn.Module) -> tuple[str, np.ndarray]:
        if not test_set.src or test_set.ref or test_set.sacrebleu:
            raise ConfigError(f"test_sets.{name}: a language model is scored on one text file; pass "
                              f"test_sets.{name}.src=<file> only (ref and sacrebleu are for translation)")
        stream = self.encode_text(read_text(test_set.src))
        if len(stream) < 2:
            raise DataError(f"test_sets.{name}: {test_set.src} holds {len(stream)} token(s); perplexity needs 2+")
        return test_set.src, stream

    def evaluate_test_set(self, model: nn.Module, test_set: tuple[str, np.ndarray], opts: EvalOptions,
                          device: torch.device, out_dir: Path, name: str) -> dict[str, Any]:
        src, stream = test_set
        return {"src": src, **self._perplexity(model, stream, opts)}

    @staticmethod
    def summary(result: Mapping[str, Any]) -> str:
        bpc = f"  bpc {result['bpc']:.4f}" if "bpc" in result else ""
        return f"loss {result['loss']:.4f}  ppl {result['ppl']:.2f}{bpc}"

    # ---- sampling -----------------------------------------------------------------------------------------
    def encode_prompt(self, prompt: str) -> list[int]:
        """A prompt's token ids: the stream prepare would write, without the EOS that would end an unfinished
        last line (subword models end every line with EOS; char models keep "\n" as a token)."""
        ids = self.encode_text(prompt).tolist()
        if not self.char_level and ids and not prompt.endswith("\n"):
            ids = ids[:-1]
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Token ids → text; for subword models EOS is a line end (as in the prepared stream)."""
        tok, eos = self.data.tokenizer, self.vocab.eos
        lines, line = [], []
        for i in ids:
            if i == eos and not self.char_level:
                lines.append(tok.decode(line))
                line = []
            else:
                line.append(i)
        return "\n".join([*lines, tok.decode(line)])

    def sample(self, model: nn.Module, prompt: str, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
               device: torch.device | str = "cpu", generator: torch.Generator | None = None) -> Iterator[str]:
        """The text after ``prompt``, piece by piece as tokens are sampled (``sample_ids``)."""
        prompt_ids = self.encode_prompt(prompt)
        ids: list[int] = []
        shown = ""
        for token in self.sample_ids(model, prompt_ids, max_new_tokens, temperature, top_k, device, generator):
            ids.append(token)
            text = self.decode(ids)
            # sentencepiece joins pieces (a word's "▁" becomes a space only before the next piece): print what
            # decoding the whole continuation adds to what was printed.
            if text.startswith(shown) and len(text) > len(shown):
                yield text[len(shown):]
                shown = text
        text = self.decode(ids)
        if len(text) > len(shown) and text.startswith(shown):
            yield text[len(shown):]

    @torch.inference_mode()
    def sample_ids(self, model: nn.Module, prompt: Sequence[int], max_new_tokens: int, temperature: float = 1.0,
                   top_k: int = 0, device: torch.device | str = "cpu",
                   generator: torch.Generator | None = None) -> Iterator[int]:
        """Yield ``max_new_tokens`` token ids sampled after ``prompt`` (nanoGPT's sample.py: logits / temperature,
        the ``top_k`` most likely kept, 0 = all; temperature 0 = greedy). Cached decoding while the context fits
        in ``block_size`` tokens, the model's training context; beyond it the last ``block_size`` tokens are
        re-encoded every step, as nanoGPT crops its context."""
        if max_new_tokens < 0 or temperature < 0 or top_k < 0:
            raise ConfigError(f"max_new_tokens={max_new_tokens}, temperature={temperature} and top_k={top_k} must "
                              "be >= 0")
        # An empty prompt starts where a line starts: after EOS (subword) or "\n" (char).
        start = [self.vocab.eos] if not self.char_level else self.encode_text("\n").tolist()[-1:]
        context = list(prompt) or start
        window = self.cfg.block_size
        # Pad and BOS are never targets; neither is EOS in a char stream (its line ends are "\n" tokens).
        banned = [self.vocab.pad, self.vocab.bos] + ([self.vocab.eos] if self.char_level else [])
        cache: DecoderCache | None = DecoderCache()
        new = torch.tensor([context[-window:]], dtype=torch.long, device=device)  # (1, t)
        for _ in range(max_new_tokens):
            logits = model(new, cache=cache)[0, -1].float()  # (V,)
            logits[banned] = -float("inf")  # never targets in training
            if temperature == 0:
                token = int(logits.argmax())
            else:
                logits = logits / temperature  # (V,)
                if top_k:
                    kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
                    logits = logits.masked_fill(logits < kth, -float("inf"))  # (V,)
                probs = torch.softmax(logits, dim=-1).cpu()  # (V,)
                token = int(torch.multinomial(probs, 1, generator=generator))
            yield token
            context.append(token)
            if cache is not None and cache.pos < window:
                new = torch.tensor([[token]], dtype=torch.long, device=device)  # (1, 1)
            else:  # the context is full: slide it and recompute without a cache
                cache = None
                new = torch.tensor([context[-window:]], dtype=torch.long, device=device)  # (1, block_size)
