"""Typed configuration of a training run (torchtitan-style: one dataclass per component).

Hydra stays in the entry points. ``train.py`` resolves its DictConfig to a plain dict and calls
``TrainConfig.from_dict``; library code only ever sees these dataclasses. Components are chosen by registry
name (``kernel.name``, ``task.type``, ``logger.name``, ``optim.schedule``), never by ``_target_``.

``OptimConfig``, ``TrainerConfig`` and ``LoggerConfig`` double as Hydra structured-config schemas
(``register_schemas``) so ``--cfg job`` shows them with defaults and Hydra type-checks their overrides.
The kernel, task and model groups are validated here instead (their options depend on the kernel / data /
model code), with one-line ``ConfigError``s that name the fix.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kernel_attention.registry import ConfigError, config_from_mapping

SCHEDULES = ("inverse_sqrt", "cosine", "constant")
PRECISIONS = ("auto", "fp32", "bf16")
LOGGERS = ("wandb", "none")
WANDB_MODES = ("offline", "online", "disabled")


def _env_flag(name: str, default: bool = True) -> bool:
    """A boolean setting's default from the environment: ``0``/``false``/``no``/``off`` = False."""
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() not in ("0", "false", "no", "off")


def _choice(what: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{what}={value!r} is not allowed; choose one of: {', '.join(allowed)}")


def _positive(what: str, value: float, *, zero_ok: bool = False) -> None:
    if value < 0 or (value == 0 and not zero_ok):
        raise ConfigError(f"{what}={value} must be {'>= 0' if zero_ok else '> 0'}")


@dataclass
class OptimConfig:
    """Adam(W) + learning-rate schedule + loss options (fairseq's IWSLT recipe by default)."""

    name: str = "adamw"
    lr: float = 5e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-8
    # Decoupled (AdamW) decay, applied to matrices only: biases, norms and embeddings' 1-d params are exempt.
    weight_decay: float = 1e-4
    # Gradient clipping by global L2 norm; 0 = off (the norm is still computed: it is the divergence check).
    clip_norm: float = 0.0
    schedule: str = "inverse_sqrt"
    warmup_updates: int = 4000
    warmup_init_lr: float = 1e-7
    # cosine only: the floor the schedule decays to at trainer.max_updates.
    min_lr: float = 0.0
    # Label-smoothed cross-entropy (Szegedy et al. 2016); padding never counts.
    label_smoothing: float = 0.1

    def validate(self) -> None:
        _choice("optim.name", self.name, ("adamw",))
        _choice("optim.schedule", self.schedule, SCHEDULES)
        _positive("optim.lr", self.lr)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optim.betas={list(self.betas)} must be two numbers in [0, 1), e.g. [0.9,0.98]")
        _positive("optim.eps", self.eps)
        _positive("optim.weight_decay", self.weight_decay, zero_ok=True)
        _positive("optim.clip_norm", self.clip_norm, zero_ok=True)
        _positive("optim.warmup_updates", self.warmup_updates, zero_ok=True)
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"optim.label_smoothing={self.label_smoothing} must be in [0, 1)")


@dataclass
class TrainerConfig:
    """How long, how often, on what, and what to keep."""

    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto = bf16 autocast on CUDA (if supported), fp32 elsewhere
    compile: bool = False  # torch.compile the model
    # Limits: whichever comes first; 0 = no limit (at least one must be set).
    max_updates: int = 20000
    max_epochs: int = 0
    max_wall_time: float = 0.0  # seconds
    validate_interval_updates: int = 1000
    # Write checkpoints/last.pt this often (0 = at each validation). Resume restarts from the last one.
    save_interval_updates: int = 0
    valid_max_batches: int = 0  # 0 = the whole valid split
    # Keep the last N interval checkpoints and average them into avg.pt at the end (fairseq IWSLT recipe).
    average_last: int = 5
    best_metric: str = "loss"  # which validation number picks best.pt: loss, or a task's own (bleu)
    patience: int = 0  # stop after this many validations without improvement; 0 = off
    # Divergence: skip an update whose loss or gradient is not finite; this many in a row = diverged.
    max_consecutive_skips: int = 5
    log_interval: int = 100
    progress_bar: bool = True
    # null = resume if the run folder has a checkpoint; true = must resume; false = must start fresh.
    resume: bool | None = None
    evaluate_at_end: bool = True
    # Which checkpoint the end-of-training evaluation scores: best | avg (fairseq's IWSLT recipe) | last.
    eval_checkpoint: str = "best"
    # CPU speed settings (same numbers up to rounding); the environment variables set their defaults.
    # torch.compile the tile bodies of the tiled attention path (attention/tile_scores.py, fused_tiles.py).
    compile_tiles: bool = field(default_factory=lambda: _env_flag("KA_COMPILE_TILES"))
    # Keep freed malloc memory mapped during CPU training (training/cpu_malloc.py).
    keep_freed_memory: bool = field(default_factory=lambda: _env_flag("KA_KEEP_FREED_MEMORY"))
    # The code version recorded in metrics.json when the checkout has no git history (a tarball, a CI copy);
    # null = ask git. Default: $KA_GIT_COMMIT.
    git_commit: str | None = field(default_factory=lambda: os.environ.get("KA_GIT_COMMIT") or None)

    def validate(self) -> None:
        _choice("trainer.eval_checkpoint", self.eval_checkpoint, ("best", "avg", "last"))
        if self.eval_checkpoint == "avg" and self.average_last < 2:
            raise ConfigError("trainer.eval_checkpoint=avg needs trainer.average_last >= 2 (checkpoints to average)")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"trainer.device={self.device!r} is not allowed; use auto, cpu, cuda or cuda:N")
        _choice("trainer.precision", self.precision, PRECISIONS)
        for key in ("max_updates", "max_epochs", "max_wall_time", "save_interval_updates", "valid_max_batches",
                    "average_last", "patience"):
            _positive(f"trainer.{key}", getattr(self, key), zero_ok=True)
        for key in ("validate_interval_updates", "log_interval", "max_consecutive_skips"):
            _positive(f"trainer.{key}", getattr(self, key))
        if not (self.max_updates or self.max_epochs or self.max_wall_time):
            raise ConfigError("training has no limit; set trainer.max_updates, trainer.max_epochs or "
                              "trainer.max_wall_time")


