"""Training losses: label-smoothed cross-entropy, plain and fused with the output projection.

``label_smoothed_nll`` takes logits (the reference; validation and tests use it). ``linear_label_smoothed_nll``
takes the decoder's last hidden states and the output embedding and never builds the (N, V) logits: rows are
processed in chunks of ``chunk`` tokens, and the gradient of the loss w.r.t. each chunk's logits
(softmax − smoothed one-hot) is pushed through the projection right away, in the forward pass (as Liger-Kernel's
fused linear cross-entropy does; Hsu et al. 2024, arXiv:2410.10989). Backward then only scales the saved
gradients of h and W by the incoming scalar.

Why: with an 8k vocabulary and 4k-token batches the logits and their log-softmax, gradient and smoothing
terms are ~131 MB tensors each; on CPU every fresh one is page-faulted in and streamed several times. Profiling
the transformer_small step (1 core) put ~27 % of it in those element-wise passes — more than all attention.
Chunks of a few MB are reused, stay in cache, and the matmuls are the same three (logits, dh, dW).
"""

from __future__ import annotations

import torch
from torch import Tensor


def label_smoothed_nll(logits: Tensor, target: Tensor, eps: float, pad: int) -> tuple[Tensor, Tensor, int]:
    """Summed label-smoothed cross-entropy and summed NLL over non-pad targets, and their count.

    logits (B, T, V), target (B, T). Smoothing spreads ``eps`` uniformly over the vocabulary (PyTorch's
    convention; fairseq spreads it over V-1 classes, a negligible difference). The maths is in fp32 even
    under bf16 autocast: log-softmax over a large vocabulary is where low precision hurts."""
    lprobs = logits.float().log_softmax(dim=-1)  # (B, T, V)
    keep = target.ne(pad)  # (B, T)
    nll = -lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)  # (B, T)
    nll = nll.masked_fill(~keep, 0.0).sum()
    if eps > 0:
        smooth = -lprobs.mean(dim=-1)  # (B, T): cross-entropy against the uniform distribution
        smooth = smooth.masked_fill(~keep, 0.0).sum()
        loss = (1.0 - eps) * nll + eps * smooth
    else:
        loss = nll
    return loss, nll, int(keep.sum())


def default_chunk(vocab: int) -> int:
    """Rows per chunk: ~16 MB of fp32 logits, at least 64 rows for the matmuls. Measured on the
    transformer_small step (V = 8000, 1 core): 128 / 256 / 512 / 1024 rows → 100 / 102 / 104 / 102 GFLOP/s
    against 90 unfused."""
    return max(64, (1 << 22) // max(vocab, 1))


def _matmul_dtype(h: Tensor) -> torch.dtype:
    """What the unfused ``h @ Wᵀ`` would run in: the autocast dtype inside an autocast region, else h's."""
    dev = h.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else h.dtype


def _chunked(
    h: Tensor, weight: Tensor, target: Tensor, eps: float, pad: int, chunk: int, mm_dtype: torch.dtype, grads: bool
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Summed loss and NLL over rows of h (N, C) against weight (V, C); with ``grads`` also d(loss)/dh (N, C)
    and d(loss)/dW (V, C). Softmax maths and accumulators in fp32 (fp64 for fp64 inputs)."""
    N, V = h.shape[0], weight.shape[0]
    acc = torch.promote_types(torch.float32, mm_dtype)
    with torch.autocast(h.device.type, enabled=False):  # dtypes are explicit below
        w = weight.to(mm_dtype)  # (V, C)
        loss = h.new_zeros((), dtype=acc)
        nll = h.new_zeros((), dtype=acc)
        dh = torch.empty(h.shape, dtype=acc, device=h.device) if grads else None  # (N, C)
        dw = torch.zeros(weight.shape, dtype=acc, device=h.device) if grads else None  # (V, C)
        for r0 in range(0, N, chunk):
            r1 = min(N, r0 + chunk)
            hc, tc = h[r0:r1].to(mm_dtype), target[r0:r1]  # (n, C), (n,)
            logits = (hc @ w.t()).to(acc)  # (n, V)
            logits.sub_(logits.amax(dim=-1, keepdim=True))  # (n, V) shifted: exp() cannot overflow
            p = logits.exp()  # (n, V) unnormalised probabilities
            sumexp = p.sum(dim=-1)  # (n,)
            lse = sumexp.log()  # (n,) log-partition of the shifted logits
            keep = tc.ne(pad)  # (n,)
            safe_t = tc.masked_fill(~keep, 0)[:, None]  # (n, 1): any valid index on pad rows (masked below)
            row_nll = lse - logits.gather(1, safe_t).squeeze(1)  # (n,)
            row_loss = row_nll if eps == 0 else (1.0 - eps) * row_nll + eps * (lse - logits.mean(dim=-1))
            nll += row_nll.masked_fill(~keep, 0.0).sum()
            loss += row_loss.masked_fill(~keep, 0.0).sum()
            if not grads:
                continue
            # d(loss)/d(logits) = softmax − (1 − ε)·onehot(target) − ε/V on kept rows, 0 on pad rows.
            g = p.mul_((keep / sumexp)[:, None])  # (n, V) softmax, zeroed on pad rows
            if eps:
                g.sub_((keep.to(acc) * (eps / V))[:, None])
            g.scatter_add_(1, safe_t, -(1.0 - eps) * keep[:, None].to(acc))  # (n, V)
            gm = g.to(mm_dtype)  # (n, V)
            dh[r0:r1] = gm @ w  # (n, C)
            dw.add_(gm.t() @ hc)  # (V, C), accumulated in fp32
    return loss, nll, dh, dw


class _LinearLabelSmoothedNLL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, target: Tensor, eps: float, pad: int, chunk: int,  # type: ignore[override]
                mm_dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        loss, nll, dh, dw = _chunked(h, weight, target, eps, pad, chunk, mm_dtype, grads=True)
        ctx.save_for_backward(dh, dw)
        ctx.dtypes = (h.dtype, weight.dtype)
        ctx.mark_non_differentiable(nll)
        return loss, nll

    @staticmethod
    def backward(ctx, g_loss: Tensor, _g_nll: Tensor):  # type: ignore[override]
        dh, dw = ctx.saved_tensors
        h_dtype, w_dtype = ctx.dtypes
        return (dh * g_loss).to(h_dtype), (dw * g_loss).to(w_dtype), None, None, None, None, None


def linear_label_smoothed_nll(
    hidden: Tensor, weight: Tensor, target: Tensor, eps: float, pad: int, chunk: int | None = None
) -> tuple[Tensor, Tensor, int]:
    """``label_smoothed_nll(hidden @ weight.T, target, eps, pad)`` without materialising the logits.

    hidden (B, T, C) or (N, C), weight (V, C), target (B, T) or (N,) → (summed loss, summed NLL, non-pad count).
    Gradients reach hidden and weight (the loss only; the NLL is for logging). Under autocast the projection
    runs in the autocast dtype and the softmax maths in fp32, as the unfused path does."""
    h = hidden.reshape(-1, hidden.shape[-1])  # (N, C)
    t = target.reshape(-1)  # (N,)
    chunk = chunk or default_chunk(weight.shape[0])
    mm_dtype = _matmul_dtype(h)
    count = int(t.ne(pad).sum())
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        loss, nll = _LinearLabelSmoothedNLL.apply(h, weight, t, float(eps), int(pad), chunk, mm_dtype)
    else:
        loss, nll, _, _ = _chunked(h, weight, t, float(eps), int(pad), chunk, mm_dtype, grads=False)
    return loss, nll, count
