#!/usr/bin/env python
"""Keep a sweep's finished runs across machines and sessions, without their checkpoints.

    python scripts/archive_runs.py outputs/sweeps/kernels_mt experiments/kernels_mt/runs            # save
    python scripts/archive_runs.py --restore experiments/kernels_mt/runs outputs/sweeps/kernels_mt  # put back

A finished run (status completed, diverged or failed) is fully described for the report by small files: its
``metrics.json`` (scores, per-sentence BLEU statistics for the bootstrap, the resolved config, the environment),
``.hydra/{config,overrides}.yaml``, ``train.log``, ``test.hyp.txt``, ``throughput.json`` and ``diagnostics.json``
(scripts/diagnose.py). ``save`` copies those of every finished job folder (never a running one, never
checkpoints) into the archive, atomically per file. ``--restore`` copies them back into job folders that have no
``metrics.json`` yet and that no live process holds (the run-folder lock), so relaunching the sweep's command
skips the jobs that finished elsewhere — ``train.py`` sees a completed run with the same config — and runs only
the rest.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from kernel_attention import cli  # noqa: E402
from kernel_attention.report import ReportError  # noqa: E402
from kernel_attention.store import atomic  # noqa: E402
from kernel_attention.store.metrics import STATUSES  # noqa: E402
from kernel_attention.training.lock import RunFolderLock  # noqa: E402

FILES = ("metrics.json", ".hydra/config.yaml", ".hydra/overrides.yaml", "train.log", "test.hyp.txt", "throughput.json",
         "diagnostics.json")
FINISHED = tuple(s for s in STATUSES if s != "running")


def _finished_jobs(root: Path) -> list[Path]:
    jobs = []
    for m in sorted(root.rglob("metrics.json")):
        try:
            status = json.loads(m.read_text(encoding="utf-8")).get("status")
        except (OSError, json.JSONDecodeError):
            continue
        if status in FINISHED:
            jobs.append(m.parent)
    return jobs


def copy_runs(src: Path, dst: Path, *, only_missing: bool) -> list[str]:
    """Copy the record files of ``src``'s finished job folders to the same relative folders under ``dst``."""
    if not src.is_dir():
        raise ReportError(f"{src} is not a folder; pass a sweep folder (e.g. outputs/sweeps/kernels_mt)")
    copied = []
    for job in _finished_jobs(src):
        target = dst / job.relative_to(src)
        if only_missing and (target / "metrics.json").exists():
            continue
        lock = RunFolderLock(target)
        if not lock.try_acquire():  # a live trainer holds that folder: never write beside it
            print(f"skipped {target}: in use by another process", file=sys.stderr)
            continue
        try:
            for name in FILES:
                f = job / name
                if f.is_file():
                    atomic.write_bytes(target / name, f.read_bytes())
        finally:
            lock.release()
        copied.append(str(job.relative_to(src)))
    return copied


def main(argv: list[str] | None = None) -> int:
    ap = cli.ArgumentParser(prog="scripts/archive_runs.py", description=__doc__)
    ap.add_argument("src", help="sweep folder to save from (or, with --restore, the archive)")
    ap.add_argument("dst", help="archive folder (or, with --restore, the sweep folder)")
    ap.add_argument("--restore", action="store_true", help="copy archived runs back where no metrics.json exists")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    done = copy_runs(Path(args.src), Path(args.dst), only_missing=args.restore)
    print(f"{'restored' if args.restore else 'archived'} {len(done)} finished run(s) into {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run("archive_runs", main))
