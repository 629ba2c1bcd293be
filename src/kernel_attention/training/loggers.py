"""Experiment trackers by name: ``wandb`` (offline by default) and ``none``.

``none`` imports nothing of wandb. The wandb run lives in ``<run_dir>/wandb``; the run id is kept in the
checkpoint so a resumed job continues the same W&B run. Offline (the default) sends nothing over the network,
telemetry included (``kernel_attention.wandb_env``). No API key is ever written by this code: wandb reads
it from its own login or ``WANDB_API_KEY``, and we log only the resolved training config.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from kernel_attention.config import LoggerConfig
from kernel_attention.registry import Registry

log = logging.getLogger("kernel_attention.train")


class ExperimentLogger:
    Config = LoggerConfig

    def __init__(self, cfg: LoggerConfig, run_dir: Path, run_id: str, name: str, group: str, tags: list[str],
                 config: dict[str, Any]) -> None:
        self.cfg = cfg

    def log(self, metrics: dict[str, float], step: int) -> None:
        pass

    def summary(self, values: dict[str, Any]) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass


LOGGERS: Registry[ExperimentLogger] = Registry("logger")


@LOGGERS.register("none")
class NoLogger(ExperimentLogger):
    pass


@LOGGERS.register("wandb")
class WandbLogger(ExperimentLogger):
    def __init__(self, cfg: LoggerConfig, run_dir: Path, run_id: str, name: str, group: str, tags: list[str],
                 config: dict[str, Any]) -> None:
        super().__init__(cfg, run_dir, run_id, name, group, tags, config)
        from kernel_attention.wandb_env import prepare_wandb

        prepare_wandb(cfg.mode)  # before W&B starts: offline means no network at all (wandb_env.py)
        import wandb

        self._wandb = wandb
        self.run = wandb.init(
            project=cfg.project, entity=cfg.entity, mode=cfg.mode, dir=str(run_dir), id=run_id, resume="allow",
            name=name, group=group, tags=tags, config=config, job_type="train",
            # Our own progress bar and logs are the console output; wandb should neither capture nor echo it.
            settings=wandb.Settings(console="off", silent=True),
        )
        log.info("wandb: mode=%s project=%s run=%s dir=%s", cfg.mode, cfg.project, run_id, run_dir / "wandb")

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        for k, v in values.items():
            self.run.summary[k] = v

    def finish(self, exit_code: int = 0) -> None:
        self.run.finish(exit_code=exit_code)


def build_logger(cfg: LoggerConfig, **kwargs: Any) -> ExperimentLogger:
    return LOGGERS.get(cfg.name)(cfg, **kwargs)
