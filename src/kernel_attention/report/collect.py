"""Find and read every run's ``metrics.json`` (docs/contracts.md §3) under a folder, and group the runs.

Tolerant by design: a sweep is often read while jobs are still running or after some crashed. Runs in progress
(``status: running``, or a Hydra job folder with ``.hydra/`` but no metrics.json yet), failed and diverged runs
are kept and counted; unreadable or malformed files become ``Problem`` entries. Nothing here raises on bad input.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kernel_attention.store.files import METRICS_FILE

STATUSES = ("running", "completed", "diverged", "failed")
# Kernel options that choose how a kernel is computed, not which kernel it is; they do not split groups.
NON_IDENTITY_PARAMS = frozenset({"label", "path"})


@dataclass
class Run:
    """One run folder's metrics.json, flattened to what the report uses."""

    path: Path
    status: str
    status_reason: str
    task: str
    task_type: str
    metric: str
    higher_is_better: bool
    kernel_name: str
    kernel_label: str
    kernel_params: dict[str, Any]
    feature_dim: float | None  # math.inf for infinite, None if the file does not say
    symmetric: bool | None
    positive_definite: bool | None
    seed: int | None
    model_params: int | None
    head_dim: int | None
    tokens_per_s: float | None
    value: float | None  # test.<metric>, else valid.best_<metric>
    value_source: str | None  # "test" | "valid" | None
    bleu_stats: list[list[float]] | None
    history: list[dict[str, Any]]
    updated_at: str
    test_sets: dict[str, float] = field(default_factory=dict)  # test_sets.<name>.<metric> (evaluate.py test_sets)
    setting: dict[str, Any] = field(default_factory=dict)  # run_setting(config): what else shapes its numbers

    @property
    def identity_params(self) -> dict[str, Any]:
        # A None setting (kernel.scale: null = the default) is dropped: records of runs resumed before the
        # metrics writer kept nulls lack the key, and both mean the same kernel.
        return {k: v for k, v in sorted(self.kernel_params.items())
                if k not in NON_IDENTITY_PARAMS and v is not None}


@dataclass
class Problem:
    """A run that could not be read (``unreadable``/``invalid``) or has no metrics.json yet (``no_metrics``)."""

    path: Path
    kind: str
    reason: str


@dataclass
class KernelGroup:
    """All runs of one kernel configuration on one task, across seeds."""

    task: str
    name: str  # registered kernel name
    label: str  # display label (label or name, disambiguated with params when needed)
    params: dict[str, Any]
    runs: list[Run] = field(default_factory=list)

    def by_status(self, status: str) -> list[Run]:
        return [r for r in self.runs if r.status == status]

    @property
    def completed(self) -> list[Run]:
        """Completed runs with a metric value, one per seed (the latest if a seed was run twice), by seed."""
        best: dict[Any, Run] = {}
        for r in self.runs:
            if r.status != "completed" or r.value is None:
                continue
            key = r.seed if r.seed is not None else str(r.path)
            if key not in best or (r.updated_at, str(r.path)) > (best[key].updated_at, str(best[key].path)):
                best[key] = r
        return sorted(best.values(), key=lambda r: (r.seed is None, r.seed or 0, str(r.path)))

    @property
    def values(self) -> list[float]:
        return [r.value for r in self.completed if r.value is not None]

    def test_set_values(self, name: str) -> list[float]:
        """The completed seeds' values on test set ``name`` (evaluate.py test_sets), where scored."""
        return [r.test_sets[name] for r in self.completed if name in r.test_sets]

    def first(self, attr: str) -> Any:
        """The first non-None ``attr`` among the runs (kernel properties are the same for every seed)."""
        return next((getattr(r, attr) for r in self.runs if getattr(r, attr) is not None), None)

    @property
    def feature_dim(self) -> float | None:
        return self.first("feature_dim")

    @property
    def is_infinite(self) -> bool | None:
        fd = self.feature_dim
        return None if fd is None else math.isinf(fd)


