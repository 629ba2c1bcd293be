"""Train one Transformer with a given attention kernel on a given task.

    python train.py                                             # edp on Multi30k, transformer_small
    python train.py kernel=rbf task=iwslt model=transformer_iwslt_de_en trainer=paper
    python train.py task=tinyshakespeare optim=adam_cosine                     # LM tasks default to lm_small
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

import contextlib
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
register_schemas()  # also ka.run_control: sweep folders are named without the run-control keys

# Set by a stop signal: the remaining jobs of an in-process sweep are not started.
_STOPPED = False
# Where sweep jobs that fail on their own leave a line for the launching process (set by ``cli``).
FAILED_JOBS_ENV = "KA_FAILED_JOBS_DIR"


def _run_info(cfg: TrainConfig, multirun: bool) -> Any:
    from kernel_attention.training.loop import RunInfo

    label, task, preset = cfg.kernel_label, cfg.task.name, cfg.model.preset
    group = cfg.logger.group or (cfg.sweep if multirun else task)
    tags = [label, task, preset, f"seed{cfg.seed}", *cfg.logger.tags]
    return RunInfo(name=f"{label}-{task}-{preset}-s{cfg.seed}", group=group, tags=tags)


def _discard_empty_run_dir(run_dir: Path) -> None:
    """A rejected command leaves no trace: Hydra created the folder (and its parents) and an empty train.log."""
    log_file = run_dir / "train.log"
    names = {p.name for p in run_dir.iterdir()} if run_dir.is_dir() else set()
    if not (log_file.is_file() and names <= {"train.log", ".lock"} and
            all((run_dir / n).stat().st_size == 0 for n in names)):
        return
    from kernel_attention.training.lock import RunFolderLock

    logging.shutdown()
    lock = RunFolderLock(run_dir)
    if not lock.try_acquire():  # another launch just took the folder: it is theirs now
        return
    try:  # unlink while holding the lock: no process can be left locking a file that no longer has a name
        for n in names | {".lock"}:
            (run_dir / n).unlink(missing_ok=True)
    finally:
        lock.release()
    stop = Path.cwd().resolve()
    d = run_dir.resolve()
    while d != stop and stop in d.parents and not any(d.iterdir()):
        d.rmdir()
        d = d.parent


def _reject(run_dir: Path, e: Exception) -> NoReturn:
    """One line on stderr and the error's exit code (SystemExit passes through Hydra without its own report)."""
    from kernel_attention import cli

    _discard_empty_run_dir(run_dir)
    sys.exit(cli.report("train", e))


def _job_error(run_dir: Path, dcfg: DictConfig, e: BaseException, *, multirun: bool, invalid_config: bool) -> str:
    """Where every error of a job goes. A bug (or ``KA_FULL_ERROR=1``) keeps its traceback; a user error is one
    line — a single run exits with its kind's code, a sweep job fails alone (``_job_failed``) and the sweep goes on."""
    from kernel_attention import cli

    if cli.error_kind(e) is None or cli.wants_traceback():
        raise e
    if multirun:
        return _job_failed(run_dir, dcfg, e, record=invalid_config)
    _reject(run_dir, e)


def _task_record(task: dict) -> dict:
    """The task facts of a failure record (from the raw task mapping): the type and, for a registered one, its
    metric and direction."""
    from kernel_attention.tasks import TASKS

    task_type = task.get("type")
    if isinstance(task_type, str) and task_type in TASKS:
        return TASKS.get(task_type).record(task)
    return {"type": task_type}


