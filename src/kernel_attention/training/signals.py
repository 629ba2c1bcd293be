"""SIGTERM / SIGUSR1 → finish the current update, write a checkpoint, exit cleanly (the job can be requeued).

SLURM sends SIGTERM before a preemption or at the time limit (and SIGUSR1 with ``--signal=USR1@120``); the
next launch of the same command resumes from ``checkpoints/last.pt``.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

HANDLED = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None)) if s is not None)


class StopRequest:
    """Records the first stop signal; the loop polls ``requested`` between updates."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signum = self.signum or signum

    def __enter__(self) -> StopRequest:
        # Signal handlers can only be installed from the main thread (joblib/threads: polling stays off).
        if threading.current_thread() is threading.main_thread():
            for s in HANDLED:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
