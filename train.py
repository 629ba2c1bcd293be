"""Train one Transformer with a given attention kernel on a given task.

    python train.py                                             # edp on Multi30k, transformer_small
    python train.py kernel=rbf task=iwslt model=transformer_iwslt_de_en trainer=paper
    python train.py task=tinyshakespeare model=lm_small optim=adam_cosine
    python train.py --cfg job                                   # show the resolved config

Run folders (one per job; each holds .hydra/config.yaml, train.log, checkpoints/, metrics.json, wandb/):
- single run: ``outputs/<task>/<model preset>/<kernel label or name>/seed<seed>``;
- sweep: ``outputs/sweeps/<sweep>/<overrides of the job>``, e.g. ``outputs/sweeps/kernels/kernel=rbf,seed=2``.
  No timestamp on purpose: relaunching the same command finds the same folders, skips completed (and diverged)
  jobs and resumes the others from ``checkpoints/last.pt``. Start a separate sweep with ``sweep=<name>``
  (also the W&B group); run-control overrides (logger.*, trainer.resume, trainer.max_wall_time, ...) do not
  change job folders.

    python train.py -m sweep=kernels kernel=edp,rbf,ei seed=1,2,3                 # one after another
    python train.py -m hydra/launcher=joblib hydra.launcher.n_jobs=3 ...         # local processes
    python train.py -m hydra/launcher=slurm hydra.launcher.partition=gpu ...     # SLURM via submitit
    torchrun --nproc_per_node=4 train.py kernel=rbf task=iwslt ...               # DDP (NCCL; gloo on CPU)

Resume: relaunch the same command (``trainer.resume=null``, the default), or ``trainer.resume=true`` to insist;
``trainer.resume=false`` refuses to touch a folder that already holds a run. SIGTERM / SIGUSR1 (SLURM
preemption, ``--signal=USR1@120``) finish the current update, write a checkpoint and exit 0; a non-finite loss
or gradient skips the update, and ``trainer.max_consecutive_skips`` of them in a row end the run with
``status: diverged`` (exit 0, so a sweep continues).

Hydra stays in this file: the composed config is converted at once into ``kernel_attention.config.TrainConfig``
(validated; a bad option is one line on stderr and exit code 2 before any work; ``HYDRA_FULL_ERROR=1`` for a
traceback) and handed to the library.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from kernel_attention.config import TrainConfig, register_schemas
from kernel_attention.registry import ConfigError

log = logging.getLogger("kernel_attention.train")

# `${ka.first:a,b}`: the first non-empty argument (run folders use the kernel's label, else its name).
OmegaConf.register_new_resolver("ka.first", lambda *xs: next((x for x in xs if x not in (None, "")), ""),
                                replace=True)


def _safe_dirname(name: str) -> str:
    """A sweep job's folder from its overrides: '/' can't be in a name; long ones keep a readable head + hash."""
    import hashlib

    safe = name.replace("/", "_").replace(os.sep, "_") or "default"
    if len(safe) <= 120:
        return safe
    return f"{safe[:100]}-{hashlib.sha1(name.encode()).hexdigest()[:10]}"


OmegaConf.register_new_resolver("ka.dirname", _safe_dirname, replace=True)
register_schemas()

# Set by a stop signal: the remaining jobs of an in-process sweep are not started.
_STOPPED = False


def _run_info(cfg: TrainConfig, multirun: bool) -> Any:
    from kernel_attention.training.loop import RunInfo

    label, task, preset = cfg.kernel_label, cfg.task.name, cfg.model.preset
    group = cfg.logger.group or (cfg.sweep if multirun else task)
    tags = [label, task, preset, f"seed{cfg.seed}", *cfg.logger.tags]
    return RunInfo(name=f"{label}-{task}-{preset}-s{cfg.seed}", group=group, tags=tags)


def _discard_empty_run_dir(run_dir: Path) -> None:
    """A rejected command leaves no trace: Hydra created the folder (and its parents) and an empty train.log."""
    log_file = run_dir / "train.log"
    if not (log_file.is_file() and log_file.stat().st_size == 0 and
            {p.name for p in run_dir.iterdir()} == {"train.log"}):
        return
    logging.shutdown()
    log_file.unlink()
    stop = Path.cwd().resolve()
    d = run_dir.resolve()
    while d != stop and stop in d.parents and not any(d.iterdir()):
        d.rmdir()
        d = d.parent


def _reject(run_dir: Path, e: Exception) -> NoReturn:
    """One line on stderr, exit code 2 (SystemExit passes through Hydra without its own error report)."""
    _discard_empty_run_dir(run_dir)
    if os.environ.get("KA_FULL_ERROR") == "1":
        raise e
    kind = "data error" if type(e).__name__ == "DataError" else "config error"
    print(f"{kind}: {_one_line(e)}", file=sys.stderr)
    sys.exit(2)


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(dcfg: DictConfig) -> str:
    global _STOPPED
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    from kernel_attention.data import DataError

    try:
        cfg = TrainConfig.from_dict(OmegaConf.to_container(dcfg, resolve=True))  # type: ignore[arg-type]
    except (ConfigError, DataError) as e:
        _reject(run_dir, e)
    if _STOPPED:
        log.warning("a stop signal was received earlier: not starting %s", run_dir)
        return "interrupted"
    from kernel_attention.training.loop import train

    multirun = hc.mode == RunMode.MULTIRUN
    record = {
        "config.yaml": OmegaConf.to_yaml(dcfg, resolve=True),
        "overrides.yaml": OmegaConf.to_yaml(list(hc.overrides.task)),
    }
    try:
        status = train(cfg, run_dir, _run_info(cfg, multirun), record)
    except (ConfigError, DataError) as e:
        _reject(run_dir, e)
    _STOPPED = status == "interrupted"
    return status


def _one_line(exc: BaseException) -> str:
    """Hydra/OmegaConf messages span several lines (full_key, object_type, ...): keep what names the fix."""
    parts: list[str] = []
    e: BaseException | None = exc
    while e is not None and len(parts) < 3:
        for line in str(e).splitlines():
            line = line.strip()
            if line and not line.startswith(("full_key", "object_type", "reference_type", "Set the environment")):
                parts.append(line)
        e = e.__cause__
    return " ".join(dict.fromkeys(parts)) or type(exc).__name__


def cli() -> int:
    """Entry point: bad configuration = one line on stderr and exit code 2 (HYDRA_FULL_ERROR=1: a traceback)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from kernel_attention.data import DataError

    user_wants_trace = os.environ.get("HYDRA_FULL_ERROR") == "1"
    if user_wants_trace:
        os.environ["KA_FULL_ERROR"] = "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises instead of printing; we print one line below
    try:
        main()
    except (ConfigError, DataError, HydraException, OmegaConfBaseException) as e:
        if user_wants_trace:
            raise
        kind = "data error" if isinstance(e, DataError) else "config error"
        print(f"{kind}: {_one_line(e)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
