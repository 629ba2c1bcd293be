"""The run folder: decide skip / resume / fresh start before any work, and record the config.

Rules (``trainer.resume``):
- a folder whose recorded run (metrics.json's ``config``, else ``checkpoints/last.pt``'s) differs from this config
  in anything but run-control fields (``config.RUN_CONTROL``) is refused, whatever its status: one folder, one
  experiment — a relaunch with a changed setting never silently skips, nor mixes two runs;
- a run whose metrics.json says ``completed`` or ``diverged`` is skipped (re-running would repeat it exactly);
  ``trainer.resume=true`` continues it anyway (e.g. after raising ``trainer.max_updates``);
- ``checkpoints/last.pt`` exists → resume from it (``null``/``true``); ``false`` refuses to touch the folder.
Nothing of an earlier run is overwritten before these checks pass. Sweep folders are named without the
run-control keys (``conf/train.yaml`` derives its exclusions from the same list), so a sweep relaunched with a
longer ``trainer.max_updates`` finds its runs and treats them as a single run would.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kernel_attention.config import TrainConfig, config_differences
from kernel_attention.registry import ConfigError
from kernel_attention.store import atomic, checkpoint
from kernel_attention.store.metrics import read_metrics


@dataclass
class RunPlan:
    action: str  # "fresh" | "resume" | "skip"
    reason: str = ""
    state: dict[str, Any] | None = None  # the loaded last.pt when resuming
    status: str = ""  # skip: the recorded status (completed | diverged)


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
    state = _load_last(last) if last.exists() else None
    recorded = metrics.get("config") or (state or {}).get("config")
    if recorded is not None:
        diff = config_differences(recorded, cfg.to_dict())
        if diff:
            shown = ", ".join(diff[:6]) + (", ..." if len(diff) > 6 else "")
            what = f"a {status} run" if status in ("completed", "diverged", "failed") else "a run"
            raise ConfigError(f"{run_dir} holds {what} with a different config ({shown}); use the same settings "
                              "to resume, or another folder via hydra.run.dir=... (or sweep=<new name>)")
    if status in ("completed", "diverged") and resume is not True:
        return RunPlan("skip", f"already {status}", status=status)
    if state is None:
        return RunPlan("fresh")
    return RunPlan("resume", f"from update {state['progress']['update']}", state)


def _load_last(last: Path) -> dict[str, Any]:
    """``last.pt`` memory-mapped: reading its config does not read the weights (they load on first use)."""
    try:
        return checkpoint.load(last, mmap=True)
    except Exception as e:  # a truncated file cannot happen (atomic writes) but a foreign one can
        problem = checkpoint.load_problem(e, last)
        raise ConfigError(f"cannot load {last} ({problem}); move it (or the whole run folder) away to start "
                          "fresh") from None


def record_config(run_dir: Path, files: dict[str, str]) -> None:
    """Write ``.hydra/<name>`` files (resolved config, overrides, hydra settings), atomically."""
    for name, text in files.items():
        atomic.write_text(run_dir / ".hydra" / name, text)


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete the temporaries of interrupted atomic writes (``.<name>.<random>.tmp``, see training/atomic.py) in
    the run folder and its subfolders; only the holder of the folder's lock may call this. Returns them."""
    stale = [p for p in run_dir.rglob(".*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