@dataclass
class LoggerConfig:
    """Experiment tracking. ``name=none`` imports nothing of wandb."""

    name: str = "wandb"
    project: str = "kernel-attention"
    entity: str | None = None
    mode: str = "offline"  # offline | online | disabled
    group: str = ""  # empty = the sweep name for multiruns, else the task name
    tags: list[str] = field(default_factory=list)

    def validate(self) -> None:
        _choice("logger.name", self.name, LOGGERS)
        _choice("logger.mode", self.mode, WANDB_MODES)


def _data_config(task_raw: Mapping[str, Any]) -> Any:
    """The data stage's typed config (``DataConfig.from_task`` validates it)."""
    from kernel_attention.data.config import DataConfig

    data = task_raw.get("data")
    if isinstance(data, DataConfig):
        return data
    return DataConfig.from_task(task_raw)


def _section(cls: type, params: Any, what: str) -> Any:
    if not isinstance(params, Mapping):
        raise ConfigError(f"{what} must be a mapping, got {type(params).__name__}")
    cfg = config_from_mapping(cls, params, what)
    cfg.validate()
    return cfg


@dataclass
class TrainConfig:
    """Everything a training run needs, validated. Built by ``from_dict`` from the resolved Hydra config."""

    kernel_name: str
    kernel: Any  # the kernel's typed Config (KernelConfig subclass)
    task: Any  # the task type's typed Config (kernel_attention.tasks.TaskConfig subclass)
    model: Any  # kernel_attention.models.ModelConfig
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    seed: int = 1
    sweep: str = "default"

    @property
    def kernel_label(self) -> str:
        return getattr(self.kernel, "label", "") or self.kernel_name

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> TrainConfig:
        """Validate a resolved config mapping (what ``conf/train.yaml`` composes). Raises ``ConfigError``."""
        from kernel_attention.kernels import KERNELS

        allowed = {"kernel", "task", "model", "optim", "trainer", "logger", "seed", "sweep"}
        unknown = sorted(set(raw) - allowed)
        if unknown:
            raise ConfigError(f"unknown top-level option(s) {', '.join(unknown)}; "
                              f"allowed: {', '.join(sorted(allowed))}")
        kernel_raw = dict(raw.get("kernel") or {})
        if "name" not in kernel_raw:
            raise ConfigError("kernel.name is missing; pick a kernel with kernel=<name> (see conf/kernel/)")
        kernel_name = kernel_raw["name"]
        kernel_cfg = KERNELS.make_config(kernel_name, kernel_raw)

        from kernel_attention.tasks import make_task_config, task_class

        task_raw = dict(raw.get("task") or {})
        data = _data_config(task_raw)
        task = make_task_config(task_raw, data)

        model = build_model_config(raw.get("model") or {})
        optim = _section(OptimConfig, raw.get("optim") or {}, "optim")
        trainer = _section(TrainerConfig, raw.get("trainer") or {}, "trainer")
        logger = _section(LoggerConfig, raw.get("logger") or {}, "logger")
        seed = raw.get("seed", 1)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ConfigError(f"seed={seed!r} must be an integer")
        sweep = str(raw.get("sweep", "default"))
        task_class(task).check(task, model, trainer)  # task × model × trainer: the task knows its rules
        if optim.schedule == "cosine" and not trainer.max_updates:
            raise ConfigError("optim.schedule=cosine needs trainer.max_updates > 0 (the schedule's length)")
        return cls(kernel_name=kernel_name, kernel=kernel_cfg, task=task, model=model, optim=optim,
                   trainer=trainer, logger=logger, seed=seed, sweep=sweep)

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-able form (stored in checkpoints; compared on resume)."""
        out = {
            "kernel": {"name": self.kernel_name, **_asdict(self.kernel)},
            "task": _asdict(self.task),
            "model": _asdict(self.model),
            "optim": _asdict(self.optim),
            "trainer": _asdict(self.trainer),
            "logger": _asdict(self.logger),
            "seed": self.seed,
            "sweep": self.sweep,
        }
        return out


def build_model_config(params: Mapping[str, Any]) -> Any:
    """The model's typed config (``kernel_attention.models.ModelConfig``), validated."""
    from kernel_attention.models import ModelConfig

    cfg = params if isinstance(params, ModelConfig) else config_from_mapping(ModelConfig, dict(params), "model")
    if cfg.heads <= 0 or cfg.d_model % cfg.heads:
        raise ConfigError(f"model.heads={cfg.heads} must divide model.d_model={cfg.d_model}; "
                          "change one of them (e.g. model.heads=4)")
    validate = getattr(cfg, "validate", None)
    if callable(validate):
        validate()
    return cfg


