"""The Task interface (fairseq's registered task + its dataclass): everything that depends on the kind of task.

A task type is registered in ``TASKS`` under its name (``translation``, ``lm``) with its own typed ``Config``
(``TaskConfig`` + that type's options). The class says what the loop, the evaluation and the report need to
know — its architecture, its reported metric and direction, which validation numbers may pick ``best.pt``,
the startup cross-checks against the model and trainer — and an instance owns its data (``PreparedData``):
batches, the training loss, validation, test-time evaluation (``evaluate``) and generation. Nothing outside
``kernel_attention.tasks`` asks which type a task is.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from kernel_attention.config import _positive
from kernel_attention.data import PreparedData, ShardedBatchSampler
from kernel_attention.evaluation.options import EvalOptions, TestSet
from kernel_attention.models import build_model
from kernel_attention.registry import ConfigError, Registry, config_from_mapping
from kernel_attention.store.checkpoint import unwrap
from kernel_attention.tasks.losses import linear_label_smoothed_nll


@dataclass
class TaskConfig:
    """Options of every task. ``name`` is the preset (``task=multi30k``), ``type`` the registered task type;
    ``data`` belongs to the data stage (``DataConfig``). Each task type extends this with its own options."""

    name: str = ""
    type: str = ""
    data: Any = None  # kernel_attention.data.config.DataConfig
    max_tokens: int = 4096  # tokens per batch per process (source or target, whichever is longer)
    max_tokens_valid: int = 0  # 0 = max_tokens
    update_freq: int = 1  # gradient accumulation: batches per update

    def validate(self) -> None:
        if not self.name:
            raise ConfigError("task.name is empty; pick a task with task=<name> (see conf/task/)")
        for key in ("max_tokens", "update_freq"):
            _positive(f"task.{key}", getattr(self, key))
        _positive("task.max_tokens_valid", self.max_tokens_valid, zero_ok=True)


class Task:
    """Base class; a registered subclass sets the class attributes below and implements the data parts."""

    type: str  # the registered name (set by ``TASKS.register``)
    Config: type[TaskConfig] = TaskConfig
    architecture: str  # a ``kernel_attention.models.ARCHITECTURES`` name
    metric: str  # the test number the report compares (a key of the test section); see ``metric_for``
    higher_is_better: bool
    # Validation numbers that may pick best.pt (trainer.best_metric) → whether higher is better.
    valid_directions: ClassVar[Mapping[str, bool]] = {"loss": False}

    # ---- configuration (class level: no data needed) -----------------------------------------------------
    @classmethod
    def check(cls, cfg: TaskConfig, model: Any, trainer: Any) -> None:
        """Cross-section checks at startup: one ``ConfigError`` naming the fix."""
        if trainer.best_metric not in cls.valid_directions:
            raise ConfigError(f"trainer.best_metric={trainer.best_metric!r} is not a validation number of task "
                              f"{cfg.name!r} ({cls.type}); choose one of: {', '.join(cls.valid_directions)}")
        if model.positions == "learned":  # a learned table cannot grow: check the longest sequence now
            longest, what = cls.longest_sequence(cfg)
            if longest > model.max_positions:
                raise ConfigError(f"{what}={longest} exceeds model.max_positions={model.max_positions} (learned "
                                  f"positions); set model.max_positions>={longest} or a shorter {what.split(' ')[0]}")

    @classmethod
    def longest_sequence(cls, cfg: TaskConfig) -> tuple[int, str]:
        """The longest sequence the model sees in training and what sets it (for the learned-positions check)."""
        raise NotImplementedError

    @classmethod
    def metric_for(cls, cfg: Any) -> str:
        """The test number a run of task config ``cfg`` reports (a ``TaskConfig``, or the raw mapping a failed
        sweep job has): ``metric`` unless the type's choice depends on the data (LM: bpc for characters)."""
        return cls.metric

    @classmethod
    def record(cls, cfg: Any) -> dict[str, Any]:
        """The ``task`` facts of metrics.json besides its name (docs/contracts.md §3), for task config ``cfg``."""
        return {"type": cls.type, "metric": cls.metric_for(cfg), "higher_is_better": cls.higher_is_better}

    # ---- instance: the data ---------------------------------------------------------------------------------
    def __init__(self, cfg: TaskConfig, data: PreparedData, label_smoothing: float = 0.0) -> None:
        self.cfg = cfg
        self.data = data
        self.vocab = data.vocab
        self.label_smoothing = label_smoothing

    def build_model(self, model_cfg: Any, kernel_name: str, kernel_cfg: Any) -> nn.Module:
        return build_model(model_cfg, kernel_name, kernel_cfg, self.architecture, self.vocab.size, self.vocab.pad)

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

    # ---- validation ---------------------------------------------------------------------------------------
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

    def valid_from_loss(self, loss: float) -> dict[str, float]:
        """Validation numbers derived from the whole split's mean NLL (nats/token), beside ``ppl``."""
        return {}

    def valid_metrics(self, model: nn.Module, device: torch.device, autocast: Any = None) -> dict[str, float]:
        """Task-specific extras on rank 0 (translation: greedy BLEU); loss/ppl come from ``valid_loss``."""
        return {}

    def is_better(self, key: str, new: float, old: float) -> bool:
        """Whether validation number ``key`` improved from ``old`` to ``new``."""
        return new > old if self.valid_directions[key] else new < old

    # ---- test time ----------------------------------------------------------------------------------------
    def evaluate(self, model: nn.Module, split: str, opts: EvalOptions, device: torch.device, out_dir: Path,
                 name: str) -> dict[str, Any]:
        """Score ``model`` on the prepared ``split``; files (hypotheses) go to ``out_dir`` named after ``name``."""
        raise NotImplementedError

    def check_options(self, opts: EvalOptions) -> None:
        """Reject evaluation options this task cannot use (a ``ConfigError``), before anything is written."""

    def load_test_set(self, name: str, test_set: TestSet, model: nn.Module) -> Any:
        """Read and encode a raw test set (``test_sets.<name>`` of evaluate.py) with the run's tokenizer; a
        test set this task cannot score, or a missing / misaligned file, raises one line naming the fix."""
        raise NotImplementedError

    def evaluate_test_set(self, model: nn.Module, test_set: Any, opts: EvalOptions, device: torch.device,
                          out_dir: Path, name: str) -> dict[str, Any]:
        """Score ``model`` on a test set that ``load_test_set`` read; files go to ``out_dir`` named after
        ``name``."""
        raise NotImplementedError

    @staticmethod
    def summary(result: Mapping[str, Any]) -> str:
        """The scores of an ``evaluate`` result on one line (the evaluate command prints it)."""
        raise NotImplementedError


    # ---- generation from the command line (translate.py, sample.py) -----------------------------------------
    def translate_lines(self, model: nn.Module, lines: Sequence[str], opts: EvalOptions, device: torch.device,
                        where: str = "input", first_line: int = 1) -> list[str]:
        """Translations of raw source ``lines`` (one sentence each; ``where``/``first_line`` name them in
        errors), in order."""
        raise ConfigError(f"task {self.cfg.name!r} ({self.type}) does not translate; translate.py needs a "
                          "translation run (for a language model use sample.py)")

    def sample(self, model: nn.Module, prompt: str, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
               device: torch.device | str = "cpu", generator: torch.Generator | None = None) -> Iterator[str]:
        """Text sampled after ``prompt``, yielded piece by piece as it is generated."""
        raise ConfigError(f"task {self.cfg.name!r} ({self.type}) does not sample text; sample.py needs a language-"
                          "model run (for translation use translate.py)")


def safe_exp(x: float) -> float:
    return math.exp(x) if x < 700 else math.inf


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()}


TASKS: Registry[Task] = Registry("task type")


def task_class(task_raw: Mapping[str, Any] | TaskConfig) -> type[Task]:
    """The registered class of a task preset mapping (or typed config), by its ``type``."""
    kind = task_raw.type if isinstance(task_raw, TaskConfig) else task_raw.get("type")
    if not kind:
        raise ConfigError("task.type is missing; pick a task preset with task=<name> (see conf/task/)")
    return TASKS.get(kind)


def make_task_config(task_raw: Mapping[str, Any], data: Any) -> TaskConfig:
    """The typed, validated config of a task preset: its type's ``Config`` with ``data`` (a ``DataConfig``)."""
    cls = task_class(task_raw)
    params = {k: v for k, v in task_raw.items() if k != "data"}
    cfg = config_from_mapping(cls.Config, params, f"task {task_raw.get('name', '')!r} ({cls.type})")
    cfg.validate()
    cfg.data = data
    return cfg


def build_task(cfg: TaskConfig, data: PreparedData, label_smoothing: float = 0.0) -> Task:
    return task_class(cfg)(cfg, data, label_smoothing)
