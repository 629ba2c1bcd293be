"""FlexAttention path (PyTorch ≥ 2.5): softmax(score_mod(q·k·scale)) with score_mod = log κ.

Any kernel whose log κ is a function of q·k and per-token scalars (‖q‖², ‖k‖², ...) fits: the kernel returns a
score_mod closure that indexes those scalars by (b, h, q_idx, kv_idx). Masks become a block mask, so fully
hidden blocks are skipped. On CUDA the call is compiled (a fused Triton kernel, forward and backward); on CPU
it runs eagerly, forward only — enough to test the score_mod maths against the exact path, not to train.
Status: forward verified on CPU against ``exact``; CUDA (compiled, fwd+bwd) is exercised by
tests/test_kernels_cuda.py and is unverified until that runs on a GPU, hence opt-in (``path: flex``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor

from kernel_attention.registry import ConfigError


@functools.lru_cache(maxsize=1)
def _compiled_flex() -> Callable[..., Tensor]:
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=True)


def flex_kernel_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    score_mod: Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor],
    *,
    scale: float,
    causal: bool,
    key_padding_mask: Tensor | None,
) -> Tensor:
    """q (B, H, Tq, D), k (B, H, Tk, D), v (B, H, Tk, Dv) → (B, H, Tq, Dv); rows with no visible key → 0."""
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError as e:  # pragma: no cover - torch < 2.5
        raise ConfigError(f"path=flex needs torch >= 2.5 with FlexAttention ({e}); use path=fast") from e
    if not q.is_cuda and torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        raise ConfigError("path=flex has no CPU backward in PyTorch; train with path=fast on CPU")
    B, Tq = q.shape[0], q.shape[-2]
    Tk = k.shape[-2]
    offset = Tk - Tq
    keep_k = None if key_padding_mask is None else ~key_padding_mask.to(device=q.device, dtype=torch.bool)

    def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        ok = kv_idx <= q_idx + offset if causal else kv_idx >= 0
        return ok & keep_k[b, kv_idx] if keep_k is not None else ok

    block_mask = None
    if causal or keep_k is not None:
        block_mask = create_block_mask(
            mask_mod, B if keep_k is not None else None, None, Tq, Tk, device=q.device
        )
    fn = _compiled_flex() if q.is_cuda else flex_attention
    out = fn(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale)  # (B, H, Tq, Dv)
    if causal and offset < 0:
        # Queries before the first key have nothing to attend to; make that 0 explicitly (as exact does).
        seen = (torch.arange(Tq, device=q.device) + offset >= 0)[None, None, :, None]  # (1, 1, Tq, 1)
        out = out * seen
    if keep_k is not None:
        out = out * keep_k.any(dim=-1)[:, None, None, None]  # (B, H, Tq, Dv): all-padding rows → 0
    return out
