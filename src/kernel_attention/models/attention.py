"""Multi-head attention whose similarity is any registered kernel, in all three Transformer roles.

The projections are the usual ones (Vaswani et al. 2017); only the smoother in the middle changes:
out = Σ_j κ(q_i, k_j) v_j / Σ_j κ(q_i, k_j), computed by the kernel's own (exact, fast or linear) path.
Each layer owns its kernel module, so stateful kernels (random features) draw their own projections.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from kernel_attention.kernels import build_kernel
from kernel_attention.kernels.base import Kernel, KernelConfig


class MultiheadKernelAttention(nn.Module):
    """Self-attention (optionally causal) or cross-attention with kernel ``kernel_name``.

    ``cache`` (a plain dict owned by the caller's ``DecoderCache``) enables incremental decoding: self-attention
    appends the new keys/values; cross-attention projects the encoder output once and reuses it.
    """

    def __init__(
        self,
        d_model: int,
        heads: int,
        kernel_name: str,
        kernel_cfg: KernelConfig | dict[str, Any] | None,
        *,
        causal: bool = False,
        cross: bool = False,
    ) -> None:
        super().__init__()
        self.d_model, self.heads, self.head_dim = d_model, heads, d_model // heads
        self.causal, self.cross = causal, cross
        if cross:
            self.q_proj = nn.Linear(d_model, d_model)
            self.kv_proj = nn.Linear(d_model, 2 * d_model)  # one matmul for K and V of the memory
        else:
            self.qkv_proj = nn.Linear(d_model, 3 * d_model)  # one matmul for Q, K and V
        self.out_proj = nn.Linear(d_model, d_model)
        self.kernel: Kernel = build_kernel(kernel_name, self.head_dim, kernel_cfg, heads=heads)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # fairseq's init: Xavier on the fused projections with gain 1/√2 (as if Q, K, V were separate).
        for lin in (getattr(self, n) for n in ("q_proj", "kv_proj", "qkv_proj") if hasattr(self, n)):
            nn.init.xavier_uniform_(lin.weight, gain=2**-0.5)
            nn.init.zeros_(lin.bias)
        nn.init.xavier_uniform_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    def _heads(self, x: Tensor) -> Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)

    def forward(
        self,
        x: Tensor,
        *,
        memory: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        cache: dict[str, Tensor] | None = None,
        offset: int = 0,
    ) -> Tensor:
        """x (B, T, C) at positions offset..offset+T−1; memory (B, S, C) for cross-attention; key_padding_mask
        (B, Tk) True = pad → (B, T, C)."""
        B, T, C = x.shape
        if self.cross:
            q = self._heads(self.q_proj(x))  # (B, H, T, D)
            if cache is not None and "k" in cache:
                k, v = cache["k"], cache["v"]  # (B, H, S, D): the memory was projected at the first step
            else:
                assert memory is not None, "cross-attention needs the encoder output"
                k, v = (self._heads(t) for t in self.kv_proj(memory).chunk(2, dim=-1))  # (B, H, S, D) each
                if cache is not None:
                    cache["k"], cache["v"] = k, v
        else:
            q, k, v = (self._heads(t) for t in self.qkv_proj(x).chunk(3, dim=-1))  # (B, H, T, D) each
            if cache is not None:
                if "k" in cache:
                    k = torch.cat([cache["k"], k], dim=2)  # (B, H, t + T, D)
                    v = torch.cat([cache["v"], v], dim=2)  # (B, H, t + T, D)
                cache["k"], cache["v"] = k, v
        # Causal masking is bottom-right aligned in the kernels, so a cached step (T new queries, t + T keys)
        # sees exactly the keys it would have seen in a full forward pass; the queries' positions (read by
        # position-aware kernels) are those of the full pass too. Keys sit at 0.. in both roles.
        out = self.kernel(q, k, v, causal=self.causal, key_padding_mask=key_padding_mask,
                          q_offset=offset)  # (B, H, T, D)
        out = out.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.out_proj(out)  # (B, T, C)
