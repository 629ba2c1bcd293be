"""sentencepiece: training on the training split, and a small ``Tokenizer`` wrapper with fixed special ids.

Ids are fixed for every task (pad 0, unk 1, bos 2, eos 3) so models and collaters never look them up.

Char models (char-level LM) keep the text exactly: no normalisation, no dummy prefix, no whitespace folding, and
``"\\n"`` is a user-defined symbol, so ``decode(encode(text)) == text`` and one token is one character (what
bits-per-character needs).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, overload

import sentencepiece as spm

from kernel_attention.data.config import DataConfig, DataError

PAD, UNK, BOS, EOS = 0, 1, 2, 3
NEWLINE = "\n"


def spm_options(cfg: DataConfig) -> dict[str, Any]:
    """The sentencepiece trainer options for ``cfg`` (recorded in meta.json)."""
    opts: dict[str, Any] = {
        "model_type": cfg.spm_model_type,
        "vocab_size": cfg.vocab_size,
        "character_coverage": cfg.character_coverage,
        "pad_id": PAD,
        "unk_id": UNK,
        "bos_id": BOS,
        "eos_id": EOS,
        "input_sentence_size": cfg.input_sentence_size,
        "shuffle_input_sentence": True,
        "max_sentence_length": cfg.max_sentence_length,
        "num_threads": cfg.spm_threads,
    }
    if cfg.spm_model_type == "char":
        opts.update(
            normalization_rule_name="identity",
            add_dummy_prefix=False,
            remove_extra_whitespaces=False,
            user_defined_symbols=[NEWLINE],
            # The vocabulary is whatever characters occur; vocab_size is only an upper bound.
            hard_vocab_limit=False,
        )
    return opts


def train_sentencepiece(cfg: DataConfig, sentences: Iterable[str]) -> bytes:
    """Train on ``sentences`` (the training split only) and return the serialized model."""
    model = io.BytesIO()
    # Sampling input_sentence_size sentences is random; seed it so the same inputs give the same model.
    spm.set_random_generator_seed(cfg.spm_seed)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_writer=model, minloglevel=2, **spm_options(cfg)
        )
    except RuntimeError as e:
        raise DataError(f"sentencepiece training failed for task {cfg.task}: {_spm_fix(str(e), cfg)}") from None
    return model.getvalue()


def _spm_fix(message: str, cfg: DataConfig) -> str:
    """sentencepiece's reason (its C++ source location dropped) and what to change."""
    import re

    lines = [ln for ln in message.strip().splitlines() if ln.strip()]
    reason = re.sub(r"^\w+: \S+\(\d+\) (\[.*?\] )?", "", lines[-1] if lines else "failed")
    limit = re.search(r"value <= (\d+)", reason)
    if limit:
        return (f"the training split is too small for vocab_size={cfg.vocab_size} (at most {limit.group(1)} pieces "
                f"fit); set task.data.vocab_size<={limit.group(1)}, or task.data.spm_model_type=char")
    return (f"{reason}; check that the training split holds text, or set a smaller task.data.vocab_size or "
            "task.data.spm_model_type=char")


class Tokenizer:
    """A sentencepiece model with the fixed special ids. ``encode`` takes a string or a list (batched, fast)."""

    def __init__(self, model: Path | str | bytes) -> None:
        self._sp = spm.SentencePieceProcessor()
        if isinstance(model, bytes):
            self._sp.LoadFromSerializedProto(model)
        else:
            self._sp.Load(str(model))
        if (self._sp.pad_id(), self._sp.unk_id(), self._sp.bos_id(), self._sp.eos_id()) != (PAD, UNK, BOS, EOS):
            raise DataError(f"sentencepiece model {model if not isinstance(model, bytes) else '<bytes>'} does not "
                            f"use ids pad {PAD}, unk {UNK}, bos {BOS}, eos {EOS}; re-run prepare")
        self.pad, self.unk, self.bos, self.eos = PAD, UNK, BOS, EOS

    def __len__(self) -> int:
        return self._sp.get_piece_size()

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @overload
    def encode(self, text: str, num_threads: int = ...) -> list[int]: ...
    @overload
    def encode(self, text: Sequence[str], num_threads: int = ...) -> list[list[int]]: ...

    def encode(self, text: str | Sequence[str], num_threads: int = -1) -> list[int] | list[list[int]]:
        """Token ids (no BOS/EOS). A list is encoded in one call across ``num_threads`` (-1 = all cores)."""
        if isinstance(text, str):
            return self._sp.encode(text)
        return self._sp.encode(list(text), num_threads=num_threads)

    def decode(self, ids: Sequence[int] | Any) -> str:
        """Text of ``ids`` (a list, numpy array or 1-D tensor). pad/bos/eos decode to nothing."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        return self._sp.decode([int(i) for i in ids])

    def id_to_piece(self, i: int) -> str:
        return self._sp.id_to_piece(i)

    def piece_to_id(self, piece: str) -> int:
        return self._sp.piece_to_id(piece)
