"""How every attention path divides Σ_j κ_ij v_j by its normaliser — one rule, shared by the exact, tiled and
feature-map paths so they agree wherever the rule acts.

Positive kernels (and signed kernels normalised by Σ_j |κ_ij|): the terms of the normaliser are ≥ 0, so it is 0
only when no visible key has any weight — then the numerator is 0 too and the row returns 0. Nothing else is
floored: a tiny normaliser is a legitimate one (linear attention with q = −18·1 has Σκ ≈ 1e-7, and the answer
is still num/den), and any floor would bias exactly those rows.

Signed kernels normalised by Σ_j κ_ij (``normalization: sum``) can cancel: Σκ → 0 while the numerator does not,
and the output explodes. Their guard bounds the output instead of the denominator: where |out_i| would exceed
V_i / eps — V_i = max over the row's VISIBLE keys of ‖v_j‖_∞ — the denominator is replaced by
±eps · ‖num_i‖_∞ / V_i (sign kept), which puts ‖out_i‖_∞ at exactly V_i / eps. An attention output is a
weighted combination of the visible values; one a million times (eps = 1e-6) larger than every one of them is
the blow-up, never a legitimate answer. The rule is scale-free — rescaling κ, or v, never changes where it acts —
and every path computes it from quantities it has anyway (num, den, and a running max of ‖v‖ over visible keys),
so all paths agree even where it acts. The replaced denominator is treated as a constant (‖num‖ and V detached):
in a clamped row the gradient flows through num with the denominator held fixed — a choice, not the derivative of
the clamped value, and the same on every path (as autograd through the exact path gives).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Normaliser:
    """abs_terms: the normaliser sums |κ| (signed kernel, normalization=abs); guarded: signed kernel with
    normalization=sum, whose output is kept within V/eps (module docstring)."""

    abs_terms: bool = False
    guarded: bool = False
    eps: float = 1e-6

    def floor(self, num: Tensor, vmax: Tensor) -> Tensor:
        """eps · ‖num_i‖_∞ / V_i (B, H, Tq, 1), detached, from the numerator (B, H, Tq, Dv) and V (B, H, Tq, 1);
        0 where V = 0 (every visible value is 0, so is num)."""
        num_inf = num.detach().abs().amax(dim=-1, keepdim=True)  # (B, H, Tq, 1)
        return torch.where(vmax > 0, num_inf * self.eps / vmax.clamp_min(torch.finfo(vmax.dtype).tiny), 0.0)

    def safe(self, den: Tensor, floor: Tensor | None = None) -> Tensor:
        """The denominator to divide by: (B, H, Tq, 1) → (B, H, Tq, 1). ``floor`` (from ``floor``) is needed when
        ``guarded``."""
        if self.guarded:
            if floor is None:
                raise ValueError("a guarded normaliser needs its floor (eps · ‖num‖ / max visible ‖v‖)")
            sign = torch.where(den < 0, -1.0, 1.0).to(den.dtype)
            den = torch.where(den.abs() < floor, sign * floor, den)
        # 0 only where every visible weight is 0 (or no key is visible): num is 0 there, the row gives 0.
        return torch.where(den == 0, 1.0, den)


def value_norms(v: Tensor) -> Tensor:
    """‖v_j‖_∞ per key: (B, H, Tk, Dv) → (B, H, Tk, 1)."""
    return v.detach().abs().amax(dim=-1, keepdim=True)
