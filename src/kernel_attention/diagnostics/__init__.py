"""Kernel diagnostics: how asymmetric, indefinite, high-rank and sharp a trained model's attention kernels are
(Wright & Gonzalez 2021's claims, measured). ``spectra`` (matrix measures), ``measure`` (one head on one
sequence), ``run`` (a run folder → ``diagnostics.json``, docs/contracts.md §6), ``errors`` (``DiagnosticsError``,
torch-free for ``kernel_attention.cli``). Sits at evaluation's level: it imports models, kernels, data, store and
evaluation's checkpoint loading; nothing below imports it. This file imports nothing, so importing ``errors``
loads no torch.
"""
