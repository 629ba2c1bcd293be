"""The Task interface (fairseq-like): what a training loop needs to know about a task, and nothing more.

A task owns its data (``PreparedData``), builds the model for its architecture, turns sampler indices into
batches, computes the training loss and the validation metrics. The loop in ``kernel_attention.training`` is
the same for every task. Tasks are registered in ``TASKS`` by type (``translation``, ``lm``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from kernel_attention.config import TaskConfig
from kernel_attention.data import PreparedData, ShardedBatchSampler
from kernel_attention.models import build_model
from kernel_attention.registry import Registry
from kernel_attention.tasks.losses import linear_label_smoothed_nll
from kernel_attention.training.checkpoint import unwrap


class Task:
    """Base class; subclasses set ``type`` and implement the data-dependent parts."""

    type: str
    Config = TaskConfig

    def __init__(self, cfg: TaskConfig, data: PreparedData, label_smoothing: float = 0.0) -> None:
        self.cfg = cfg
        self.data = data
        self.vocab = data.vocab
        self.label_smoothing = label_smoothing

    # ---- model --------------------------------------------------------------------------------------------
    def build_model(self, model_cfg: Any, kernel_name: str, kernel_cfg: Any) -> nn.Module:
        return build_model(model_cfg, kernel_name, kernel_cfg, self.type, self.vocab.size, self.vocab.pad)

    # ---- data ---------------------------------------------------------------------------------------------
    def train_sampler(self, seed: int, num_replicas: int = 1, rank: int = 0) -> ShardedBatchSampler:
        raise NotImplementedError

    def train_batch(self, indices: Sequence[int]) -> dict[str, Any]:
        raise NotImplementedError

    def valid_batches(self, num_replicas: int = 1, rank: int = 0, max_batches: int = 0) -> Iterator[dict[str, Any]]:
        raise NotImplementedError

    # ---- maths --------------------------------------------------------------------------------------------
    def forward(self, model: nn.Module, batch: dict[str, Any], features_only: bool = False) -> Tensor:
        """logits (B, T, V), or the decoder's final hidden states (B, T, C) with ``features_only``."""
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, int, dict[str, float]]:
        """(summed training loss, sample_size = target tokens, logs). The loop divides by the total sample
        size of the update (over micro-batches and ranks), so every token weighs the same (fairseq).
        The output projection is fused into the loss (``tasks/losses.py``): same value, no (B, T, V) logits."""
        hidden = self.forward(model, batch, features_only=True)  # (B, T, C)
        weight = unwrap(model).output_weight  # (V, C)
        loss, nll, ntok = linear_label_smoothed_nll(hidden, weight, batch["target"], self.label_smoothing,
                                                    self.vocab.pad)
        logs = {"loss": float(loss.detach()), "nll_loss": float(nll.detach()), "ntokens": ntok,
                "nsentences": int(batch["target"].shape[0])}
        return loss, ntok, logs

    @staticmethod
    def reduce_metrics(logs: Sequence[dict[str, float]]) -> dict[str, float]:
        """Sum logs over micro-batches (and ranks, by the caller) into per-token loss/nll/ppl."""
        ntok = sum(x["ntokens"] for x in logs)
        loss = sum(x["loss"] for x in logs) / max(ntok, 1)
        nll = sum(x["nll_loss"] for x in logs) / max(ntok, 1)
        return {"loss": loss, "nll_loss": nll, "ppl": safe_exp(nll), "ntokens": ntok,
                "nsentences": sum(x.get("nsentences", 0) for x in logs)}

    @torch.no_grad()
    def valid_loss(self, model: nn.Module, device: torch.device, *, num_replicas: int = 1, rank: int = 0,
                   max_batches: int = 0, autocast: Any = None) -> tuple[float, int]:
        """Summed NLL (nats, no smoothing) and target-token count over this rank's share of the valid split."""
        total, count = 0.0, 0
        for batch in self.valid_batches(num_replicas, rank, max_batches):
            batch = to_device(batch, device)
            with autocast() if autocast else contextlib.nullcontext():
                hidden = self.forward(model, batch, features_only=True)  # (B, T, C)
                _, nll, ntok = linear_label_smoothed_nll(hidden, unwrap(model).output_weight, batch["target"],
                                                         0.0, self.vocab.pad)
            total += float(nll)
            count += ntok
        return total, count

    def valid_metrics(self, model: nn.Module, device: torch.device, autocast: Any = None) -> dict[str, float]:
        """Task-specific extras on rank 0 (translation: greedy BLEU); loss/ppl come from ``valid_loss``."""
        return {}


def safe_exp(x: float) -> float:
    return math.exp(x) if x < 700 else math.inf


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()}


TASKS: Registry[Task] = Registry("task type")


def build_task(cfg: TaskConfig, data: PreparedData, label_smoothing: float = 0.0) -> Task:
    return TASKS.get(cfg.type)(cfg, data, label_smoothing)
