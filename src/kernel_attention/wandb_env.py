"""Weights & Biases without surprises: 'offline' must mean no network traffic at all.

W&B's telemetry (an OpenTelemetry proxy posting ``/sdk/otel/v1/metrics``, and Sentry error reports) reads its
mode from W&B's process-wide settings, not from the run's ``mode=offline``: with only ``wandb.init(mode=...)``
an offline run still contacts the server (seen with wandb 0.31 and a local listener as ``WANDB_BASE_URL``).
``prepare_wandb`` sets the mode where W&B's settings read it, before W&B starts, and turns its telemetry off
unless the user asked for ``online``. Shared by training (training/loggers.py) and ``report.py --wandb``.
"""

from __future__ import annotations

import os


def prepare_wandb(mode: str) -> None:
    """Call before ``import wandb`` / ``wandb.init``: offline and disabled runs send nothing anywhere."""
    os.environ["WANDB_MODE"] = mode
    if mode == "online":
        return
    os.environ["WANDB_ERROR_REPORTING"] = "false"  # no Sentry, no telemetry recorder
    try:  # wandb already imported in this process: switch its telemetry proxy off as well
        from wandb.analytics.opentelemetry import opentelemetry_proxy

        opentelemetry_proxy.disable()
    except Exception:  # another wandb version: the environment variables above are what it reads
        pass
