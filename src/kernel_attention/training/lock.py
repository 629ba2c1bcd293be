"""One writer per run folder: an exclusive ``flock`` on ``<run_dir>/.lock``, held while training or evaluating.

The operating system drops the lock when its process ends in any way — exit, exception, ``kill -9`` — so a stale
lock never blocks a relaunch and nothing has to be cleaned up by hand (on local disks, and on network file systems
with working locks; one mounted without locking answers ENOLCK: a one-line file error). A second process that finds
the folder locked stops before touching it, with one line naming the holder's PID (written into the lock file).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

LOCK_FILE = ".lock"
_UMASK = os.umask(0)
os.umask(_UMASK)


class RunFolderBusyError(RuntimeError):
    """Another live process holds the run folder. The message is one line and names it."""


class RunFolderLock:
    """``with RunFolderLock(run_dir):`` — raises ``RunFolderBusyError`` when another process holds it."""

    def __init__(self, run_dir: Path | str) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)  # group-shared folders: as atomic.py
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunFolderBusyError(f"{self.path.parent} is in use by process {holder} (another train.py or "
                                     "evaluate.py); wait for it to finish, or use another folder") from None
        except OSError as e:  # e.g. ENOLCK: a network file system without locking
            os.close(fd)
            raise OSError(e.errno, f"{e.strerror} (locking)", str(self.path)) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as e:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise OSError(e.errno, e.strerror, str(self.path)) from None
        self.fd = fd

    def try_acquire(self) -> bool:
        """``acquire`` that answers False instead of raising when another process holds the folder."""
        try:
            self.acquire()
        except RunFolderBusyError:
            return False
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> RunFolderLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
