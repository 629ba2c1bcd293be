"""Kernel diagnostics: how asymmetric, indefinite, high-rank and sharp a trained model's attention kernels are
(Wright & Gonzalez 2021's claims, measured). ``spectra`` (matrix measures), ``measure`` (one head on one
sequence), ``run`` (a run folder → ``diagnostics.json``, docs/contracts.md §6). Sits at evaluation's level: it
imports models, kernels, data and training's checkpoint/atomic helpers; nothing below imports it.

The run-level names are loaded on first access, so ``errors`` (used by ``kernel_attention.cli``) needs no torch.
"""

from typing import Any

from kernel_attention.diagnostics.errors import DiagnosticsError

DIAGNOSTICS_FILE = "diagnostics.json"
__all__ = ["DIAGNOSTICS_FILE", "ROLES", "DiagnoseConfig", "DiagnosticsError", "diagnose_run", "find_runs"]


def __getattr__(name: str) -> Any:
    if name in ("ROLES", "DiagnoseConfig", "diagnose_run", "find_runs"):
        from kernel_attention.diagnostics import run

        return getattr(run, name)
    raise AttributeError(f"module 'kernel_attention.diagnostics' has no attribute {name!r}")
