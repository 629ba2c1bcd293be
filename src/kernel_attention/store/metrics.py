"""``metrics.json`` of a run folder (docs/contracts.md §3): one small reusable writer.

Training writes ``status``/``run``/``kernel``/``task``/``model``/``train``/``valid``/``env``; evaluation adds
``test`` through the same ``update_metrics`` (read-modify-write, atomic), so neither clobbers the other.
"""

from __future__ import annotations

import json
import math
import platform
import subprocess
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from kernel_attention.store import atomic
from kernel_attention.store.files import METRICS_FILE

SCHEMA = 1
FILENAME = METRICS_FILE
STATUSES = ("running", "completed", "diverged", "failed")
# Key order of docs/contracts.md §3 (readers do not care; humans reading the file do).
ORDER = ("schema", "status", "status_reason", "run", "kernel", "task", "seed", "model", "train", "valid", "test",
         "env", "config")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_metrics(run_dir: Path | str) -> dict[str, Any]:
    """The run's metrics.json, or {} when there is none yet."""
    path = Path(run_dir) / FILENAME
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class _Delete:
    def __repr__(self) -> str:
        return "DELETE"


# A patch value that removes its key. ``None`` is a value like any other (stored as null): a recorded setting may
# be None (kernel.scale: null = √d), and a resumed run's record must say so exactly as a fresh run's does.
DELETE: Any = _Delete()


def replacing(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """A patch that replaces the section ``old`` by ``new`` (its keys that ``new`` lacks are deleted)."""
    return {**{key: DELETE for key in old if key not in new}, **new}


def _merge(base: dict[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; a value of ``DELETE`` in ``patch`` removes the key."""
    out = dict(base)
    for key, value in patch.items():
        if value is DELETE:
            out.pop(key, None)
        elif isinstance(value, Mapping):  # into {} when the key is new: DELETE markers never reach the file
            out[key] = _merge(out[key] if isinstance(out.get(key), dict) else {}, value)
        else:
            out[key] = value
    return out


def _clean(obj: Any) -> Any:
    """JSON-safe: non-finite floats become null (JSON has no NaN), tuples become lists."""
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def update_metrics(run_dir: Path | str, patch: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``patch`` into ``run_dir/metrics.json`` atomically and return the result.

    Sets ``schema`` and ``run.updated_at``. Not safe against two concurrent writers (one process owns a run)."""
    status = patch.get("status")
    if status is not None and status not in STATUSES:
        raise ValueError(f"metrics status {status!r} must be one of {STATUSES}")
    current = read_metrics(run_dir)
    merged = _merge(current, patch)
    merged["schema"] = SCHEMA
    merged.setdefault("run", {})["updated_at"] = now_iso()
    merged = _clean({**{k: merged[k] for k in ORDER if k in merged}, **merged})
    atomic.write_json(Path(run_dir) / FILENAME, merged)
    return merged


def git_commit(cwd: Path | str | None = None) -> str | None:
    """The checkout's commit (with ``-dirty`` if it has local changes), or None outside git."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device, commit: str | None = None) -> dict[str, Any]:
    """The ``env`` section: code version and the software/hardware it ran on. ``commit`` (``trainer.git_commit``)
    is recorded instead of asking git, for a copy without ``.git``; ``git_commit_from`` says which it was."""
    return {
        "git_commit": commit or git_commit(),
        "git_commit_from": "trainer.git_commit" if commit else "git",
        "torch": torch.__version__.split("+")[0],
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
        "python": platform.python_version(),
    }