def _job_failed(run_dir: Path, dcfg: DictConfig, e: BaseException, *, record: bool) -> str:
    """A sweep job that cannot run ends alone: one line; with ``record`` (its config is invalid) ``failed`` and its
    reason go into its folder — only while holding the folder's lock and only where no earlier run left a record —
    and the launching process is told, so the sweep exits non-zero at the end."""
    from kernel_attention import cli
    from kernel_attention.store.metrics import now_iso, read_metrics, update_metrics
    from kernel_attention.training.lock import RunFolderLock

    kind = cli.error_kind(e) or "config"
    reason = f"{kind} error: {cli.one_line(e)}"
    print(f"train: {run_dir.name}: {reason}", file=sys.stderr)
    lock = RunFolderLock(run_dir)
    if record and run_dir.is_dir() and lock.try_acquire():
        try:
            if not read_metrics(run_dir):
                raw = OmegaConf.to_container(dcfg, resolve=False)
                kernel, task = raw.get("kernel") or {}, raw.get("task") or {}
                update_metrics(run_dir, {
                    "status": "failed", "status_reason": reason,
                    "run": {"name": run_dir.name, "dir": str(run_dir), "started_at": now_iso()},
                    "kernel": {"name": kernel.get("name"), "label": kernel.get("label") or kernel.get("name"),
                               "params": {k: v for k, v in kernel.items() if k not in ("name", "label", "path")}},
                    "task": {"name": task.get("name"), **_task_record(task)},
                    "seed": raw.get("seed"),
                })
        finally:
            lock.release()
    failed_dir = os.environ.get(FAILED_JOBS_ENV)
    if failed_dir:
        with contextlib.suppress(OSError):  # the launching host's folder: a job on another host cannot reach it
            (Path(failed_dir) / f"{os.getpid()}-{abs(hash(str(run_dir)))}").write_text(f"{kind}\t{run_dir}: {reason}\n")
    return "failed"


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(dcfg: DictConfig) -> str:
    global _STOPPED
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        cfg = TrainConfig.from_dict(OmegaConf.to_container(dcfg, resolve=True))  # type: ignore[arg-type]
    except Exception as e:  # this job's config is invalid (or cannot even be resolved)
        return _job_error(run_dir, dcfg, e, multirun=multirun, invalid_config=True)
    if _STOPPED:
        log.warning("a stop signal was received earlier: not starting %s", run_dir)
        return "interrupted"
    from kernel_attention.training.loop import train

    record = {
        "config.yaml": OmegaConf.to_yaml(dcfg, resolve=True),
        "overrides.yaml": OmegaConf.to_yaml(list(hc.overrides.task)),
    }
    try:
        status = train(cfg, run_dir, _run_info(cfg, multirun), record)
    except Exception as e:  # e.g. the folder holds another run or process: its record is left alone
        return _job_error(run_dir, dcfg, e, multirun=multirun, invalid_config=False)
    _STOPPED = status == "interrupted"
    return status


def _swept_run_control(argv: list[str]) -> list[str]:
    """Run-control keys (``config.RUN_CONTROL``) that a multirun command line sweeps (a list, range or glob)."""
    if not any(a in ("-m", "--multirun") for a in argv):
        return []
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from kernel_attention.config import run_control_override_keys

    excluded = set(run_control_override_keys())
    swept = []
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        try:
            override = OverridesParser.create().parse_overrides([arg])[0]
        except Exception:  # Hydra reports a malformed override itself, on the usual path
            continue
        if override.is_sweep_override() and override.key_or_group in excluded:
            swept.append(override.key_or_group)
    return swept


def cli() -> int:
    """Entry point: a bad configuration is one line on stderr and exit code 2 before any work (the shared error
    path of ``kernel_attention.cli``: ``KA_FULL_ERROR=1`` or ``HYDRA_FULL_ERROR=1`` for a traceback); a sweep
    whose jobs failed on their own runs the rest and exits at the end with their kind's code, naming them. A sweep
    over a run-control setting is refused: its values would share one job folder."""
    import tempfile

    from kernel_attention import cli as shared

    refused = _swept_run_control(sys.argv[1:])
    if refused:
        print(f"train: config error: the sweep varies {', '.join(refused)}, a run-control setting that does not name "
              "job folders, so its values would share one folder (and skip each other); run one sweep per value "
              "with sweep=<name>, or change it in a relaunch", file=sys.stderr)
        return shared.EXIT_CODES["config"]
    with tempfile.TemporaryDirectory(prefix="ka-failed-jobs-") as failed_dir:
        os.environ[FAILED_JOBS_ENV] = failed_dir  # sweep jobs (in-process or launcher workers) report here
        code = shared.run_hydra("train", main)
        failed = sorted(p.read_text().strip().split("\t", 1) for p in Path(failed_dir).iterdir())
    if failed and code == 0:
        kinds = sorted({kind for kind, _ in failed})
        print(f"train: {len(failed)} job(s) of the sweep failed: " + "; ".join(line for _, line in failed),
              file=sys.stderr)
        # One kind: its code; several: the lowest (config errors first), as every failed job was reported above.
        return min(shared.EXIT_CODES.get(k, 2) for k in kinds)
    return code


if __name__ == "__main__":
    sys.exit(cli())
