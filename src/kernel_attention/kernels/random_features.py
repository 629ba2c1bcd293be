"""``random_features``: FAVOR+ positive orthogonal random features for edp (Choromanski et al. 2021,
"Rethinking Attention with Performers", ICLR).

φ(x) = exp(ω_r·x' − ‖x'‖²/2)_{r=1..m} / √m with x' = x/d^¼ and ω_r orthogonal Gaussian directions (blocks of
d orthonormal rows, each row rescaled by the norm of an independent N(0, I_d) draw), so E[φ(q)·φ(k)] =
exp(q·k/√d) = edp exactly (unbiased) and the estimate is positive. The kernel this module computes is
κ_ω(q, k) = φ(q)·φ(k) for the CURRENT draw ω; its error against edp falls like 1/√m.

Redraw policy: ``redraw_every: 0`` keeps one draw forever; N > 0 redraws before every N-th forward call in
training mode (Performers redraw periodically during training). Evaluation (``.eval()``) never redraws, so
evaluation is deterministic. ω is a persistent buffer: checkpoints restore the exact draw.

Properties on (q, k): symmetric; positive definite (explicit finite feature map); never negative; feature
dimension m.

Paths: ``linear`` = ``fast`` (default for Tq·Tk > 128²) O(T·m·Dv); ``exact`` materialises φ(Q)φ(K)ᵀ. All paths
stabilise exp() as Performer does: queries by their own row max, keys by one max per (batch, head) — both are
factors the normaliser cancels exactly, so paths agree with the unstabilised κ_ω. The linear path finds the key
max in a no-grad pre-pass over chunks of keys, then hands φ to ``attention/linear_attention.py`` as a map.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from kernel_attention.kernels.base import KERNELS, Kernel, KernelConfig
from kernel_attention.registry import ConfigError


@dataclass
class RandomFeaturesConfig(KernelConfig):
    # Number of random features m >= 1 (feature dimension). Error vs edp ~ 1/√m.
    m: int = 256
    # 0 = never redraw; N > 0 = redraw ω every N forward calls in training mode (never in eval).
    redraw_every: int = 0

    def validate(self) -> None:
        super().validate()
        if self.m < 1:
            raise ConfigError(f"kernel.m={self.m} must be an integer >= 1 (e.g. 256)")
        if self.redraw_every < 0:
            raise ConfigError(f"kernel.redraw_every={self.redraw_every} must be 0 (never) or a positive int")


def orthogonal_gaussian(m: int, d: int, *, device: torch.device | None = None) -> Tensor:
    """(m, d) rows: blocks of d orthonormal directions with χ_d-distributed lengths (Choromanski et al.)."""
    blocks = []
    for _ in range(-(-m // d)):
        qmat, _ = torch.linalg.qr(torch.randn(d, d, device=device))  # (d, d) orthonormal columns
        blocks.append(qmat.T)  # (d, d) rows orthonormal
    omega = torch.cat(blocks, dim=0)[:m]  # (m, d)
    lengths = torch.randn(m, d, device=device).norm(dim=1, keepdim=True)  # (m, 1) ~ χ_d, as for Gaussian rows
    return omega * lengths  # (m, d)


@KERNELS.register("random_features")
class RandomFeaturesKernel(Kernel):
    """κ_ω(q, k) = φ(q)·φ(k), an unbiased positive estimate of exp(q·k/√d): feature dim m, symmetric, PD."""

    Config = RandomFeaturesConfig
    symmetric = True
    positive_definite = True
    can_be_negative = False
    default_path = "linear"
    auto_exact_below = 128 * 128  # measured crossover on CPU (see kernels/linear.py)

    def __init__(self, cfg: RandomFeaturesConfig, head_dim: int) -> None:
        super().__init__(cfg, head_dim)
        self.m, self.redraw_every = cfg.m, cfg.redraw_every
        self.register_buffer("omega", orthogonal_gaussian(cfg.m, head_dim))  # (m, D)
        self.calls = 0

    @torch.no_grad()
    def redraw(self) -> None:
        self.omega.copy_(orthogonal_gaussian(self.m, self.head_dim, device=self.omega.device))

    def feature_dim(self) -> float:
        return self.m

    def _projection(self, x: Tensor) -> Tensor:
        """ω·x' with x' = x/d^¼: (B, H, T, D) → (B, H, T, m); the 1/d^¼ goes into ω (m·D work), not onto x."""
        return x @ (self.omega.to(x.dtype) * self.head_dim**-0.25).T  # (B, H, T, m); backward needs no output

    def _half_sq_norm(self, x: Tensor) -> Tensor:
        """−‖x'‖²/2 as a (B, H, T, 1) column."""
        return (x * x).sum(dim=-1, keepdim=True).mul_(-0.5 / self.head_dim**0.5)  # (B, H, T, 1)

    def _exponent(self, x: Tensor, shift: Tensor | None = None) -> Tensor:
        """ω·x' − ‖x'‖²/2 (− shift) with x' = x/d^¼: (B, H, T, D) → (B, H, T, m); shift (B, H, 1, 1), detached."""
        # The (B, H, T, m) result is updated in place — m ≥ T at training lengths, so these tensors dominate.
        # Adding the negated column (bit for bit the same as subtracting it) spares sub's backward a (B, H, T, m)
        # negation, and a constant shift rides on that column instead of costing another pass over (B, H, T, m).
        col = self._half_sq_norm(x)  # (B, H, T, 1)
        return self._projection(x).add_(col if shift is None else col.sub_(shift))  # (B, H, T, m)

    def feature_map(self, x: Tensor) -> Tensor:
        return self._exponent(x).exp() / self.m**0.5  # (B, H, T, m), unstabilised: φ(q)·φ(k) = κ_ω exactly

    def _query_features(self, x: Tensor) -> Tensor:
        """Stabilised φ(x) of queries: exp(exponent − its row max), a per-query factor the normaliser cancels.
        −‖x'‖²/2 is constant along the row, so the row max absorbs it exactly: it is never computed here."""
        proj = self._projection(x)  # (B, H, T, m)
        return proj.sub_(proj.amax(dim=-1, keepdim=True).detach()).exp_()  # (B, H, T, m)

    @torch.no_grad()
    def _key_max(self, k: Tensor) -> Tensor:
        """The key stabiliser: one max of the key exponent per (b, h) over all keys and features, a constant
        (detached), found a chunk of keys at a time so no (B, H, Tk, m) tensor is needed: (B, H, 1, 1).
        max_r (p_r + c) = (max_r p_r) + c bit for bit (rounding is monotone), so the column is added after."""
        from kernel_attention.attention.linear_attention import chunk_size

        C = chunk_size(k.shape[-2], k.shape[-1], self.m)  # chunks like those of linear attention
        maxes = [(self._projection(c).amax(dim=-1, keepdim=True) + self._half_sq_norm(c)).amax(dim=-2, keepdim=True)
                 for c in k.split(C, dim=-2)]  # (B, H, 1, 1) each
        return torch.stack(maxes).amax(dim=0)  # (B, H, 1, 1)

    def _stable_features(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        ek = self._exponent(k)  # (B, H, Tk, m)
        ek = ek.sub_(ek.amax(dim=(-2, -1), keepdim=True).detach())  # one factor per (b, h): cancels as well
        return self._query_features(q), ek.exp_()  # (B, H, Tq, m), (B, H, Tk, m)

    def score(self, q: Tensor, k: Tensor) -> Tensor:
        return self.feature_map(q) @ self.feature_map(k).transpose(-2, -1)  # (B, H, Tq, Tk)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, **kw) -> Tensor:  # type: ignore[override]
        if self.training and self.redraw_every > 0:
            if self.calls % self.redraw_every == 0 and self.calls > 0:
                self.redraw()
            self.calls += 1
        return super().forward(q, k, v, **kw)  # (B, H, Tq, Dv)

    def exact(self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool, key_padding_mask: Tensor | None) -> Tensor:
        from kernel_attention.kernels.base import keep_mask

        fq, fk = self._stable_features(q, k)  # (B, H, Tq, m), (B, H, Tk, m)
        w = fq @ fk.transpose(-2, -1)  # (B, H, Tq, Tk)
        mask = keep_mask(q.shape[-2], k.shape[-2], causal=causal, key_padding_mask=key_padding_mask, device=q.device)
        if mask is not None:
            w = w.masked_fill(~mask, 0.0)
        return self.smooth(w, v)  # (B, H, Tq, Dv)

    def fast(self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool, key_padding_mask: Tensor | None) -> Tensor:
        return self.linear(q, k, v, causal=causal, key_padding_mask=key_padding_mask)  # (B, H, Tq, Dv)

    def linear(self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool, key_padding_mask: Tensor | None) -> Tensor:
        from kernel_attention.attention.linear_attention import linear_attention

        kmax = self._key_max(k)  # (B, H, 1, 1): no-grad pre-pass, so each key chunk can be stabilised alone

        def key_features(x: Tensor) -> Tensor:
            return self._exponent(x, kmax).exp_()  # (B, H, c, m)

        return linear_attention(
            q, k, v, self._query_features, key_features,
            causal=causal, key_padding_mask=key_padding_mask, safe_denominator=self.safe_denominator,
        )  # (B, H, Tq, Dv)
