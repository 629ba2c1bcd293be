"""Test perplexity of a decoder-only LM on one token stream, with a sliding window of the training context.

The "perplexity of fixed-length models" method (Hugging Face docs): the model never sees more than ``window``
tokens, so the stream is cut into windows that start every ``stride`` tokens; each window scores only the
tokens the previous window did not, so every token after the first is scored exactly once, with as much left
context as the window allows (between ``window - stride + 1`` and ``window`` tokens once the stream is long
enough). ``stride = window`` is fairseq's ``eval_lm`` default (disjoint blocks, fast); a smaller stride gives a
lower, fairer number at ``window / stride`` times the cost. The stream's first token has no context and is not
scored, as in training where it is never a target.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor


def windows(n_targets: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """``(begin, end, first_scored)`` per window over ``n_targets`` predictions: inputs ``begin:end`` of the
    stream predict targets ``begin+1:end+1``; the window scores targets ``first_scored:end`` (input positions)."""
    if window < 1 or not 1 <= stride <= window:
        raise ValueError(f"need window >= 1 and 1 <= stride <= window, got window={window}, stride={stride}")
    out, prev_end, begin = [], 0, 0
    while prev_end < n_targets:
        end = min(begin + window, n_targets)
        out.append((begin, end, prev_end))
        prev_end, begin = end, begin + stride
    return out


@torch.inference_mode()
def lm_perplexity(
    model: Callable[[Tensor], Tensor],
    stream: Tensor,
    window: int,
    stride: int | None = None,
    batch_size: int = 8,
    char_level: bool = False,
) -> dict[str, float]:
    """Score ``stream`` (N,) token ids with ``model`` (tokens (B, T) → logits (B, T, V), causal).

    Returns ``loss`` (mean NLL, nats/token), ``ppl`` = exp(loss), ``n_tokens`` scored (N - 1), ``window``,
    ``stride``, and for character-level vocabularies ``bpc`` = loss / ln 2 (one token = one character).
    """
    stride = window if stride is None else stride
    stream = stream.long().view(-1)  # (N,)
    spans = windows(stream.numel() - 1, window, stride)
    device = next((p.device for p in getattr(model, "parameters", list)()), stream.device)
    nll, count = 0.0, 0
    for i in range(0, len(spans), batch_size):
        batch = spans[i : i + batch_size]
        T = max(end - begin for begin, end, _ in batch)
        # Right padding is harmless for a causal model: it only sits in the future of the scored positions.
        inputs = torch.zeros(len(batch), T, dtype=torch.long)  # (b, T)
        targets = torch.zeros(len(batch), T, dtype=torch.long)  # (b, T)
        scored = torch.zeros(len(batch), T, dtype=torch.bool)  # (b, T)
        for j, (begin, end, first) in enumerate(batch):
            inputs[j, : end - begin] = stream[begin:end]
            targets[j, : end - begin] = stream[begin + 1 : end + 1]
            scored[j, first - begin : end - begin] = True
        logits = model(inputs.to(device))  # (b, T, V)
        lprobs = torch.log_softmax(logits.double(), dim=-1)  # (b, T, V): float64 sums over millions of tokens
        token_lp = lprobs.gather(2, targets.to(device).unsqueeze(2)).squeeze(2)  # (b, T)
        nll -= float(token_lp[scored.to(device)].sum())
        count += int(scored.sum())
    if count == 0:
        raise ValueError(f"the stream has {stream.numel()} token(s); perplexity needs at least 2")
    loss = nll / count
    out = {"loss": loss, "ppl": math.exp(loss), "n_tokens": count, "window": window, "stride": stride}
    if char_level:
        out["bpc"] = loss / math.log(2)
    return out
