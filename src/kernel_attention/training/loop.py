"""The training loop: one loop for every task (nanoGPT-flat; the task supplies data, model and loss).

``train(cfg, run_dir)`` returns the run's final status: ``completed``, ``diverged``, ``interrupted`` (a stop
signal: checkpoint written, relaunch to resume) or ``skipped`` (the folder already holds a finished run).
Any exception marks metrics.json ``failed`` and propagates.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kernel_attention.attention.tile_scores import set_compile_tiles
from kernel_attention.config import TrainConfig
from kernel_attention.data import PreparedData, ensure_prepared
from kernel_attention.kernels import draw_state_keys, kernel_properties
from kernel_attention.store import checkpoint
from kernel_attention.store.metrics import DELETE, environment, now_iso, read_metrics, update_metrics
from kernel_attention.tasks import Task, build_task
from kernel_attention.tasks.base import safe_exp, to_device
from kernel_attention.training import distributed
from kernel_attention.training.cpu_malloc import keep_freed_memory
from kernel_attention.training.lock import RunFolderLock
from kernel_attention.training.loggers import ExperimentLogger, build_logger
from kernel_attention.training.optim import LRSchedule, build_optimizer
from kernel_attention.training.progress import Progress, Throughput, format_train_line, format_valid_line
from kernel_attention.training.run_dir import plan_run, record_config, remove_stale_temporaries
from kernel_attention.training.signals import StopRequest

log = logging.getLogger("kernel_attention.train")


@dataclass
class RunInfo:
    """Identity of the run for trackers and metrics.json (train.py derives it from Hydra)."""

    name: str
    group: str
    tags: list[str] = field(default_factory=list)


@dataclass
class State:
    """Everything besides model/optimizer/RNG/sampler that a resumed run must continue from."""

    update: int = 0
    epoch: int = 1
    train_tokens: int = 0
    train_time_s: float = 0.0  # time spent in updates (tokens/s denominator)
    wall_time_s: float = 0.0  # total, over all launches
    skipped_updates: int = 0
    consecutive_skips: int = 0
    bad_validations: int = 0  # validations since the last improvement (early stopping)
    last_valid_update: int = -1
    best: dict[str, Any] = field(default_factory=dict)  # the history entry of the best checkpoint
    history: list[dict[str, Any]] = field(default_factory=list)
    wandb_id: str = ""


def pick_device(spec: str, local_rank: int) -> torch.device:
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        from kernel_attention.registry import ConfigError

        raise ConfigError(f"trainer.device={spec} but CUDA is not available; use trainer.device=auto or cpu")
    return torch.device(spec)


def autocast_factory(precision: str, device: torch.device) -> Callable[[], Any] | None:
    """bf16 autocast on CUDA (weights and optimizer stay fp32); None = full fp32."""
    bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())
    if not bf16:
        return None
    return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _quiet_non_main_ranks(info: distributed.DistInfo) -> None:
    """Ranks > 0 print warnings only and do not write train.log."""
    if info.is_main:
        return
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, logging.FileHandler):
            root.removeHandler(h)
    root.setLevel(logging.WARNING)


def batches(sampler: Any, state: State) -> Iterator[list[int]]:
    """Endless batch indices, epoch after epoch; ``state.epoch`` follows the sampler."""
    while True:
        if sampler.state_dict()["consumed"] >= len(sampler):  # resumed exactly at an epoch's end
            state.epoch += 1
            sampler.set_epoch(state.epoch)
        yield from sampler
        state.epoch += 1
        sampler.set_epoch(state.epoch)


def train(cfg: TrainConfig, run_dir: Path | str, run: RunInfo | None = None,
          record_files: dict[str, str] | None = None) -> str:
    """Train ``cfg`` in ``run_dir`` (created if needed). See the module docstring for the return value."""
    run_dir = Path(run_dir).resolve()
    run = run or RunInfo(name=run_dir.name, group=cfg.logger.group or cfg.task.name)
    device = pick_device(cfg.trainer.device, 0)
    info = distributed.init_distributed(device.type)
    if info.enabled and device.type == "cuda":
        device = torch.device(f"cuda:{info.local_rank}")
        torch.cuda.set_device(device)
    _quiet_non_main_ranks(info)
    if device.type == "cpu" and cfg.trainer.keep_freed_memory:
        keep_freed_memory()  # no page faults on every step's fresh activations (training/cpu_malloc.py)
    set_compile_tiles(cfg.trainer.compile_tiles)  # the tiled attention path's compiled bodies (recorded in config)

    lock = RunFolderLock(run_dir) if info.is_main else None  # one writer per folder (training/lock.py)
    if lock is not None:
        lock.acquire()  # raises RunFolderBusyError, naming the holder, before anything is read or written
        remove_stale_temporaries(run_dir)  # a kill -9 during a save leaves its .tmp; we hold the folder now
    try:
        return _train_locked(cfg, run_dir, run, device, info, record_files)
    finally:
        if lock is not None:
            lock.release()


def _train_locked(cfg: TrainConfig, run_dir: Path, run: RunInfo, device: torch.device, info: distributed.DistInfo,
                  record_files: dict[str, str] | None) -> str:
    plan = plan_run(cfg, run_dir)  # raises ConfigError before anything is written
    if plan.action == "skip":
        log.info("%s: %s, skipping (trainer.resume=true continues it)", run_dir, plan.reason)
        if info.is_main and plan.status == "completed":  # a diverged run has nothing to score
            _maybe_evaluate(cfg, run_dir, only_if_missing=True)
        return "skipped"
    earlier = bool(read_metrics(run_dir))  # a relaunch: its record must survive a launch that fails to start
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not earlier:
            record_config(run_dir, record_files or {})

    trainer: Trainer | None = None
    exit_code = 1
    try:
        trainer = Trainer(cfg, run_dir, run, device, info, plan.state)  # data and model; then the record starts
        if info.is_main and earlier:
            record_config(run_dir, record_files or {})  # this launch runs: its resolved config is the record now
        status = trainer.fit()
        exit_code = 0
    except BaseException as e:
        if info.is_main and (trainer is not None or not earlier):
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            update_metrics(run_dir, {"status": "failed", "status_reason": reason})
            log.error("training failed at update %d: %s", trainer.state.update if trainer else 0, reason)
            log.debug("%s", traceback.format_exc())
        raise
    finally:
        if trainer is not None:
            trainer.close(exit_code)
        distributed.shutdown()
    if status == "completed" and info.is_main:
        _maybe_evaluate(cfg, run_dir)
    return status


def _maybe_evaluate(cfg: TrainConfig, run_dir: Path, only_if_missing: bool = False) -> None:
    """Score ``trainer.eval_checkpoint`` on the test split (``evaluate_run``) when trainer.evaluate_at_end."""
    if not cfg.trainer.evaluate_at_end or (only_if_missing and "test" in read_metrics(run_dir)):
        return
    from kernel_attention.evaluation.evaluate import evaluate_run

    log.info("evaluating %s (checkpoint %s)", run_dir, cfg.trainer.eval_checkpoint)
    evaluate_run(run_dir, checkpoint=cfg.trainer.eval_checkpoint)


class Trainer:
    """Holds the run's objects; ``fit`` is the loop. Split out of ``train`` only so ``close`` always runs."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, run: RunInfo, device: torch.device,
                 info: distributed.DistInfo, resume_state: dict[str, Any] | None) -> None:
        self.cfg, self.run_dir, self.run, self.device, self.info = cfg, run_dir, run, device, info
        self.ckpt_dir = run_dir / checkpoint.CKPT_DIR
        self.state = State()
        self.tracker: ExperimentLogger | None = None
        self.progress: Progress | None = None
        self.t_launch = time.perf_counter()
        tc = cfg.trainer

        seed_everything(cfg.seed)
        # Rank 0 prepares the data (if not prepared yet) while the others wait: one writer, then all read.
        if info.is_main:
            folder = ensure_prepared(cfg.task.data)
        distributed.barrier(info)
        if not info.is_main:
            folder = ensure_prepared(cfg.task.data)
        self.data = PreparedData(folder)
        self.task: Task = build_task(cfg.task, self.data, cfg.optim.label_smoothing)
        self.raw_model: nn.Module = self.task.build_model(cfg.model, cfg.kernel_name, cfg.kernel).to(device)
        self.n_params = int(self.raw_model.num_parameters())
        self.optimizer = build_optimizer(self.raw_model, cfg.optim, device)
        self.schedule = LRSchedule(cfg.optim, tc.max_updates)
        self.sampler = self.task.train_sampler(cfg.seed, info.world_size, info.rank)
        self.autocast = autocast_factory(tc.precision, device)

        if resume_state is not None:
            self._load(resume_state)
        else:
            self.state.wandb_id = uuid.uuid4().hex[:12]  # os.urandom: does not touch the seeded RNGs
            self.sampler.set_epoch(self.state.epoch)

        model: nn.Module = self.raw_model
        if info.enabled:
            ids = [device.index] if device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        if tc.compile:
            model = torch.compile(model)
        self.model = model

        # From the model's own kernels: building one here would draw from the (restored) global RNG.
        self.kernel_props = kernel_properties(self.raw_model).to_json()
        if info.is_main:
            self._start_record(resume_state is not None)

    # ---- bookkeeping ------------------------------------------------------------------------------------
    def _start_record(self, resumed: bool) -> None:
        cfg, st = self.cfg, self.state
        log.info("run %s in %s (%s)", self.run.name, self.run_dir,
                 f"resumed at update {st.update}" if resumed else "fresh start")
        log.info("model %s: %s parameters | kernel %s (feature_dim %s) | task %s (%s), vocab %d | device %s%s",
                 cfg.model.preset, f"{self.n_params:,}", cfg.kernel_label, self.kernel_props["feature_dim"],
                 cfg.task.name, cfg.task.type, self.data.vocab.size, self.device,
                 f" x{self.info.world_size}" if self.info.enabled else "")
        kparams = {k: v for k, v in asdict(cfg.kernel).items() if k != "label"}
        started = read_metrics(self.run_dir).get("run", {}).get("started_at") or now_iso()
        update_metrics(self.run_dir, {
            "status": "running", "status_reason": DELETE,
            "run": {"name": self.run.name, "group": self.run.group, "dir": str(self.run_dir), "started_at": started},
            "kernel": {"name": cfg.kernel_name, "label": cfg.kernel_label, "params": kparams,
                       "properties": self.kernel_props},
            "task": {"name": cfg.task.name, **type(self.task).record(cfg.task)},
            "seed": cfg.seed,
            "config": cfg.to_dict(),
            "model": {"preset": cfg.model.preset, "params": self.n_params, "d_model": cfg.model.d_model,
                      "heads": cfg.model.heads, "head_dim": cfg.model.d_model // cfg.model.heads},
            "env": environment(self.device, cfg.trainer.git_commit),
        })
        self._write_progress()
        self.tracker = build_logger(
            cfg.logger, run_dir=self.run_dir, run_id=self.state.wandb_id, name=self.run.name,
            group=self.run.group, tags=self.run.tags, config=cfg.to_dict())

    def _write_progress(self, **extra: Any) -> None:
        st = self.state
        best = st.best
        valid: dict[str, Any] = {"history": st.history}
        if best:
            valid.update({f"best_{k}": v for k, v in best.items() if k != "update"})
            valid["best_update"] = best["update"]
        update_metrics(self.run_dir, {
            "train": {"updates": st.update, "epochs": round(self._epochs(), 4), "train_tokens": st.train_tokens,
                      "tokens_per_s": round(st.train_tokens / st.train_time_s, 1) if st.train_time_s else 0.0,
                      "wall_time_s": round(self._wall(), 1), "skipped_updates": st.skipped_updates},
            "valid": valid, **extra})

    def _epochs(self) -> float:
        n = len(self.sampler)
        return self.state.epoch - 1 + (self.sampler.state_dict()["consumed"] / n if n else 0.0)

    def _wall(self) -> float:
        return self.state.wall_time_s + time.perf_counter() - self.t_launch

    # ---- checkpoints ------------------------------------------------------------------------------------
    def _checkpoint_state(self) -> dict[str, Any]:
        st = asdict(self.state)
        st["wall_time_s"] = self._wall()
        return {
            "model": self.raw_model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "progress": st,
            "sampler": self.sampler.state_dict(),
            "rng": checkpoint.rng_state(),
            "config": self.cfg.to_dict(),
            "meta": {"kernel": self.cfg.kernel_name, "label": self.cfg.kernel_label, "task": self.cfg.task.name,
                     "type": self.cfg.task.type, "vocab_size": self.data.vocab.size, "data": str(self.data.path)},
        }

    def _save(self, best: bool = False, interval: bool = False) -> None:
        if not self.info.is_main:
            return
        state = self._checkpoint_state()
        checkpoint.save(self.ckpt_dir / "last.pt", state)
        meta = {"config": state["config"], "meta": state["meta"], "update": self.state.update}
        if best:
            checkpoint.save(self.ckpt_dir / "best.pt", {"model": state["model"], **meta})
        if interval:
            checkpoint.save_interval(self.ckpt_dir, self.state.update, state["model"], meta,
                                     keep=self.cfg.trainer.average_last)
        self._write_progress()

    def _load(self, ckpt: dict[str, Any]) -> None:
        self.raw_model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.state = State(**ckpt["progress"])
        self.sampler.load_state_dict(ckpt["sampler"])
        checkpoint.set_rng_state(ckpt["rng"])

    def _average(self) -> None:
        paths = checkpoint.interval_checkpoints(self.ckpt_dir)
        if not self.info.is_main or not paths or self.cfg.trainer.average_last < 2:
            return
        paths = paths[-self.cfg.trainer.average_last :]
        avg = checkpoint.average_checkpoints(paths, keep_newest=draw_state_keys(self.raw_model))
        meta = checkpoint.load(paths[-1])
        checkpoint.save(self.ckpt_dir / "avg.pt", {**meta, "model": avg,
                                                   "averaged": [p.name for p in paths]})
        log.info("averaged the last %d checkpoint(s) (%s) into %s", len(paths), ", ".join(p.name for p in paths),
                 self.ckpt_dir / "avg.pt")

    # ---- validation -------------------------------------------------------------------------------------
    def validate(self) -> bool:
        """Validation loss/ppl (+ task extras); returns True if this is the best so far."""
        cfg, st = self.cfg, self.state
        self.model.eval()
        total, count = self.task.valid_loss(self.raw_model, self.device, num_replicas=self.info.world_size,
                                            rank=self.info.rank, max_batches=cfg.trainer.valid_max_batches,
                                            autocast=self.autocast)
        total, count = distributed.all_reduce_sum([total, float(count)], self.info, self.device)
        loss = total / max(count, 1.0)
        entry: dict[str, Any] = {"update": st.update, "loss": round(loss, 5), "ppl": round(safe_exp(loss), 4)}
        entry.update({k: round(v, 5) for k, v in self.task.valid_from_loss(loss).items()})
        if self.info.is_main:
            entry.update({k: round(v, 4) for k, v in
                          self.task.valid_metrics(self.raw_model, self.device, self.autocast).items()})
        distributed.barrier(self.info)
        self.model.train()
        key = cfg.trainer.best_metric
        better = not st.best or self.task.is_better(key, entry[key], st.best[key])
        st.history.append(entry)
        st.last_valid_update = st.update
        if better:
            st.best, st.bad_validations = dict(entry), 0
        else:
            st.bad_validations += 1
        if self.info.is_main:
            log.info(format_valid_line(entry, better))
            if self.tracker:
                self.tracker.log({f"valid/{k}": v for k, v in entry.items() if k != "update"}, step=st.update)
        return better

    # ---- one update -------------------------------------------------------------------------------------
    def _step(self, batch_iter: Iterator[list[int]]) -> tuple[bool, dict[str, float]]:
        """Forward/backward over update_freq micro-batches, then the optimizer step (or a skip)."""
        cfg, st = self.cfg, self.state
        n_micro = cfg.task.update_freq
        logs, sample_size = [], 0
        for i in range(n_micro):
            batch = to_device(self.task.train_batch(next(batch_iter)), self.device)
            # Gradients are all-reduced only on the last micro-batch of the update.
            sync = (self.model.no_sync() if self.info.enabled and i < n_micro - 1
                    else contextlib.nullcontext())
            with sync:
                with self.autocast() if self.autocast else contextlib.nullcontext():
                    loss, n, out = self.task.loss(self.model, batch)
                loss.backward()
            logs.append(out)
            sample_size += n
        red = self.task.reduce_metrics(logs)
        # Sum over ranks: loss and token counts, so every rank takes the same decision below.
        tot_loss, tot_nll, tot_tok = distributed.all_reduce_sum(
            [red["loss"] * red["ntokens"], red["nll_loss"] * red["ntokens"], float(sample_size)],
            self.info, self.device)
        params = [p for p in self.raw_model.parameters() if p.grad is not None]
        # DDP averaged gradients over ranks; rescale so the update is (sum of token losses) / (all tokens).
        torch._foreach_mul_([p.grad for p in params], self.info.world_size / max(tot_tok, 1.0))
        clip = self.cfg.optim.clip_norm or math.inf
        gnorm = float(torch.nn.utils.clip_grad_norm_(params, clip))
        stats = {"loss": tot_loss / max(tot_tok, 1.0), "nll_loss": tot_nll / max(tot_tok, 1.0),
                 "ntokens": tot_tok, "gnorm": gnorm}
        if not (math.isfinite(stats["loss"]) and math.isfinite(gnorm)):
            self.optimizer.zero_grad(set_to_none=True)
            st.skipped_updates += 1
            st.consecutive_skips += 1
            log.warning("update %d skipped: non-finite %s (%d in a row, %d in total)", st.update + 1,
                        "loss" if not math.isfinite(stats["loss"]) else "gradient", st.consecutive_skips,
                        st.skipped_updates)
            return False, stats
        stats["lr"] = self.schedule.apply(self.optimizer, st.update + 1)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        st.update += 1
        st.consecutive_skips = 0
        st.train_tokens += int(tot_tok)
        return True, stats

    # ---- the loop ---------------------------------------------------------------------------------------
    def _stop_reason(self) -> str:
        tc, st = self.cfg.trainer, self.state
        if tc.max_updates and st.update >= tc.max_updates:
            return f"reached trainer.max_updates={tc.max_updates}"
        if tc.max_epochs and st.epoch > tc.max_epochs:
            return f"reached trainer.max_epochs={tc.max_epochs}"
        if tc.max_wall_time and self._wall() >= tc.max_wall_time:
            return f"reached trainer.max_wall_time={tc.max_wall_time:g}s"
        if tc.patience and st.bad_validations >= tc.patience:
            return f"early stop: no improvement in {tc.patience} validations (trainer.patience)"
        return ""

    def fit(self) -> str:
        tc, st = self.cfg.trainer, self.state
        self.model.train()
        batch_iter = batches(self.sampler, st)
        meter = Throughput()
        self.progress = Progress(tc.max_updates, st.update, tc.progress_bar and self.info.is_main)
        interval: list[dict[str, float]] = []
        t_interval, u_interval = time.perf_counter(), st.update
        save_every = tc.save_interval_updates
        with StopRequest() as stop, self.progress.redirect_logging():
            while not (reason := self._stop_reason()):
                t0 = time.perf_counter()
                ok, stats = self._step(batch_iter)
                dt = time.perf_counter() - t0
                meter.add(dt, int(stats["ntokens"]) if ok else 0)
                st.train_time_s += dt
                if not ok:
                    if st.consecutive_skips >= tc.max_consecutive_skips:
                        return self._diverged()
                    continue
                interval.append(stats)
                self.progress.update(1, {"loss": f"{stats['loss']:.3f}", "lr": f"{stats['lr']:.2e}",
                                         "tok/s": f"{meter.overall_rate():.0f}"})
                if st.update % tc.log_interval == 0:
                    self._log_interval(interval, meter, t_interval, u_interval)
                    interval, t_interval, u_interval = [], time.perf_counter(), st.update
                validated = st.update % tc.validate_interval_updates == 0
                if validated:
                    best = self.validate()
                    self._save(best=best, interval=True)
                elif save_every and st.update % save_every == 0:
                    self._save()
                if distributed.broadcast_flag(stop.requested, self.info, self.device):
                    self._save()
                    msg = (f"stopped by {stop.name or 'a signal'} at update {st.update}; checkpoint saved, "
                           "relaunch the same command to resume")
                    log.warning(msg)
                    if self.info.is_main:
                        self._write_progress(status_reason=msg)
                    return "interrupted"
        log.info("training finished: %s", reason)
        if st.last_valid_update != st.update:
            best = self.validate()
            self._save(best=best, interval=True)
        else:
            self._save()
        self._average()
        if self.info.is_main:
            self._write_progress(status="completed", status_reason=reason)
            if self.tracker:
                self.tracker.summary({"best_" + k: v for k, v in st.best.items()})
        log.info("done: %d updates, %.0f tokens/s, best: %s", st.update,
                 st.train_tokens / st.train_time_s if st.train_time_s else 0.0,
                 format_valid_line(st.best, False) if st.best else "-")
        return "completed"

    def _log_interval(self, interval: list[dict[str, float]], meter: Throughput, t0: float, u0: int) -> None:
        st, tc = self.state, self.cfg.trainer
        ntok = sum(s["ntokens"] for s in interval)
        loss = sum(s["loss"] * s["ntokens"] for s in interval) / max(ntok, 1)
        nll = sum(s["nll_loss"] * s["ntokens"] for s in interval) / max(ntok, 1)
        rate = meter.interval_rate()
        ups = (st.update - u0) / max(time.perf_counter() - t0, 1e-9)
        eta = (tc.max_updates - st.update) / ups if tc.max_updates and ups > 0 else math.inf
        line = {"update": st.update, "max_updates": tc.max_updates, "epoch": st.epoch, "loss": loss,
                "ppl": safe_exp(nll), "lr": interval[-1]["lr"], "gnorm": interval[-1]["gnorm"],
                "tokens_per_s": rate, "skipped": st.skipped_updates, "wall": self._wall(), "eta": eta}
        if self.info.is_main:
            log.info(format_train_line(line))
            if self.tracker:
                self.tracker.log({"train/loss": loss, "train/nll_loss": nll, "train/ppl": line["ppl"],
                                  "train/lr": line["lr"], "train/gnorm": line["gnorm"], "train/tokens_per_s": rate,
                                  "train/epoch": self._epochs()}, step=st.update)

    def _diverged(self) -> str:
        st, tc = self.state, self.cfg.trainer
        msg = (f"diverged: {st.consecutive_skips} consecutive updates with non-finite loss/gradient after update "
               f"{st.update} ({st.skipped_updates} skipped in total, trainer.max_consecutive_skips="
               f"{tc.max_consecutive_skips}); lower optim.lr or set optim.clip_norm")
        log.error(msg)
        if self.info.is_main:
            self._write_progress(status="diverged", status_reason=msg)
        return "diverged"

    def close(self, exit_code: int = 0) -> None:
        if self.progress is not None:
            self.progress.close()
        if self.tracker is not None:
            # Always finish: under a multirun every job must be its own W&B run.
            self.tracker.finish(exit_code=exit_code)
            self.tracker = None
