"""Atomic file writes: write a temporary file beside the target, flush it to disk, then ``os.replace``.

A reader (or a job killed with ``kill -9`` mid-write) only ever sees the old file or the complete new one.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

# mkstemp creates 0600 files; give the final file the usual permissions (0666 minus the umask).
_UMASK = os.umask(0)
os.umask(_UMASK)


def write_with(path: Path | str, write: Callable[[IO[bytes]], None]) -> None:
    """Atomically write ``path`` with ``write(binary file)`` (e.g. ``fig.savefig(f, format="png")``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(path: Path | str, data: bytes) -> None:
    write_with(path, lambda f: f.write(data))


def write_text(path: Path | str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path | str, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")


def torch_save(path: Path | str, obj: Any) -> None:
    import torch  # here, not at the top: the report writes through this module without torch

    write_with(path, lambda f: torch.save(obj, f))