@dataclass
class Collection:
    """Everything found under one folder, or under several (``roots``)."""

    roots: list[Path]
    runs: list[Run]
    problems: list[Problem]

    @property
    def root(self) -> Path:
        """The first folder (where the report goes by default)."""
        return self.roots[0]

    def relative(self, p: Path) -> str:
        """``p`` relative to the root that holds it (the path itself when none does)."""
        for root in self.roots:
            try:
                return str(p.relative_to(root)) or "."
            except ValueError:
                continue
        return str(p)

    @property
    def n_metrics_files(self) -> int:
        return len(self.runs) + sum(p.kind in ("unreadable", "invalid") for p in self.problems)


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _number(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return float(x)


def _feature_dim(x: Any) -> float | None:
    if x == "inf" or (isinstance(x, float) and math.isinf(x)):
        return math.inf
    n = _number(x)
    return None if n is None else n


def parse_metrics(data: Any, path: Path) -> Run:
    """Turn a decoded metrics.json into a ``Run``; raises ``ValueError`` naming the missing field."""
    if not isinstance(data, dict):
        raise ValueError("top level is not a JSON object")
    status = data.get("status")
    if status not in STATUSES:
        raise ValueError(f"status {status!r} is not one of {', '.join(STATUSES)}")
    task = _get(data, "task", "name")
    kernel = _get(data, "kernel", "name")
    if not isinstance(task, str) or not isinstance(kernel, str):
        raise ValueError("task.name and kernel.name are required")
    task_type = str(_get(data, "task", "type") or "")
    # The record says which number the task reports and its direction (the task wrote them: the report knows no
    # task types). Only a job that failed before it started may lack them; it has no number to compare.
    metric = _get(data, "task", "metric")
    hib = _get(data, "task", "higher_is_better")
    if not isinstance(metric, str) or not isinstance(hib, bool):
        if status != "failed":
            raise ValueError("task.metric and task.higher_is_better are required")
        metric, hib = "", False
    value, source = (_number(_get(data, "test", metric)) if metric else None), "test"
    if value is None and metric:
        value, source = _number(_get(data, "valid", f"best_{metric}")), "valid"
    stats = _get(data, "test", "bleu_stats")
    history = _get(data, "valid", "history")
    seed = _get(data, "seed")
    props = _get(data, "kernel", "properties") or {}
    return Run(
        path=path,
        status=status,
        status_reason=str(data.get("status_reason") or ""),
        task=task,
        task_type=task_type,
        metric=metric,
        higher_is_better=hib,
        kernel_name=kernel,
        kernel_label=str(_get(data, "kernel", "label") or kernel),
        kernel_params=dict(_get(data, "kernel", "params") or {}),
        feature_dim=_feature_dim(props.get("feature_dim")) if isinstance(props, dict) else None,
        symmetric=props.get("symmetric") if isinstance(props, dict) else None,
        positive_definite=props.get("positive_definite") if isinstance(props, dict) else None,
        seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
        model_params=_get(data, "model", "params"),
        head_dim=_get(data, "model", "head_dim"),
        tokens_per_s=_number(_get(data, "train", "tokens_per_s")),
        value=value,
        value_source=source if value is not None else None,
        bleu_stats=stats if isinstance(stats, list) and stats else None,
        history=[h for h in history if isinstance(h, dict)] if isinstance(history, list) else [],
        updated_at=str(_get(data, "run", "updated_at") or ""),
        test_sets=_test_set_values(data.get("test_sets"), metric),
        setting=run_setting(data.get("config")),
    )


# Resolved-config entries that cannot change a run's numbers: its seed (seeds are a group's runs), its sweep's name,
# where its data folder lies on this machine, logging, resuming and checkpoint cadence. The kernel is keyed apart.
_NOT_SETTING_SECTIONS = ("kernel", "logger")
_NOT_SETTING = {"seed", "sweep", "task.data", "trainer.progress_bar", "trainer.log_interval", "trainer.resume",
                "trainer.git_commit", "trainer.save_interval_updates"}  # fmt: skip


def run_setting(config: Any) -> dict[str, Any]:
    """The run's resolved config, flattened to dotted keys, without the kernel and the entries that cannot change
    its numbers (``_NOT_SETTING``); null entries dropped (a null option and a missing one are the same setting).
    Two runs of one kernel are seeds of one row only if their settings are equal: a 1,024-character and a
    256-character edp are two rows, never one mean. {} for records without a config (older files)."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        for k, v in node.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict):
                walk(v, f"{key}.")
            elif v is not None and key not in _NOT_SETTING:
                out[key] = v

    if isinstance(config, dict):
        walk({k: v for k, v in config.items() if k not in _NOT_SETTING_SECTIONS}, "")
    return dict(sorted(out.items()))


def _test_set_values(sections: Any, metric: str) -> dict[str, float]:
    """``{name: value}`` of the run's other test sets (``test_sets.<name>.<metric>``), skipping unusable ones."""
    if not isinstance(sections, dict) or not metric:
        return {}
    out = {}
    for name, section in sections.items():
        value = _number(section.get(metric)) if isinstance(section, dict) else None
        if value is not None:
            out[str(name)] = value
    return out


def collect_runs(root: Path | str) -> Collection:
    """Read every ``metrics.json`` below ``root`` (recursively; ``root`` may itself be a run folder) and note
    Hydra job folders that have none yet. Never raises on a bad file: it becomes a ``Problem``."""
    root = Path(root)
    runs: list[Run] = []
    problems: list[Problem] = []
    for path in sorted(root.rglob(METRICS_FILE)):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            # A truncated file (job killed mid-write without the atomic rename) lands here.
            problems.append(Problem(path.parent, "unreadable", f"{type(e).__name__}: {e}"))
            continue
        try:
            runs.append(parse_metrics(data, path.parent))
        except (ValueError, TypeError, AttributeError) as e:
            problems.append(Problem(path.parent, "invalid", str(e)))
    for hydra_dir in sorted(root.rglob(".hydra")):
        job = hydra_dir.parent
        if hydra_dir.is_dir() and not (job / METRICS_FILE).exists():
            problems.append(Problem(job, "no_metrics", "job folder without metrics.json (still starting, or killed)"))
    return Collection(roots=[root], runs=runs, problems=problems)


def collect_all(roots: Sequence[Path | str]) -> Collection:
    """``collect_runs`` over several folders (e.g. two sweeps that share runs): a folder found twice (one root
    inside another) counts once."""
    parts = [collect_runs(r) for r in roots]
    seen: set[Path] = set()
    runs, problems = [], []
    for c in parts:
        for r in c.runs:
            if r.path.resolve() not in seen:
                seen.add(r.path.resolve())
                runs.append(r)
    for c in parts:
        for p in c.problems:
            if p.path.resolve() not in seen:
                seen.add(p.path.resolve())
                problems.append(p)
    return Collection(roots=[c.root for c in parts], runs=runs, problems=problems)


def _display(label: str, params: dict[str, Any]) -> str:
    if not params:
        return label
    return f"{label}(" + ", ".join(f"{k}={v}" for k, v in params.items()) + ")"


def group_runs(runs: Iterable[Run]) -> dict[str, list[KernelGroup]]:
    """Group runs by task, then by kernel (label, or name) + identity params + run setting (``run_setting``: the
    rest of the resolved config that shapes the numbers); seeds are the runs of a group.

    A label shared by two parameter settings on one task gets the params appended so rows stay distinct. Runs of
    one task that report different metrics (a character LM recorded as ppl before it reported bpc) are never
    averaged together: each metric becomes its own table, ``<task> [<metric>]``."""
    runs = list(runs)
    metrics: dict[str, set[str]] = {}
    for r in runs:
        if r.metric:
            metrics.setdefault(r.task, set()).add(r.metric)
    groups: dict[str, dict[tuple[str, str, str, str], KernelGroup]] = {}
    for r in runs:
        params = r.identity_params
        key = (r.kernel_name, r.kernel_label, json.dumps(params, sort_keys=True, default=str),
               json.dumps(r.setting, sort_keys=True, default=str))  # fmt: skip
        task = f"{r.task} [{r.metric or '?'}]" if len(metrics.get(r.task, ())) > 1 else r.task
        task_groups = groups.setdefault(task, {})
        if key not in task_groups:
            task_groups[key] = KernelGroup(task, r.kernel_name, r.kernel_label, params)
        task_groups[key].runs.append(r)
    out: dict[str, list[KernelGroup]] = {}
    for task in sorted(groups):
        gs = list(groups[task].values())
        labels = [g.label for g in gs]
        for g in gs:
            if labels.count(g.label) > 1:
                g.label = _display(g.label, g.params)
        # Still equal labels: one kernel setting under different run settings. Each row names the entries that
        # tell them apart, so no two settings are ever averaged into one row nor one of them hidden.
        labels = [g.label for g in gs]
        for label in {lab for lab in labels if labels.count(lab) > 1}:
            same = [g for g in gs if g.label == label]
            settings = [g.runs[0].setting for g in same]  # the setting is part of the key: one per group
            keys = sorted({k for st in settings for k in st})
            differ = [k for k in keys if len({json.dumps(st.get(k), default=str) for st in settings}) > 1]
            for g, st in zip(same, settings):
                g.label += " [" + ", ".join(f"{k}={st.get(k)}" for k in differ) + "]"
        out[task] = gs
    return out
