"""kernel-attention: swap the kernel inside attention (Wright & Gonzalez 2021) and measure what matters."""

__version__ = "0.1.0"
