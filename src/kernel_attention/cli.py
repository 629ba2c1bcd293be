"""One error path for every entry point (train.py, evaluate.py, scripts/prepare_data.py, scripts/report.py,
scripts/diagnose.py): bad input is one line on stderr, ``<prog>: <kind> error: <what is wrong and the fix>``,
and an exit code per kind of error — the same kind, the same code, whichever command met it:

    2  config     a setting or argument is invalid (ConfigError, Hydra/OmegaConf errors, bad CLI arguments)
    3  data       a corpus or prepared dataset is missing or unusable (DataError)
    4  run        a run folder or checkpoint is not what the command needs (EvaluationError, RunFolderBusyError)
    5  file       the file system refused: permission, read-only, disk full (OSError while reading or writing)

``KA_FULL_ERROR=1`` shows the full traceback instead (``HYDRA_FULL_ERROR=1`` does the same for train.py). Any
other exception is a bug and keeps its traceback. Only entry points import this module: it knows the error
types of every layer below them.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

EXIT_CODES = {"config": 2, "data": 3, "run": 4, "file": 5}
TRACEBACK_ENV = "KA_FULL_ERROR"


def error_kind(exc: BaseException) -> str | None:
    """The kind of a user-facing error (see the module docstring), or None for a bug."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from kernel_attention.data import DataError
    from kernel_attention.diagnostics.errors import DiagnosticsError
    from kernel_attention.evaluation.errors import EvaluationError
    from kernel_attention.registry import ConfigError
    from kernel_attention.report import ReportError
    from kernel_attention.training.lock import RunFolderBusyError

    if isinstance(exc, DataError):
        return "data"
    if isinstance(exc, (EvaluationError, DiagnosticsError, RunFolderBusyError, ReportError)):
        return "run"
    if isinstance(exc, (ConfigError, OmegaConfBaseException)):
        return "config"
    if _os_error(exc) is not None:  # also when wrapped (logging's 'Unable to configure handler', Hydra's own)
        return "file"
    if isinstance(exc, HydraException):
        return "config"
    return None


def _os_error(exc: BaseException) -> OSError | None:
    """The file-system error behind ``exc``: itself or one of its causes, an OSError with an errno."""
    e: BaseException | None = exc
    for _ in range(6):
        if e is None:
            return None
        if isinstance(e, OSError) and e.errno is not None and not isinstance(e.args[0] if e.args else 0, str):
            return e
        # ``raise ... from None`` hides the context on purpose (a busy lock's BlockingIOError): respect that.
        e = e.__cause__ if e.__cause__ is not None or e.__suppress_context__ else e.__context__
    return None


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` (and its causes) on one line; Hydra/OmegaConf's bookkeeping lines dropped, file
    system errors as 'cannot access <path>: <reason>'."""
    from kernel_attention.data import DataError as DataError_
    from kernel_attention.registry import ConfigError as ConfigError_

    os_error = _os_error(exc)
    if os_error is not None and not isinstance(exc, (ConfigError_, DataError_)):
        where = f" {os_error.filename}" if os_error.filename else ""
        return (f"cannot access{where}: {os_error.strerror or os_error}; check the permissions and free space of "
                "that folder")
    parts: list[str] = []
    e: BaseException | None = exc
    while e is not None and len(parts) < 3:
        for line in str(e).splitlines():
            line = line.strip()
            if line and not line.startswith(("full_key", "object_type", "reference_type", "Set the environment",
                                             "Config search path", "provider=")):
                parts.append(line)
        e = e.__cause__
    return " ".join(dict.fromkeys(parts)) or type(exc).__name__


def wants_traceback() -> bool:
    return os.environ.get(TRACEBACK_ENV) == "1"


def report(prog: str, exc: BaseException) -> int:
    """Print ``exc`` as one line for ``prog`` and return its exit code; re-raise bugs (and with the switch)."""
    kind = error_kind(exc)
    if kind is None or wants_traceback():
        raise exc
    print(f"{prog}: {kind} error: {one_line(exc)}", file=sys.stderr)
    return EXIT_CODES[kind]


def run(prog: str, fn: Callable[[], Any]) -> int:
    """Call an entry point's body; user errors become one line and their exit code, success is 0."""
    try:
        result = fn()
    except SystemExit as e:  # argparse and Hydra's own usage errors
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException as e:
        if isinstance(e, KeyboardInterrupt):
            raise
        return report(prog, e)
    return result if isinstance(result, int) else 0


PATH_KEYS = ("run_dir", "data_dir", "input", "prompt_file")
_GRAMMAR = set("=,[]{}()'\" ")


def quote_path_values(argv: list[str]) -> list[str]:
    """Quote path values that Hydra's override grammar would misread: every sweep job folder has ``=`` and ``,``
    in its name (``outputs/sweeps/kernels_mt/kernel=rbf,seed=2``), so ``run_dir=<that folder>`` is quoted here
    and works as typed. Values already quoted, and values holding a quote character, are left alone."""
    out = []
    for a in argv:
        key, sep, value = a.partition("=")
        if (sep and key.lstrip("+~") in PATH_KEYS and value and value[0] not in "'\""
                and "'" not in value and "\\" not in value and _GRAMMAR & set(value)):
            a = f"{key}='{value}'"
        out.append(a)
    return out


def run_hydra(prog: str, main: Callable[[], Any]) -> int:
    """``run`` for a ``@hydra.main`` function: Hydra is made to raise its errors (``HYDRA_FULL_ERROR=1``) instead
    of printing them with its help text, so they take the same one-line path. A user's own ``HYDRA_FULL_ERROR=1``
    asks for the traceback, as ``KA_FULL_ERROR=1`` does. Both variables are restored on return, so a second
    command in the same process (tests, notebooks) does not take our own HYDRA_FULL_ERROR for the user's."""
    saved = {k: os.environ.get(k) for k in ("HYDRA_FULL_ERROR", TRACEBACK_ENV)}
    if saved["HYDRA_FULL_ERROR"] == "1":
        os.environ[TRACEBACK_ENV] = "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # inherited by launcher workers started inside ``main``
    sys.argv[1:] = quote_path_values(sys.argv[1:])
    try:
        return run(prog, main)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def job_errors(prog: str) -> Callable[[F], F]:
    """Decorate a ``@hydra.main`` function (below the Hydra decorator): a user error inside the job leaves as one
    line and its exit code, before Hydra could log its own 'Error executing job' report around it."""
    def deco(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as e:
                if error_kind(e) is None or wants_traceback():
                    raise
                sys.exit(report(prog, e))
        return wrapper  # type: ignore[return-value]
    return deco


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are ``ConfigError``s (one line through ``run``, exit 2), not usage + message."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        from kernel_attention.registry import ConfigError

        raise ConfigError(f"{message}; see {self.prog} --help")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not >= 1")
    return value
