"""The run folder: decide skip / resume / fresh start before any work, and record the config.

Rules (``trainer.resume``):
- a run whose metrics.json says ``completed`` or ``diverged`` is skipped (re-running would repeat it exactly);
  ``trainer.resume=true`` continues it anyway (e.g. after raising ``trainer.max_updates``);
- ``checkpoints/last.pt`` exists → resume from it (``null``/``true``); ``false`` refuses to touch the folder;
- a checkpoint whose config differs from this one in anything but run-control fields is refused: one folder,
  one experiment. Nothing of an earlier run is overwritten before these checks pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kernel_attention.config import TrainConfig, config_differences
from kernel_attention.registry import ConfigError
from kernel_attention.training import atomic, checkpoint
from kernel_attention.training.metrics import read_metrics


@dataclass
class RunPlan:
    action: str  # "fresh" | "resume" | "skip"
    reason: str = ""
    state: dict[str, Any] | None = None  # the loaded last.pt when resuming


def last_checkpoint(run_dir: Path) -> Path:
    return run_dir / checkpoint.CKPT_DIR / "last.pt"


def plan_run(cfg: TrainConfig, run_dir: Path) -> RunPlan:
    """What to do with ``run_dir``; raises ``ConfigError`` (one line) when the folder and config disagree."""
    resume = cfg.trainer.resume
    metrics = read_metrics(run_dir)
    last = last_checkpoint(run_dir)
    status = metrics.get("status")
    if resume is False and (last.exists() or metrics):
        raise ConfigError(f"{run_dir} already holds a run (trainer.resume=false refuses to overwrite it); "
                          "pick another folder with hydra.run.dir=... or delete that one")
    if resume is True and not last.exists():
        raise ConfigError(f"trainer.resume=true but {last} does not exist; drop trainer.resume to start fresh")
    if status in ("completed", "diverged") and resume is not True:
        return RunPlan("skip", f"already {status}")
    if not last.exists():
        return RunPlan("fresh")
    try:
        state = checkpoint.load(last)
    except Exception as e:  # a truncated file cannot happen (atomic writes) but a foreign one can
        raise ConfigError(f"cannot load {last} ({type(e).__name__}: {e}); move it away to start fresh") from e
    diff = config_differences(state.get("config", {}), cfg.to_dict())
    if diff:
        shown = ", ".join(diff[:6]) + (", ..." if len(diff) > 6 else "")
        raise ConfigError(f"{run_dir} holds a run with a different config ({shown}); use the same settings to "
                          "resume, or another folder via hydra.run.dir=... (or sweep=<new name>)")
    return RunPlan("resume", f"from update {state['progress']['update']}", state)


def record_config(run_dir: Path, files: dict[str, str]) -> None:
    """Write ``.hydra/<name>`` files (resolved config, overrides, hydra settings), atomically."""
    for name, text in files.items():
        atomic.write_text(run_dir / ".hydra" / name, text)
