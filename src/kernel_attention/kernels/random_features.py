"""``random_features``: FAVOR+ positive orthogonal random features for edp (Choromanski et al. 2021,
"Rethinking Attention with Performers", ICLR).

φ(x) = exp(ω_r·x' − ‖x'‖²/2)_{r=1..m} / √m with x' = x/d^¼ and ω_r orthogonal Gaussian directions (Haar blocks
of d orthonormal rows, each row rescaled by a χ_d length; ``_random_draws.py``), so each ω_r is marginally
N(0, I_d), E[φ(q)·φ(k)] = exp(q·k/√d) = edp exactly (unbiased) and the estimate is positive. The kernel this
module computes is κ_ω(q, k) = φ(q)·φ(k) for the CURRENT draw ω; its error against edp falls like 1/√m.
Redraw policy (``redraw_every``) and its checkpointed state: ``_random_draws.py``.

Properties on (q, k): symmetric; positive definite (explicit finite feature map); never negative; feature
dimension m.

Stabilisation. exp() overflows, so every path divides the features by per-token factors the normaliser
cancels: each query by exp of its own largest exponent a_i = max_r ω_r·q_i' (a row factor); each key by exp of
its own largest exponent ℓ_j = max_r (ω_r·k_j' − ‖k_j'‖²/2), compensated by the largest ℓ among the keys a query
can SEE — the visible keys, per causal prefix — so that no future or padded key can move a visible row:

- ``exact``: φ̃(q_i)·φ̃(k_j)·exp(ℓ_j − M_i), M_i = the largest ℓ among row i's visible keys (φ̃ = stabilised
  features); ``log_score`` = log(φ̃(q_i)·φ̃(k_j)) + a_i + ℓ_j − ‖q_i'‖²/2 − log m is log κ_ω itself (what the
  tiled path and the tests use);
- ``linear`` = ``fast`` (default for Tq·Tk > 128²), O(T·m·Dv): φ̃ as maps with the log-scales ℓ handed to
  ``attention/linear_attention.py``, which keeps every query's state relative to its visible prefix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from kernel_attention.kernels._random_draws import RandomDrawKernel, validate_draws
from kernel_attention.kernels.base import KERNELS, KernelConfig, Positions, keep_mask


@dataclass
class RandomFeaturesConfig(KernelConfig):
    # Number of random features m >= 1 (feature dimension). Error vs edp ~ 1/√m.
    m: int = 256
    # 0 = never redraw; N > 0 = redraw ω every N forward calls in training mode (never in eval).
    redraw_every: int = 0

    def validate(self) -> None:
        super().validate()
        validate_draws(self.m, self.redraw_every)


@KERNELS.register("random_features")
class RandomFeaturesKernel(RandomDrawKernel):
    """κ_ω(q, k) = φ(q)·φ(k), an unbiased positive estimate of exp(q·k/√d): feature dim m, symmetric, PD."""

    Config = RandomFeaturesConfig
    symmetric = True
    positive_definite = True
    can_be_negative = False
    default_path = "linear"
    auto_exact_below = 128 * 128  # measured crossover on CPU (see kernels/linear.py)

    def __init__(self, cfg: RandomFeaturesConfig, head_dim: int, heads: int = 1) -> None:
        super().__init__(cfg, head_dim, heads, cfg.m, cfg.redraw_every)
        self.m = cfg.m

    def feature_dim(self) -> float:
        return self.m

    def _projection(self, x: Tensor) -> Tensor:
        """ω·x' with x' = x/d^¼: (B, H, T, D) → (B, H, T, m); the 1/d^¼ goes into ω (m·D work), not onto x."""
        return x @ (self.omega.to(x.dtype) * self.head_dim**-0.25).T  # (B, H, T, m); backward needs no output

    def _half_sq_norm(self, x: Tensor) -> Tensor:
        """−‖x'‖²/2 as a (B, H, T, 1) column."""
        return (x * x).sum(dim=-1, keepdim=True).mul_(-0.5 / self.head_dim**0.5)  # (B, H, T, 1)

    def _key_exponent(self, x: Tensor) -> Tensor:
        """ω·x' − ‖x'‖²/2: (B, H, T, D) → (B, H, T, m)."""
        # In place on the (B, H, T, m) projection — m ≥ T at training lengths, so these tensors dominate.
        return self._projection(x).add_(self._half_sq_norm(x))  # (B, H, T, m)

    def feature_map(self, x: Tensor) -> Tensor:
        return self._key_exponent(x).exp() / self.m**0.5  # (B, H, T, m), unstabilised: φ(q)·φ(k) = κ_ω exactly

    def _query_features(self, x: Tensor) -> Tensor:
        """φ̃ of queries: exp(ω·x' − its row max), a per-query factor the normaliser cancels. −‖x'‖²/2 is
        constant along the row, so the row max absorbs it exactly: it is never computed here."""
        proj = self._projection(x)  # (B, H, T, m)
        return proj.sub_(proj.amax(dim=-1, keepdim=True).detach()).exp_()  # (B, H, T, m)

    def _key_features(self, x: Tensor) -> Tensor:
        """φ̃ of keys: exp(exponent − ℓ), ℓ = the key's own largest exponent (detached): max entry 1."""
        return self._key_features_and_scales(x)[0]  # (B, H, T, m)

    def _key_features_and_scales(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(φ̃(x), ℓ): (B, H, T, m) with max entry 1 per key, and the detached log-scales (B, H, T, 1)."""
        e = self._key_exponent(x)  # (B, H, T, m)
        ell = e.amax(dim=-1, keepdim=True).detach()  # (B, H, T, 1)
        return e.sub_(ell).exp_(), ell

    @torch.no_grad()
    def _key_log_scales(self, k: Tensor) -> Tensor:
        """ℓ_j = max_r (ω_r·k_j' − ‖k_j'‖²/2), found a chunk of keys at a time so no (B, H, Tk, m) tensor is
        needed: (B, H, Tk, 1). The same numbers ``_key_features`` subtracts (max_r(p_r) + c = max_r(p_r + c))."""
        from kernel_attention.attention.linear_attention import chunk_size

        C = chunk_size(k.shape[-2], k.shape[-1], self.m)  # chunks like those of linear attention
        return torch.cat([self._key_exponent(c).amax(dim=-1, keepdim=True) for c in k.split(C, dim=-2)], dim=-2)

    def log_score(self, q: Tensor, k: Tensor) -> Tensor:
        a = self._projection(q)  # (B, H, Tq, m)
        a_max = a.amax(dim=-1, keepdim=True).detach()  # (B, H, Tq, 1)
        e = self._key_exponent(k)  # (B, H, Tk, m)
        ell = e.amax(dim=-1, keepdim=True).detach()  # (B, H, Tk, 1)
        dots = (a - a_max).exp() @ (e - ell).exp().transpose(-2, -1)  # (B, H, Tq, Tk), entries in (0, m]
        # log κ_ω = log Σ_r exp(a_r + e_r) − ‖q'‖²/2 − log m; the detached maxima are added back unchanged, so
        # values and gradients are those of the formula (the logsumexp identity).
        return dots.log() + a_max + ell.transpose(-2, -1) + self._half_sq_norm(q) - math.log(self.m)

    def exact(
        self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool, key_padding_mask: Tensor | None, pos: Positions
    ) -> Tensor:
        """κ_ω materialised as φ̃(q_i)·φ̃(k_j) · exp(ℓ_j − M_i), M_i = the largest ℓ among row i's VISIBLE keys: the
        same numbers as exp(log_score) up to a row factor, without a log/exp of the (Tq, Tk) weights under
        autograd (the factor is a detached constant). Every factor is ≤ 1."""
        fq = self._query_features(q)  # (B, H, Tq, m)
        fk, ell = self._key_features_and_scales(k)  # (B, H, Tk, m), (B, H, Tk, 1)
        mask = keep_mask(q.shape[-2], k.shape[-2], causal=causal, key_padding_mask=key_padding_mask, device=q.device)
        lw = ell.transpose(-2, -1)  # (B, H, 1, Tk)
        if mask is not None:
            lw = lw.masked_fill(~mask, -torch.inf)  # (B, H, Tq, Tk)
        shift = lw.amax(dim=-1, keepdim=True)  # (B, H, Tq|1, 1): −inf for a row that sees nothing
        scale = torch.where(lw == -torch.inf, 0.0, (lw - shift).exp())  # (B, H, Tq|1, Tk)
        return self.smooth((fq @ fk.transpose(-2, -1)).mul_(scale), v, mask)  # (B, H, Tq, Dv)

    def fast(
        self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool, key_padding_mask: Tensor | None, pos: Positions
    ) -> Tensor:
        return self.linear(q, k, v, causal=causal, key_padding_mask=key_padding_mask, pos=pos)  # (B, H, Tq, Dv)

    def linear(
        self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool, key_padding_mask: Tensor | None, pos: Positions
    ) -> Tensor:
        from kernel_attention.attention.linear_attention import linear_attention

        return linear_attention(
            q, k, v, self._query_features, self._key_features,
            causal=causal, key_padding_mask=key_padding_mask, normaliser=self.normaliser(),
            k_log_scale=self._key_log_scales(k),
        )  # (B, H, Tq, Dv)