def _asdict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _asdict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {k: _asdict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_asdict(v) for v in obj]
    return obj


# Fields that may change between a run and its resumption: limits, logging, where things go. Anything else
# differing from the checkpoint's config is an error (it would silently mix two experiments in one folder).
RUN_CONTROL = (
    "trainer.resume", "trainer.max_updates", "trainer.max_epochs", "trainer.max_wall_time",
    "trainer.log_interval", "trainer.progress_bar", "trainer.evaluate_at_end", "trainer.eval_checkpoint",
    "trainer.compile", "trainer.compile_tiles", "trainer.keep_freed_memory", "trainer.git_commit",
    "trainer.device", "trainer.patience", "trainer.valid_max_batches", "logger", "sweep",
    "task.data.root", "task.data.out_root", "task.data.obtain", "task.data.spm_threads",
)


# The options of the single TaskConfig that preceded the task registry (see ``config_differences``).
LEGACY_TASK_OPTIONS = frozenset({"task.block_size", "task.valid_bleu_samples", "task.max_len_a", "task.max_len_b"})


def run_control_override_keys() -> list[str]:
    """Command-line override keys that must not name a sweep job's folder (``conf/train.yaml`` reads this list
    through the ``ka.run_control`` resolver): every run-control field — a whole group such as ``logger`` also
    with each of its fields — plus ``experiment`` (it chooses the sweep, not a job)."""
    keys = ["experiment"]
    for rc in RUN_CONTROL:
        keys.append(rc)
        if rc == "logger":
            keys += [f"logger.{f.name}" for f in dataclasses.fields(LoggerConfig)]
    return keys


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, Mapping):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: d}


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two ``to_dict`` configs, ignoring run-control fields."""
    a, b = _flatten(old), _flatten(new)

    def ignored(key: str) -> bool:
        return any(key == rc or key.startswith(rc + ".") for rc in RUN_CONTROL)

    def dropped(key: str) -> bool:
        # Before tasks had their own configs every task carried every task option: a checkpoint written then
        # holds the other type's options (an LM run's task.max_len_a), which never acted on that run.
        return key in LEGACY_TASK_OPTIONS and key in a and key not in b

    # An unset option (None) and a missing one are the same setting (records of runs resumed before metrics.json
    # kept null values lack them).
    return sorted(k for k in set(a) | set(b) if not ignored(k) and not dropped(k) and a.get(k) != b.get(k))


@dataclass
class TrainSchema:
    """The Hydra schema of ``conf/train.yaml`` (registered as ``train_schema``). Kernel, task and model stay
    untyped here because their options come from other packages; ``TrainConfig.from_dict`` checks them."""

    kernel: Any = field(default_factory=dict)
    task: Any = field(default_factory=dict)
    model: Any = field(default_factory=dict)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    seed: int = 1
    sweep: str = "default"


def register_schemas() -> None:
    """Store the schemas in Hydra's ConfigStore and the ``ka.run_control`` resolver that ``conf/train.yaml``
    reads (call before ``@hydra.main`` or ``hydra.compose`` composes)."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    ConfigStore.instance().store(name="train_schema", node=TrainSchema)
    OmegaConf.register_new_resolver("ka.run_control", run_control_override_keys, replace=True)
