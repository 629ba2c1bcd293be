"""Batched beam search (and greedy decoding) for ``EncoderDecoderTransformer``.

The search follows fairseq's ``SequenceGenerator`` so numbers are comparable with the papers we replicate:

- each step extends every live beam by every token and keeps the best ``2·beam`` candidates per sentence; the
  EOS candidates among the top ``beam`` become finished hypotheses, the best ``beam`` non-EOS ones live on;
- a finished hypothesis is scored ``sum log p / len ** lenpen`` where ``len`` counts the generated tokens
  including EOS (fairseq's length penalty; ``lenpen=0`` is the raw log-probability);
- a sentence is done when it has ``beam`` finished hypotheses or reaches its maximum length
  ``max_len_a · src_len + max_len_b`` (per sentence, so a hypothesis never depends on which other sentences share
  its batch), where EOS is forced; EOS is banned before ``min_len`` tokens; pad and BOS are never generated,
  UNK only when ``no_unk`` is False;
- finished sentences leave the batch, so late steps only pay for the long sentences.

With ``use_cache=True`` each step feeds the decoder only the newest token and the ``DecoderCache`` holds the
keys/values of every layer (``cache.reorder`` follows the beams); ``use_cache=False`` re-runs the decoder over
the whole prefix each step: the reference the cache is tested against, and the baseline of
``scripts/benchmark_decoding.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from kernel_attention.models import DecoderCache, EncoderDecoderTransformer, EncoderOut
from kernel_attention.registry import ConfigError


@dataclass
class SearchConfig:
    """Decoding options (fairseq's names and defaults where they exist)."""

    beam: int = 5
    lenpen: float = 1.0
    max_len_a: float = 1.2
    max_len_b: int = 10
    min_len: int = 1
    no_unk: bool = False
    use_cache: bool = True

    def validate(self) -> None:
        if self.beam < 1:
            raise ConfigError(f"beam must be >= 1, got {self.beam}")
        if self.min_len < 1:
            raise ConfigError(f"min_len must be >= 1 (an empty hypothesis is not a translation), got {self.min_len}")
        if self.max_len_a < 0 or self.max_len_b < 0:
            raise ConfigError(f"max_len_a and max_len_b must be >= 0, got {self.max_len_a}, {self.max_len_b}")


@dataclass
class Hypothesis:
    tokens: list[int]  # generated ids without BOS/EOS
    score: float  # sum of log-probabilities (EOS included) / len ** lenpen
    logprob: float  # sum of log-probabilities, EOS included


@dataclass(frozen=True)
class SpecialIds:
    pad: int
    unk: int
    bos: int
    eos: int


def max_lengths(src_lens: Tensor, cfg: SearchConfig) -> Tensor:
    """Most content tokens (EOS not counted) each sentence may generate: ⌊a·src_len + b⌋, at least min_len."""
    return (src_lens.double() * cfg.max_len_a + cfg.max_len_b).floor().long().clamp(min=cfg.min_len)  # (B,)


def _select_encoder(enc: EncoderOut, order: Tensor) -> EncoderOut:
    return EncoderOut(enc.out.index_select(0, order), enc.padding_mask.index_select(0, order))


def _reorder_cache(cache: DecoderCache, order: Tensor, sentence_order: Tensor | None) -> None:
    """``cache.reorder(order)``, minus the work that changes nothing: every beam of a sentence holds the same
    cross-attention keys/values (its source), so those only follow ``sentence_order`` when sentences leave the
    batch. Copying them on every step made cached decoding ~2× slower on Multi30k."""
    for layer in cache.layers:
        for role, attn in layer.items():
            index = order if role != "cross" else sentence_order
            if index is not None:
                for key, t in attn.items():
                    attn[key] = t.index_select(0, index)


def _step_lprobs(
    model: EncoderDecoderTransformer, tokens: Tensor, enc: EncoderOut, cache: DecoderCache | None
) -> Tensor:
    """Next-token log-probabilities for every row of tokens (N, t) → (N, V), in float32 or better."""
    # With a cache only the newest token goes in; without one the whole prefix is decoded again.
    new = tokens[:, -1:] if cache is not None else tokens  # (N, 1) or (N, t)
    logits = model.decode(new, enc, cache)[:, -1]  # (N, V)
    return torch.log_softmax(logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits, dim=-1)


def _constrain(lprobs: Tensor, step: int, max_len: Tensor, ids: SpecialIds, cfg: SearchConfig) -> Tensor:
    """Apply the generation rules in place. lprobs (N, V); max_len (N,) per row; step = tokens generated so far."""
    lprobs[:, ids.pad] = -math.inf
    lprobs[:, ids.bos] = -math.inf
    if cfg.no_unk:
        lprobs[:, ids.unk] = -math.inf
    if step < cfg.min_len:
        lprobs[:, ids.eos] = -math.inf
    forced = step >= max_len  # (N,) rows at their length limit end here; EOS keeps its real log-probability
    if bool(forced.any()):
        eos_lp = lprobs[forced, ids.eos].clone()  # (n_forced,)
        lprobs[forced] = -math.inf
        lprobs[forced, ids.eos] = eos_lp
    return lprobs


@torch.inference_mode()
def beam_search(
    model: EncoderDecoderTransformer, src_tokens: Tensor, ids: SpecialIds, cfg: SearchConfig | None = None
) -> list[list[Hypothesis]]:
    """Decode a batch: src_tokens (B, S) right-padded with ``ids.pad`` → per sentence its finished hypotheses,
    best first (at most ``beam``). The model should be in eval mode."""
    cfg = cfg or SearchConfig()
    cfg.validate()
    B, K, dev = src_tokens.shape[0], cfg.beam, src_tokens.device
    max_len = max_lengths(src_tokens.ne(ids.pad).sum(1), cfg).to(dev)  # (B,)
    finished: list[list[Hypothesis]] = [[] for _ in range(B)]

    beam_rows = torch.arange(B, device=dev).repeat_interleave(K)  # (B*K,) sentence of every beam row
    enc = _select_encoder(model.encode(src_tokens), beam_rows)  # (B*K, S, C): every beam sees its source
    cache = DecoderCache() if cfg.use_cache else None
    tokens = torch.full((B * K, 1), ids.bos, dtype=torch.long, device=dev)  # (B*K, 1)
    # Only beam 0 is alive at the start; the other beams would otherwise repeat its candidates K times.
    scores = torch.full((B, K), -math.inf, device=dev)  # (B, K) summed log-probs, in the model's float dtype
    scores[:, 0] = 0.0
    sent = torch.arange(B, device=dev)  # (b,) original index of every sentence still in the batch
    n_finished = torch.zeros(B, dtype=torch.long)  # (b,) on the CPU: updated element-wise below

    step = 0
    while sent.numel() > 0:
        b = sent.numel()
        lprobs = _step_lprobs(model, tokens, enc, cache)  # (b*K, V)
        V = lprobs.shape[1]
        lprobs = _constrain(lprobs, step, max_len.repeat_interleave(K), ids, cfg)  # (b*K, V)
        scores = scores.to(lprobs.dtype)  # fp32 like fairseq; fp64 models (the tests) stay exact
        cand = scores.unsqueeze(2) + lprobs.view(b, K, V)  # (b, K, V) score of every extension
        cand_scores, cand_idx = cand.view(b, K * V).topk(min(2 * K, K * V), dim=1)  # (b, 2K), best first
        cand_beam, cand_tok = cand_idx // V, cand_idx % V  # (b, 2K) each
        is_eos = cand_tok.eq(ids.eos) & torch.isfinite(cand_scores)  # (b, 2K)

        # Finished hypotheses: EOS candidates ranked within the top K (fairseq's rule), best first.
        length_norm = float(step + 1) ** cfg.lenpen  # generated tokens including this EOS
        for i, r in is_eos[:, :K].nonzero().tolist():
            out = finished[int(sent[i])]
            if len(out) < K:
                row = i * K + int(cand_beam[i, r])
                raw = float(cand_scores[i, r])
                out.append(Hypothesis(tokens[row, 1:].tolist(), raw / length_norm, raw))
                n_finished[i] += 1
        done = n_finished.to(dev).ge(K) | max_len.le(step)  # (b,)

        # The K best non-EOS candidates live on: push EOS ranks behind every other one, keep the first K.
        rank = torch.arange(cand_scores.shape[1], device=dev).expand(b, -1) + is_eos.long() * 2 * K  # (b, 2K)
        keep_rank = rank.topk(K, dim=1, largest=False).indices  # (b, K)
        new_beam = cand_beam.gather(1, keep_rank)  # (b, K)
        new_tok = cand_tok.gather(1, keep_rank)  # (b, K)
        new_scores = cand_scores.gather(1, keep_rank)  # (b, K)
        # A forced-EOS or banned-token row leaves only -inf non-EOS candidates; -inf beams never finish.

        alive = (~done).nonzero().squeeze(1)  # (b',)
        if alive.numel() == 0:
            break
        order = (alive.unsqueeze(1) * K + new_beam[alive]).view(-1)  # (b'*K,) rows of the current batch
        tokens = torch.cat([tokens.index_select(0, order), new_tok[alive].view(-1, 1)], dim=1)  # (b'*K, t+1)
        scores = new_scores[alive]  # (b', K)
        # Rows of the sentences that stay (all beams of a sentence share its source), when some leave.
        shrink = (alive * K).repeat_interleave(K) if alive.numel() < b else None  # (b'*K,)
        if cache is not None:
            _reorder_cache(cache, order, shrink)
        if shrink is not None:
            enc = _select_encoder(enc, shrink)
            sent, max_len, n_finished = sent[alive], max_len[alive], n_finished[alive.cpu()]
        step += 1

    for out in finished:
        out.sort(key=lambda h: h.score, reverse=True)
    return finished


@torch.inference_mode()
def greedy_search(
    model: EncoderDecoderTransformer, src_tokens: Tensor, ids: SpecialIds, cfg: SearchConfig | None = None
) -> list[Hypothesis]:
    """Argmax decoding with the same rules as ``beam_search`` (the reference that beam 1 must reproduce).
    Decodes every sentence until all have produced EOS; ``cfg.beam`` is ignored."""
    cfg = cfg or SearchConfig(beam=1)
    B, dev = src_tokens.shape[0], src_tokens.device
    max_len = max_lengths(src_tokens.ne(ids.pad).sum(1), cfg).to(dev)  # (B,)
    enc = model.encode(src_tokens)
    cache = DecoderCache() if cfg.use_cache else None
    tokens = torch.full((B, 1), ids.bos, dtype=torch.long, device=dev)  # (B, 1)
    logprob = torch.zeros(B, dtype=torch.float64, device=dev)  # (B,)
    length = torch.zeros(B, dtype=torch.long, device=dev)  # (B,) tokens incl. EOS; 0 = still running
    step = 0
    while bool(length.eq(0).any()):
        lprobs = _constrain(_step_lprobs(model, tokens, enc, cache), step, max_len, ids, cfg)  # (B, V)
        best_lp, best = lprobs.max(dim=1)  # (B,) each
        running = length.eq(0)  # (B,)
        logprob += torch.where(running, best_lp.double(), torch.zeros_like(logprob))
        length[running & best.eq(ids.eos)] = step + 1
        tokens = torch.cat([tokens, best.masked_fill(~running, ids.pad).unsqueeze(1)], dim=1)  # (B, t+2)
        step += 1
    hyps = []
    for i in range(B):
        n = int(length[i])
        raw = float(logprob[i])
        hyps.append(Hypothesis(tokens[i, 1:n].tolist(), raw / float(n) ** cfg.lenpen, raw))
    return hyps


def make_batches(lengths: Sequence[int], max_tokens: int, max_sentences: int) -> list[list[int]]:
    """Indices grouped longest first so padding is small; a batch holds at most ``max_sentences`` sentences and
    ``max_tokens`` padded source tokens (a longer sentence gets a batch of its own)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        # Longest first: the batch's first sentence sets its padded width.
        fits = bool(batches) and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= max_tokens
        if fits and len(batches[-1]) < max_sentences:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def translate(
    model: EncoderDecoderTransformer,
    sources: Sequence[np.ndarray],
    ids: SpecialIds,
    search: SearchConfig,
    max_tokens: int = 4096,
    max_sentences: int = 128,
    device: torch.device | str = "cpu",
) -> list[list[int]]:
    """Best hypothesis (token ids, no BOS/EOS) for every source sentence (ids without EOS), in input order.
    Sources get EOS appended and right padding, as in training's ``collate_translation``."""
    lengths = [len(s) + 1 for s in sources]
    out: list[list[int]] = [[] for _ in sources]
    for batch in make_batches(lengths, max_tokens, max_sentences):
        src = torch.full((len(batch), max(lengths[i] for i in batch)), ids.pad, dtype=torch.long)  # (b, S)
        for row, i in enumerate(batch):
            src[row, : lengths[i]] = torch.as_tensor(np.append(sources[i], ids.eos), dtype=torch.long)
        for i, hyps in zip(batch, beam_search(model, src.to(device), ids, search)):
            out[i] = hyps[0].tokens if hyps else []
    return out
