"""What the random-feature kernels (``random_features``: FAVOR+, ``rff``: random Fourier features) share: the
orthogonal Gaussian draw of their frequencies and the redraw schedule. Not a kernel itself (the package skips
modules whose name starts with ``_``).

The draw. Each row of ω must be marginally N(0, I_d): that alone makes both estimators unbiased, E_ω[φ(q)·φ(k)]
= κ(q, k), and orthogonal rows within blocks of d reduce the variance (Yu et al. 2016, "Orthogonal Random
Features"; Choromanski et al. 2021 §2.4). A block is the Q factor of the QR decomposition of a Gaussian matrix,
corrected by the signs of diag(R) so that it is Haar-distributed (Mezzadri 2007, "How to generate random
matrices from the classical compact groups"): LAPACK's Householder QR fixes the signs of R's diagonal, which
without the correction makes Q's directions far from uniform (the first row's first coordinate is negative in
every draw, and FAVOR+ then underestimates exp(q·k/√d) by 10 % at d = 64). Each row is then rescaled by the
norm of an independent N(0, I_d) draw (a χ_d length), as for a Gaussian row.

The schedule. ``redraw_every: N > 0`` redraws ω before every N-th forward call in training mode; evaluation
never redraws. The call counter is a buffer, so a checkpoint restores where in the schedule a run was and a
resumed run draws exactly what the uninterrupted run drew. Draws come from torch's global RNG (seeded by the
trainer, saved in checkpoints).
"""

from __future__ import annotations

import torch
from torch import Tensor

from kernel_attention.kernels.base import Kernel, KernelConfig
from kernel_attention.registry import ConfigError


def haar_orthogonal(d: int, *, device: torch.device | None = None, dtype: torch.dtype | None = None) -> Tensor:
    """A Haar-random (d, d) orthogonal matrix: Q of QR(Gaussian) with the signs of diag(R) folded into Q."""
    qmat, r = torch.linalg.qr(torch.randn(d, d, device=device, dtype=dtype))  # (d, d) each
    signs = torch.sign(torch.diagonal(r))  # (d,)
    signs = torch.where(signs == 0, 1.0, signs)  # a zero pivot has probability 0; keep Q orthogonal anyway
    return qmat * signs  # (d, d): column c of Q times sign(R_cc)


def orthogonal_gaussian(m: int, d: int, *, device: torch.device | None = None) -> Tensor:
    """(m, d) rows, each marginally N(0, I_d): blocks of d orthonormal Haar directions with χ_d lengths."""
    blocks = [haar_orthogonal(d, device=device).T for _ in range(-(-m // d))]  # (d, d) each, rows orthonormal
    omega = torch.cat(blocks, dim=0)[:m]  # (m, d)
    lengths = torch.randn(m, d, device=device).norm(dim=1, keepdim=True)  # (m, 1) ~ χ_d, as for Gaussian rows
    return omega * lengths  # (m, d)


def validate_draws(m: int, redraw_every: int) -> None:
    if m < 1:
        raise ConfigError(f"kernel.m={m} must be an integer >= 1 (e.g. 256)")
    if redraw_every < 0:
        raise ConfigError(f"kernel.redraw_every={redraw_every} must be 0 (never) or a positive int")


class RandomDrawKernel(Kernel):
    """A kernel whose maths reads a random (n, d) frequency matrix ``omega``, redrawn on a schedule."""

    draw_buffers = ("omega",)

    def __init__(self, cfg: KernelConfig, head_dim: int, heads: int, n_rows: int, redraw_every: int) -> None:
        super().__init__(cfg, head_dim, heads)
        self.n_rows, self.redraw_every = n_rows, redraw_every
        self.register_buffer("omega", orthogonal_gaussian(n_rows, head_dim))  # (n, D)
        # Training forward calls so far: part of the module's state (checkpointed), so resume continues the
        # schedule exactly. A 0-d long buffer; checkpoint averaging takes integer buffers from the newest.
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def redraw(self) -> None:
        self.omega.copy_(orthogonal_gaussian(self.n_rows, self.head_dim, device=self.omega.device))

    def forward(self, q: Tensor, k: Tensor, v: Tensor, **kw) -> Tensor:  # type: ignore[override]
        if self.training and self.redraw_every > 0:
            n = int(self.calls)
            if n > 0 and n % self.redraw_every == 0:
                self.redraw()
            self.calls.add_(1)
        return super().forward(q, k, v, **kw)  # (B, H, Tq, Dv)
