"""Collaters: lists of dataset items → padded tensors (pad id 0, right padding; masks are ``tokens == pad``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from kernel_attention.data.tokenizer import BOS, EOS, PAD


def _pad(rows: Sequence[np.ndarray], pad: int) -> torch.Tensor:
    width = max((len(r) for r in rows), default=0)
    out = np.full((len(rows), width), pad, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return torch.from_numpy(out)


def collate_translation(
    samples: Sequence[dict[str, Any]], pad: int = PAD, bos: int = BOS, eos: int = EOS
) -> dict[str, torch.Tensor]:
    """``{id (B,), src_tokens (B,S) = src+[eos], src_lengths (B,), prev_output_tokens (B,T) = [bos]+tgt,
    target (B,T) = tgt+[eos], ntokens}``. ``id`` is the sentence index, to put hypotheses back in corpus order."""
    eos_a, bos_a = np.array([eos], np.int64), np.array([bos], np.int64)
    src = [np.concatenate([s["source"], eos_a]) for s in samples]
    tgt = [np.asarray(s["target"], np.int64) for s in samples]
    target = [np.concatenate([t, eos_a]) for t in tgt]
    prev = [np.concatenate([bos_a, t]) for t in tgt]
    return {
        "id": torch.tensor([s["id"] for s in samples], dtype=torch.int64),
        "src_tokens": _pad(src, pad),
        "src_lengths": torch.tensor([len(s) for s in src], dtype=torch.int64),
        "prev_output_tokens": _pad(prev, pad),
        "target": _pad(target, pad),
        "ntokens": int(sum(len(t) for t in target)),
    }


def collate_lm(samples: Sequence[np.ndarray], pad: int = PAD) -> dict[str, torch.Tensor]:
    """Blocks of up to ``block_size + 1`` tokens → ``{tokens (B,T), target (B,T) shifted by one, ntokens}``.
    Padding (a short last block) gets target ``pad`` and is not counted in ``ntokens``."""
    tokens = [np.asarray(b[:-1], np.int64) for b in samples]
    target = [np.asarray(b[1:], np.int64) for b in samples]
    return {
        "tokens": _pad(tokens, pad),
        "target": _pad(target, pad),
        "ntokens": int(sum(len(t) for t in target)),
    }
