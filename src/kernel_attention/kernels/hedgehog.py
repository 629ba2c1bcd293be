"""``hedgehog``: a trainable feature map, φ(x) = [softmax(W x + b), softmax(−(W x + b))] per head (Zhang et al.
2024, "The Hedgehog & the Porcupine: Expressive Linear Attentions with Softmax Mimicry", ICLR).

Each head h owns W_h (m × d) and b_h (m), trained with the task loss like every other weight (Hedgehog also
offers distillation towards softmax; end-to-end training is the variant the study needs). The two halves are
softmaxes over the m features, so φ(q)·φ(k) ∈ (0, 2]: positive and bounded, no stabilisation needed, and the
feature dimension is 2m — a finite space that is *learned* rather than an approximation of edp, the study's
sharpest probe of whether the infinite dimension matters.

Initialisation: W_h = the identity on the first m coordinates when m ≤ d (the Hedgehog code's identity init at
m = d), random orthonormal columns when m > d (zero or copied rows would stay alike under training: their
gradients are equal), and b = 0.

``tie_qk: true`` (default) applies one map to queries and keys: κ is symmetric and positive definite (φ(q)·φ(k)
with one φ). ``false`` gives queries and keys their own (W, b) — equal at initialisation, as in the Hedgehog
code, and apart once trained: κ(q, k) = φ_q(q)·φ_k(k) is then neither symmetric nor PD on (q, k) (its Gram
matrices are not symmetric), while still never negative.

Paths: ``linear`` (default beyond Tq·Tk = 128², and ``fast``) O(T·2m·Dv), with W, b differentiated through
every recomputed chunk of φ; ``exact`` materialises φ_q(Q) φ_k(K)ᵀ.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from kernel_attention.kernels.base import KERNELS, Kernel, KernelConfig, KernelProperties, Positions
from kernel_attention.registry import ConfigError


@dataclass
class HedgehogConfig(KernelConfig):
    # Features per half: φ has 2m features (softmax(Wx+b) and softmax(−Wx−b)), m >= 1.
    m: int = 32
    # One map for queries and keys (symmetric, PD) or one each.
    tie_qk: bool = True

    def validate(self) -> None:
        super().validate()
        if self.m < 1:
            raise ConfigError(f"kernel.m={self.m} must be an integer >= 1 (feature dimension 2m)")


def _initial_maps(heads: int, m: int, d: int) -> Tensor:
    w = torch.empty(heads, m, d)  # (H, m, d)
    for h in range(heads):
        nn.init.eye_(w[h]) if m <= d else nn.init.orthogonal_(w[h])
    return w


@KERNELS.register("hedgehog")
class HedgehogKernel(Kernel):
    """κ(q, k) = φ_q(q)·φ_k(k), φ(x) = [softmax(Wx+b), softmax(−Wx−b)] per head, trained: feature dim 2m."""

    Config = HedgehogConfig
    can_be_negative = False
    default_path = "linear"
    auto_exact_below = 128 * 128  # as the other feature-map kernels

    def __init__(self, cfg: HedgehogConfig, head_dim: int, heads: int = 1) -> None:
        super().__init__(cfg, head_dim, heads)
        self.m, self.tie_qk = cfg.m, cfg.tie_qk
        self.weight = nn.Parameter(_initial_maps(heads, cfg.m, head_dim))  # (H, m, D)
        self.bias = nn.Parameter(torch.zeros(heads, cfg.m))  # (H, m)
        if not cfg.tie_qk:
            self.key_weight = nn.Parameter(_initial_maps(heads, cfg.m, head_dim))  # (H, m, D)
            self.key_bias = nn.Parameter(torch.zeros(heads, cfg.m))  # (H, m)

    @property
    def symmetric(self) -> bool:  # type: ignore[override]
        return self.tie_qk

    @property
    def positive_definite(self) -> bool:  # type: ignore[override]
        return self.tie_qk

    def feature_dim(self) -> float:
        return 2 * self.m

    def properties(self) -> KernelProperties:
        return KernelProperties(self.feature_dim(), self.tie_qk, self.tie_qk, False)

    def _phi(self, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        if x.shape[1] != self.heads:
            raise ConfigError(f"kernel 'hedgehog' was built for {self.heads} head(s), got {x.shape[1]}")
        z = torch.einsum("bhtd,hmd->bhtm", x, weight.to(x.dtype)) + bias.to(x.dtype)[:, None]  # (B, H, T, m)
        return torch.cat([z.softmax(dim=-1), (-z).softmax(dim=-1)], dim=-1)  # (B, H, T, 2m)

    def feature_map(self, x: Tensor) -> Tensor:
        return self._phi(x, self.weight, self.bias)  # (B, H, T, 2m)

    def key_feature_map(self, x: Tensor, *pos: Tensor) -> Tensor:
        if self.tie_qk:
            return self.feature_map(x)
        return self._phi(x, self.key_weight, self.key_bias)  # (B, H, T, 2m)

    def score(self, q: Tensor, k: Tensor) -> Tensor:
        return self.feature_map(q) @ self.key_feature_map(k).transpose(-2, -1)  # (B, H, Tq, Tk)

    def fast(
        self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool, key_padding_mask: Tensor | None, pos: Positions
    ) -> Tensor:
        return self.linear(q, k, v, causal=causal, key_padding_mask=key_padding_mask, pos=pos)  # (B, H, Tq, Dv)
