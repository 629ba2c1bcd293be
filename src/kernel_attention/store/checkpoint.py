"""Checkpoints: ``checkpoints/{last,best,avg}.pt`` plus the last N interval checkpoints for averaging.

Every checkpoint loads with ``torch.load(weights_only=True)``: it holds tensors and plain Python values only
(RNG states are stored as tensors, configs as dicts). ``last.pt`` has everything needed to continue bit-exactly:
model, optimizer, update counter (the schedule is a function of it), RNG states and the sampler position.
"""

from __future__ import annotations

import random
import re
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kernel_attention.store import atomic

CKPT_DIR = "checkpoints"
INTERVAL_RE = re.compile(r"^checkpoint_(\d+)\.pt$")


def rng_state() -> dict[str, Any]:
    """torch / CUDA / numpy / python RNG states as tensors and ints (weights_only-safe)."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_has_gauss": int(np_state[3]),
        "numpy_gauss": float(np_state[4]),
        "python_version": int(py_version),
        "python_internal": torch.tensor(py_internal, dtype=torch.int64),
        "python_gauss": py_gauss,
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"],
                         state["numpy_has_gauss"], state["numpy_gauss"]))
    random.setstate((state["python_version"], tuple(int(x) for x in state["python_internal"].tolist()),
                     state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: Path, state: dict[str, Any]) -> None:
    atomic.torch_save(path, state)


def load(path: Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict[str, Any]:
    """A checkpoint, restricted to tensors and plain containers (``weights_only``: no code in a pickle runs).
    ``mmap``: tensors are mapped from the file and read on first use."""
    return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)


def load_problem(exc: BaseException, path: Path | None = None) -> str:
    """Why ``load`` failed, in a few words: never torch's advice to unpickle with ``weights_only=False`` (that
    would run whatever code a foreign file carries)."""
    import zipfile

    if path is not None and path.is_file() and not zipfile.is_zipfile(path):
        return "not a torch checkpoint: truncated, or a foreign file"
    text = str(exc)
    if "Weights only load failed" in text or "weights_only" in text:
        return "it holds objects other than tensors and plain containers, which are never unpickled here"
    first = text.splitlines()[0] if text else type(exc).__name__
    return f"{type(exc).__name__}: {first[:160]}"


def interval_checkpoints(ckpt_dir: Path) -> list[Path]:
    """``checkpoint_<update>.pt`` files, oldest first."""
    found = [(int(m.group(1)), p) for p in ckpt_dir.glob("checkpoint_*.pt") if (m := INTERVAL_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def save_interval(ckpt_dir: Path, update: int, model_state: dict[str, Any], meta: dict[str, Any], keep: int) -> None:
    """Write ``checkpoint_<update>.pt`` (weights only) and delete all but the newest ``keep``."""
    if keep <= 0:
        return
    save(ckpt_dir / f"checkpoint_{update}.pt", {"model": model_state, **meta})
    for old in interval_checkpoints(ckpt_dir)[:-keep]:
        old.unlink(missing_ok=True)


def average_checkpoints(paths: list[Path], keep_newest: Collection[str] = ()) -> dict[str, torch.Tensor]:
    """Element-wise mean of the models' floating-point tensors (fairseq ``average_checkpoints.py``);
    integer buffers, and the keys in ``keep_newest`` (random draws: an average of draws is no draw), are taken
    from the newest checkpoint."""
    if not paths:
        raise ValueError("no checkpoints to average")
    total: dict[str, torch.Tensor] = {}
    for p in paths:
        state = load(p)["model"]
        for key, t in state.items():
            if t.is_floating_point() and key not in keep_newest:
                acc = t.detach().to(torch.float64)
                total[key] = total[key] + acc if key in total else acc
            else:
                total[key] = t
    last = load(paths[-1])["model"]
    return {k: (v / len(paths)).to(last[k].dtype) if last[k].is_floating_point() and k not in keep_newest else v
            for k, v in total.items()}


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP / torch.compile wrappers (whose state_dict keys carry prefixes)."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod  # torch.compile
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model
