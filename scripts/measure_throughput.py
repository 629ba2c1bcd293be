#!/usr/bin/env python
"""Training throughput of every kernel of a sweep, measured under the same conditions, into each run folder.

    OMP_NUM_THREADS=1 python scripts/measure_throughput.py outputs/sweeps/kernels_mt       # after the sweep
    OMP_NUM_THREADS=1 python scripts/measure_throughput.py outputs/sweeps/feature_dim outputs/sweeps/kernels_lm
    python scripts/measure_throughput.py outputs/sweeps/kernels_mt --rounds 7 --steps 6 --threads 2

The tokens/s a run logs while it trains depends on what else the machine ran meanwhile (other sweep jobs, tests),
so it cannot rank kernels by speed. This script measures them again, alike: one model per kernel configuration
of the sweep (built from a finished run's own resolved config, so the same architecture, kernel, path, task loss
and optimizer as in training), all stepping through the SAME training batches (the task's own sampler, seed 0),
each step a full training update (task loss, backward, gradient clipping, optimizer step). The timing interleaves
the kernels: ``--rounds`` rounds, each timing ``--steps`` updates of every kernel in turn after one untimed warm-up
update per round, so a load change hits all kernels alike; the figure is the median over rounds of target tokens
per second. Weights are freshly initialised (speed does not depend on their values).

Each finished run folder (all seeds of a configuration) gets ``throughput.json`` (docs/contracts.md §3), written
atomically under the run folder's lock (a folder a live trainer holds is skipped and named); the report plots the
metric against it. Conditions are recorded in the file: threads, device, batches, steps, rounds, machine load.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import yaml

from kernel_attention import cli
from kernel_attention.benchmarks import machine_info
from kernel_attention.config import TrainConfig
from kernel_attention.data import PreparedData, ensure_prepared
from kernel_attention.report import ReportError
from kernel_attention.store import atomic
from kernel_attention.store.files import THROUGHPUT_FILE
from kernel_attention.tasks import build_task
from kernel_attention.training.lock import RunFolderLock
from kernel_attention.training.optim import build_optimizer

FINISHED = ("completed", "diverged")  # a failed run may not have built at all


def _no_nulls(x: Any) -> Any:
    # A null option and a missing one are the same setting (records of runs resumed before metrics.json kept
    # nulls lack them), so they must not split one kernel setting into two measured "kernels".
    return {k: _no_nulls(v) for k, v in x.items() if v is not None} if isinstance(x, dict) else x


def finished_runs(*roots: Path) -> dict[str, list[tuple[Path, dict[str, Any]]]]:
    """Finished runs below each root (each with its resolved config) grouped by that config without the seed and
    the sweep name: one group = one kernel setting, also across sweeps that share runs (kernels_lm and
    feature_dim)."""
    groups: dict[str, list[tuple[Path, dict[str, Any]]]] = {}
    seen: set[Path] = set()
    for m in sorted({p for root in roots for p in root.rglob("metrics.json")}):
        if m.resolve() in seen:
            continue
        seen.add(m.resolve())
        try:
            data = json.loads(m.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        config = data.get("config") or _hydra_config(m.parent)  # records before schema 1's config: .hydra/
        if data.get("status") in FINISHED and isinstance(config, dict):
            key = _no_nulls({k: v for k, v in config.items() if k not in ("seed", "sweep", "logger")})
            groups.setdefault(json.dumps(key, sort_keys=True, default=str), []).append((m.parent, config))
    return groups


def _hydra_config(run_dir: Path) -> dict[str, Any] | None:
    try:
        cfg = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    return cfg if isinstance(cfg, dict) else None


class Subject:
    """One kernel configuration: its model, optimizer and task, ready to take training updates."""

    def __init__(self, cfg: TrainConfig, device: torch.device) -> None:
        self.cfg = cfg
        self.task = build_task(cfg.task, PreparedData(ensure_prepared(cfg.task.data)), cfg.optim.label_smoothing)
        torch.manual_seed(0)
        self.model = self.task.build_model(cfg.model, cfg.kernel_name, cfg.kernel).to(device).train()
        self.optimizer = build_optimizer(self.model, cfg.optim, device)
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.optim.lr

    def step(self, batch: dict[str, Any]) -> int:
        loss, ntok, _ = self.task.loss(self.model, batch)
        (loss / max(ntok, 1)).backward()
        if self.cfg.optim.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.clip_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return ntok


def measure(subjects: dict[str, Subject], batches: list[dict[str, Any]], steps: int, rounds: int) -> dict:
    """Interleaved timing: per subject, tokens/s of each round and their median."""
    rates: dict[str, list[float]] = {k: [] for k in subjects}
    i = 0
    for _ in range(rounds):
        for name, s in subjects.items():
            s.step(batches[i % len(batches)])  # warm-up: caches, allocator, lazily built tables
            t0, tokens = time.perf_counter(), 0
            for j in range(steps):
                tokens += s.step(batches[(i + j) % len(batches)])
            rates[name].append(tokens / (time.perf_counter() - t0))
        i += steps
    return {k: {"tokens_per_s": statistics.median(v), "rounds_tokens_per_s": [round(x, 1) for x in v]}
            for k, v in rates.items()}


def main(argv: list[str] | None = None) -> int:
    ap = cli.ArgumentParser(prog="scripts/measure_throughput.py", description=__doc__.split("\n")[0])
    ap.add_argument("sweep", type=Path, nargs="+", help="a sweep folder (e.g. outputs/sweeps/kernels_mt), or "
                    "several that report together (feature_dim and kernels_lm): all timed in the same rounds")
    ap.add_argument("--steps", type=cli.positive_int, default=4, help="timed updates per kernel per round")
    ap.add_argument("--rounds", type=cli.positive_int, default=5)
    ap.add_argument("--batches", type=cli.positive_int, default=8, help="distinct training batches, cycled")
    ap.add_argument("--threads", type=cli.positive_int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    for sweep in args.sweep:
        if not sweep.is_dir():
            raise ReportError(f"{sweep} is not a folder; pass a sweep folder (e.g. outputs/sweeps/kernels_mt)")
    where = " ".join(str(s) for s in args.sweep)
    groups = finished_runs(*args.sweep)
    if not groups:
        raise ReportError(f"no finished run (metrics.json with its config) under {where}; train first")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    subjects, members = {}, {}
    configs = [(TrainConfig.from_dict(runs[0][1]), [p for p, _ in runs]) for runs in groups.values()]
    names = [c.kernel_label for c, _ in configs]
    for cfg, paths in configs:
        label = cfg.kernel_label
        if names.count(label) > 1:  # one kernel at several settings (a feature-dimension sweep): name them
            params = {k: v for k, v in vars(cfg.kernel).items() if k not in ("path", "label")}
            label += "(" + ", ".join(f"{k}={v}" for k, v in params.items()) + ")"
        subjects[label], members[label] = Subject(cfg, device), paths
    tasks = {json.dumps(s.cfg.task.data.__dict__, sort_keys=True, default=str) for s in subjects.values()}
    if len(tasks) > 1:
        raise ReportError(f"{where} mixes {len(tasks)} data sets; measure one task's sweep at a time")
    first = next(iter(subjects.values()))
    sampler = first.task.train_sampler(0)
    sampler.set_epoch(1)
    batches = [first.task.train_batch(ix) for _, ix in zip(range(args.batches), iter(sampler))]
    batches = [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in b.items()} for b in batches]
    print(f"timing {len(subjects)} kernel configuration(s) on {len(batches)} batches: {args.rounds} rounds × "
          f"{args.steps} updates, {args.threads} thread(s)", flush=True)
    results = measure(subjects, batches, args.steps, args.rounds)
    common = {"schema": 1, "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(["python scripts/measure_throughput.py", *(sys.argv[1:] if argv is None else argv)]),
              "steps": args.steps, "rounds": args.rounds, "batches": len(batches), "threads": args.threads,
              "target_tokens_per_batch": round(statistics.mean(
                  int((b["target"] != first.task.vocab.pad).sum()) for b in batches), 1),
              "interleaved_with": sorted(subjects), "machine": machine_info(args.device)}
    skipped = []
    for label, res in sorted(results.items(), key=lambda kv: -kv[1]["tokens_per_s"]):
        print(f"  {label:24s} {res['tokens_per_s']:10.0f} tokens/s", flush=True)
        for run_dir in members[label]:
            lock = RunFolderLock(run_dir)
            if not lock.try_acquire():
                skipped.append(str(run_dir))
                continue
            try:
                atomic.write_json(run_dir / THROUGHPUT_FILE, {**common, "kernel": label, **res})
            finally:
                lock.release()
    for s in skipped:
        print(f"skipped {s}: in use by another process", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(cli.run("measure_throughput", main))
