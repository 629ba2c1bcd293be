"""Issue 12: every bad input one line with its kind's exit code, no silent skips, one writer per run folder, no
network when offline. Each test reproduces a reported failure on a tiny run (``tiny_overrides``)."""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import ClassVar

import pytest
from test_train_support import REPO, env, run_cli, tiny_overrides

from kernel_attention.config import RUN_CONTROL, run_control_override_keys
from kernel_attention.training.lock import RunFolderLock

RUN = Path("outputs") / "tiny_mt" / "transformer_tiny" / "edp" / "seed1"


def _one_line(proc: subprocess.CompletedProcess, prog: str, kind: str, needle: str) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith(f"{prog}: {kind} error: ") and needle in lines[0], lines[0]
    assert "Traceback" not in proc.stderr
    return lines[0]


def _snapshot(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name not in ("train.log", ".lock")}


# ---- silent or wrong outcomes --------------------------------------------------------------------------------
def test_completed_run_with_a_changed_config_is_refused_not_skipped(tmp_path: Path, tiny_root: Path) -> None:
    args = tiny_overrides(tiny_root, "mt", updates=4)
    run_cli(args, cwd=tmp_path)
    run_dir = tmp_path / RUN
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"
    before = _snapshot(run_dir)
    proc = run_cli([*args, "optim.lr=1e-3"], cwd=tmp_path, check=False)
    assert proc.returncode == 2
    _one_line(proc, "train", "config", "holds a completed run with a different config (optim.lr)")
    assert _snapshot(run_dir) == before
    # The same config relaunched is still a skip (and a longer budget, run control, too — until resume=true).
    assert "already completed, skipping" in run_cli([*args, "trainer.max_updates=6"], cwd=tmp_path).stdout
    run_cli([*args, "trainer.max_updates=6", "trainer.resume=true"], cwd=tmp_path)
    assert json.loads((run_dir / "metrics.json").read_text())["train"]["updates"] == 6


def test_sweep_folder_names_leave_out_exactly_the_run_control_keys() -> None:
    excluded = set(run_control_override_keys())
    assert set(RUN_CONTROL) <= excluded and "experiment" in excluded
    assert {"trainer.max_updates", "trainer.patience", "trainer.valid_max_batches", "logger.mode"} <= excluded
    text = (REPO / "conf" / "train.yaml").read_text()
    assert "exclude_keys: ${ka.run_control:}" in text


def test_sweep_relaunched_with_a_longer_budget_finds_its_runs(tmp_path: Path, tiny_root: Path) -> None:
    args = [a for a in tiny_overrides(tiny_root, "mt", updates=4) if not a.startswith("trainer.max_updates")]
    run_cli(["-m", "kernel=edp", *args, "trainer.max_updates=4", "sweep=s"], cwd=tmp_path)
    jobs = [p for p in (tmp_path / "outputs" / "sweeps" / "s").iterdir() if p.is_dir()]
    assert len(jobs) == 1 and "max_updates" not in jobs[0].name
    again = run_cli(["-m", "kernel=edp", *args, "trainer.max_updates=6", "sweep=s"], cwd=tmp_path)
    assert "already completed, skipping" in again.stdout + again.stderr  # what a single run does
    longer = run_cli(["-m", "kernel=edp", *args, "trainer.max_updates=6", "trainer.resume=true", "sweep=s"],
                     cwd=tmp_path)
    assert "resumed at update 4" in longer.stdout + longer.stderr
    assert [p for p in (tmp_path / "outputs" / "sweeps" / "s").iterdir() if p.is_dir()] == jobs
    assert json.loads((jobs[0] / "metrics.json").read_text())["train"]["updates"] == 6


def test_a_second_process_in_the_same_run_folder_stops_naming_the_holder(tmp_path: Path, tiny_root: Path) -> None:
    args = [*tiny_overrides(tiny_root, "mt", updates=1000), "trainer.max_wall_time=0.01"]
    run_cli(args, cwd=tmp_path)  # an interrupted run: the next launch would resume it
    run_dir = tmp_path / RUN
    before = _snapshot(run_dir)
    with RunFolderLock(run_dir):  # this test process is "the other train.py"
        proc = run_cli(args, cwd=tmp_path, check=False)
        ev = subprocess.run([sys.executable, str(REPO / "evaluate.py"), f"run_dir={run_dir}", "checkpoint=last"],
                            cwd=tmp_path, env=env(), capture_output=True, text=True)
    assert proc.returncode == 4 and ev.returncode == 4
    _one_line(proc, "train", "run", f"is in use by process {os.getpid()}")
    _one_line(ev, "evaluate", "run", f"is in use by process {os.getpid()}")
    assert _snapshot(run_dir) == before  # neither wrote anything


def test_a_lock_left_by_kill_9_is_not_stale(tmp_path: Path, tiny_root: Path) -> None:
    run_dir = tmp_path / RUN
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from kernel_attention.training.lock import RunFolderLock as L; "
        f"L({str(run_dir)!r}).acquire(); print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)
    assert (run_dir / ".lock").read_text().strip() == str(holder.pid)  # the file remains, the lock does not
    run_cli(tiny_overrides(tiny_root, "mt", updates=4), cwd=tmp_path)
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"


def test_relaunching_a_diverged_run_reports_it_and_exits_zero(tmp_path: Path, tiny_root: Path) -> None:
    args = [*tiny_overrides(tiny_root, "mt", updates=30), "optim.lr=1e4", "optim.warmup_updates=0",
            "trainer.max_consecutive_skips=2", "trainer.evaluate_at_end=true"]
    run_cli(args, cwd=tmp_path)
    again = run_cli(args, cwd=tmp_path, check=False)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "already diverged, skipping" in again.stdout + again.stderr and "Traceback" not in again.stderr


def test_one_invalid_job_fails_alone_and_the_sweep_goes_on(tmp_path: Path, tiny_root: Path) -> None:
    args = tiny_overrides(tiny_root, "mt", updates=4)
    proc = run_cli(["-m", *args, "model.heads=3,2", "sweep=bad"], cwd=tmp_path, check=False)
    assert proc.returncode == 2
    sweep = tmp_path / "outputs" / "sweeps" / "bad"
    status = {p.name: json.loads((p / "metrics.json").read_text()) for p in sweep.iterdir() if p.is_dir()}
    heads3 = next(m for name, m in status.items() if "model.heads=3" in name)
    heads2 = next(m for name, m in status.items() if "model.heads=2" in name)
    assert heads2["status"] == "completed"  # the valid job ran, after the invalid one
    assert heads3["status"] == "failed" and "model.heads=3 must divide model.d_model" in heads3["status_reason"]
    assert "1 job(s) of the sweep failed" in proc.stderr.splitlines()[-1]
    report = subprocess.run([sys.executable, str(REPO / "scripts" / "report.py"), str(sweep), "--no-plots"],
                            cwd=tmp_path, env=env(), capture_output=True, text=True)
    assert report.returncode == 0, report.stderr
    assert "1 failed" in (sweep / "report" / "REPORT.md").read_text()


# ---- W&B offline means no network ---------------------------------------------------------------------------
class _Listener(http.server.BaseHTTPRequestHandler):
    hits: ClassVar[list[str]] = []

    def _any(self) -> None:
        _Listener.hits.append(f"{self.command} {self.path}")
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    do_GET = do_POST = do_PUT = _any  # noqa: N815 (http.server's names)

    def log_message(self, *args: object) -> None:
        pass


def test_wandb_offline_sends_nothing(tmp_path: Path, tiny_root: Path) -> None:
    pytest.importorskip("wandb")
    server = http.server.HTTPServer(("127.0.0.1", 0), _Listener)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    e = {**env(), "WANDB_BASE_URL": f"http://127.0.0.1:{server.server_address[1]}"}
    e.pop("WANDB_MODE", None)
    args = [a if a != "logger=none" else "logger=wandb" for a in tiny_overrides(tiny_root, "mt", updates=4)]
    try:
        train = subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=tmp_path, env=e,
                               capture_output=True, text=True, timeout=240)
        assert train.returncode == 0, train.stderr[-2000:]
        assert (tmp_path / RUN / "wandb").is_dir()  # W&B did run, offline
        rep = subprocess.run([sys.executable, str(REPO / "scripts" / "report.py"), str(tmp_path / RUN), "--wandb",
                              "--no-plots"], cwd=tmp_path, env=e, capture_output=True, text=True, timeout=240)
        assert rep.returncode == 0, rep.stderr[-2000:]
        time.sleep(1.0)
    finally:
        server.shutdown()
    assert _Listener.hits == [], _Listener.hits


# ---- tracebacks where one line belongs ----------------------------------------------------------------------
@pytest.mark.parametrize("override, needle", [("optim.lr=nan", "lr=nan must be a finite number"),
                                              ("optim.lr=inf", "lr=inf must be a finite number"),
                                              ("model.dropout=nan", "finite")])
def test_non_finite_settings_are_config_errors(tmp_path: Path, override: str, needle: str) -> None:
    proc = run_cli(["logger=none", override], cwd=tmp_path, check=False)
    assert proc.returncode == 2
    _one_line(proc, "train", "config", needle)


def test_block_size_beyond_learned_positions_fails_before_any_work(tmp_path: Path, tiny_root: Path) -> None:
    lm = [a for a in tiny_overrides(tiny_root, "lm") if not a.startswith(("task.block_size", "task.max_tokens"))]
    proc = run_cli([*lm, "model=lm_small", "model.max_positions=64", "task.block_size=128", "task.max_tokens=512",
                    f"task.data.out_root={tmp_path / 'prepared'}"], cwd=tmp_path, check=False)
    assert proc.returncode == 2
    _one_line(proc, "train", "config", "task.block_size=128 exceeds model.max_positions=64")
    assert not (tmp_path / "prepared").exists()  # checked before data preparation


def test_read_only_parent_folder_is_one_line(tmp_path: Path, tiny_root: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root ignores permissions")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        proc = run_cli([*tiny_overrides(tiny_root, "mt", updates=4), f"hydra.run.dir={ro / 'run'}"], cwd=tmp_path,
                       check=False)
    finally:
        ro.chmod(0o700)
    assert proc.returncode == 5
    _one_line(proc, "train", "file", "cannot access")


def test_run_folder_on_a_read_only_file_system_is_one_line(tmp_path: Path, tiny_root: Path) -> None:
    """As root the permission bits do not bite; a folder that is a regular file refuses writes for everyone."""
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    proc = run_cli([*tiny_overrides(tiny_root, "mt", updates=4), f"hydra.run.dir={blocker / 'run'}"], cwd=tmp_path,
                   check=False)
    assert proc.returncode == 5
    _one_line(proc, "train", "file", "cannot access")
    assert blocker.read_text() == "not a folder"


def test_corrupt_checkpoint_message_never_suggests_unpickling(tmp_path: Path, tiny_root: Path) -> None:
    import torch

    args = [*tiny_overrides(tiny_root, "mt", updates=1000), "trainer.max_wall_time=0.01"]
    run_cli(args, cwd=tmp_path)
    last = tmp_path / RUN / "checkpoints" / "last.pt"
    torch.save({"progress": {"where": Path("/tmp")}}, last)  # a pickle that weights_only refuses (PosixPath)
    proc = run_cli(args, cwd=tmp_path, check=False)
    assert proc.returncode == 2
    line = _one_line(proc, "train", "config", "cannot load")
    assert "weights_only" not in line and len(line.replace(str(last), "")) < 250, line  # a CI path may be long


def test_empty_data_root_names_the_variable(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "prepare_data.py"), "task=multi30k"], cwd=tmp_path,
                          env={**env(), "KA_DATA_ROOT": ""}, capture_output=True, text=True)
    assert proc.returncode == 2
    _one_line(proc, "prepare_data", "config", "KA_DATA_ROOT")


def test_sentencepiece_on_a_tiny_corpus_names_the_fix(tmp_path: Path) -> None:
    mt = tmp_path / "raw" / "one"
    mt.mkdir(parents=True)
    for split in ("train", "valid", "test"):
        (mt / f"{split}.de").write_text("ein hund\n")
        (mt / f"{split}.en").write_text("a dog\n")
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "prepare_data.py"), "task=multi30k",
                           f"task.data.root={tmp_path / 'raw'}", "task.data.path=one", "task.name=one",
                           f"task.data.out_root={tmp_path / 'prep'}"], cwd=tmp_path, env=env(),
                          capture_output=True, text=True)
    assert proc.returncode == 3
    _one_line(proc, "prepare_data", "data", "set task.data.vocab_size<=")


def test_unknown_task_and_bad_report_arguments(tmp_path: Path) -> None:
    prep = subprocess.run([sys.executable, str(REPO / "scripts" / "prepare_data.py"), "task=nosuch"], cwd=tmp_path,
                          env=env(), capture_output=True, text=True)
    assert prep.returncode == 2
    _one_line(prep, "prepare_data", "config", "Available options in 'task'")
    rep = subprocess.run([sys.executable, str(REPO / "scripts" / "report.py"), str(tmp_path),
                          "--bootstrap-samples", "-5"], cwd=tmp_path, env=env(), capture_output=True, text=True)
    assert rep.returncode == 2
    _one_line(rep, "report", "config", "--bootstrap-samples: -5 is not >= 1")


def test_evaluate_on_cuda_without_cuda_is_one_line(tmp_path: Path, tiny_root: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    run_cli(tiny_overrides(tiny_root, "mt", updates=4), cwd=tmp_path)
    before = _snapshot(tmp_path / RUN)
    ev = subprocess.run([sys.executable, str(REPO / "evaluate.py"), f"run_dir={tmp_path / RUN}", "device=cuda"],
                        cwd=tmp_path, env=env(), capture_output=True, text=True)
    assert ev.returncode == 2
    _one_line(ev, "evaluate", "config", "CUDA is not available")
    assert _snapshot(tmp_path / RUN) == before


def test_traceback_switch_shows_the_full_error(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), "logger=none", "optim.lr=nan"], cwd=tmp_path,
                          env={**env(), "KA_FULL_ERROR": "1"}, capture_output=True, text=True)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "ConfigError" in proc.stderr


# ---- leftovers ---------------------------------------------------------------------------------------------------
def test_stale_temporaries_of_a_killed_save_are_removed_on_relaunch(tmp_path: Path, tiny_root: Path) -> None:
    args = [*tiny_overrides(tiny_root, "mt", updates=1000), "trainer.max_wall_time=0.01"]
    run_cli(args, cwd=tmp_path)
    ckpt = tmp_path / RUN / "checkpoints"
    stale = [ckpt / ".last.pt.k2j3h4.tmp", tmp_path / RUN / ".metrics.json.x1y2.tmp"]
    for p in stale:
        p.write_bytes(b"half a file")
    run_cli(args, cwd=tmp_path)
    assert not any(p.exists() for p in stale)


def test_the_bad_input_battery_runs(tmp_path: Path) -> None:
    """scripts/bad_inputs.py (the re-runnable battery) on its report and lock cases: it builds its fixtures and
    every selected case passes."""
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "bad_inputs.py"), "--only", "report"], cwd=tmp_path,
                          env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "6/6 cases" in proc.stdout


def test_finished_runs_survive_a_new_machine_through_the_archive(tmp_path: Path, tiny_root: Path) -> None:
    """scripts/archive_runs.py: save a sweep's finished runs (no checkpoints), lose outputs/, restore, relaunch:
    the finished job is skipped, not retrained, and the report reads the archive itself."""
    import shutil

    args = ["-m", *tiny_overrides(tiny_root, "mt", updates=4), "sweep=arch"]
    run_cli(args, cwd=tmp_path)
    sweep, archive = tmp_path / "outputs" / "sweeps" / "arch", tmp_path / "archive"
    script = str(REPO / "scripts" / "archive_runs.py")
    save = subprocess.run([sys.executable, script, str(sweep), str(archive)], env=env(), capture_output=True, text=True)
    assert save.returncode == 0 and "archived 1 finished run" in save.stdout, save.stderr
    assert not list(archive.rglob("*.pt"))  # records only
    shutil.rmtree(tmp_path / "outputs")
    back = subprocess.run([sys.executable, script, "--restore", str(archive), str(sweep)], env=env(),
                          capture_output=True, text=True)
    assert back.returncode == 0 and "restored 1" in back.stdout, back.stderr
    again = run_cli(args, cwd=tmp_path)
    assert "already completed, skipping" in again.stdout + again.stderr
    assert not list(sweep.rglob("*.pt"))  # nothing was retrained
    rep = subprocess.run([sys.executable, str(REPO / "scripts" / "report.py"), str(archive), "--no-plots"],
                         env=env(), capture_output=True, text=True)
    assert rep.returncode == 0 and "1 completed" in (archive / "report" / "REPORT.md").read_text()


# ---- found in review: each reproduces a demonstrated failure ---------------------------------------------------
def test_any_user_error_inside_a_job_is_one_line_and_leaves_no_trace(tmp_path: Path, tiny_root: Path) -> None:
    proc = run_cli([*tiny_overrides(tiny_root, "mt", updates=4), "optim.lr=${nosuch}"], cwd=tmp_path, check=False)
    assert proc.returncode == 2
    _one_line(proc, "train", "config", "nosuch")  # no 'Error executing job' line from Hydra
    assert not (tmp_path / "outputs").exists()


def test_an_unresolvable_sweep_job_fails_alone(tmp_path: Path, tiny_root: Path) -> None:
    proc = run_cli(["-m", *tiny_overrides(tiny_root, "mt", updates=4), "model.dropout=${nosuch},0.1", "sweep=u"],
                   cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "1 job(s) of the sweep failed" in proc.stderr
    statuses = sorted(json.loads(m.read_text())["status"]
                      for m in (tmp_path / "outputs" / "sweeps" / "u").glob("*/metrics.json"))
    assert statuses == ["completed", "failed"]


def test_a_sweep_over_a_run_control_setting_is_refused(tmp_path: Path, tiny_root: Path) -> None:
    proc = run_cli(["-m", *tiny_overrides(tiny_root, "mt", updates=4), "trainer.max_updates=2,4"], cwd=tmp_path,
                   check=False)
    assert proc.returncode == 2
    _one_line(proc, "train", "config", "the sweep varies trainer.max_updates")
    assert not (tmp_path / "outputs").exists()


def test_a_relaunch_that_fails_to_start_keeps_the_finished_record(tmp_path: Path, tiny_root: Path) -> None:
    args = tiny_overrides(tiny_root, "mt", updates=4)
    run_cli(args, cwd=tmp_path)
    before = _snapshot(tmp_path / RUN)
    proc = run_cli([*args, "trainer.resume=true", "trainer.max_updates=6", f"task.data.root={tmp_path / 'moved'}"],
                   cwd=tmp_path, check=False)
    assert proc.returncode == 3
    _one_line(proc, "train", "data", "moved")
    assert _snapshot(tmp_path / RUN) == before  # still completed, config.yaml unchanged


def test_a_failed_sweep_job_never_writes_into_a_locked_folder(tmp_path: Path, tiny_root: Path) -> None:
    args = ["-m", *tiny_overrides(tiny_root, "mt", updates=4), "model.heads=3,2", "sweep=busy"]
    sweep = tmp_path / "outputs" / "sweeps" / "busy"
    heads3 = next(sweep.glob("*model.heads=3*"), None)
    assert heads3 is None
    run_cli(args, cwd=tmp_path, check=False)  # learn the invalid job's folder name
    heads3 = next(sweep.glob("*model.heads=3*"))
    (heads3 / "metrics.json").unlink()
    with RunFolderLock(heads3):  # another process holds it
        proc = run_cli(args, cwd=tmp_path, check=False)
    assert proc.returncode == 2 and not (heads3 / "metrics.json").exists()


def test_a_sequence_beyond_learned_positions_in_translation_is_one_line(tmp_path: Path, tiny_root: Path) -> None:
    """max_len filters training only and beam search can run longer, so this cannot all be checked at startup: the
    model's own check says it in one line and the run is marked failed."""
    proc = run_cli([*tiny_overrides(tiny_root, "mt", updates=4), "model.positions=learned", "model.max_positions=16",
                    "task.data.max_len=null"], cwd=tmp_path, check=False)
    assert proc.returncode == 2
    _one_line(proc, "train", "config", "exceeds model.max_positions=16")
    assert json.loads((tmp_path / RUN / "metrics.json").read_text())["status"] == "failed"


def test_restore_never_writes_beside_a_live_process(tmp_path: Path) -> None:
    archive, sweep = tmp_path / "archive" / "job", tmp_path / "sweep" / "job"
    archive.mkdir(parents=True)
    (archive / "metrics.json").write_text(json.dumps({"status": "completed"}))
    sweep.mkdir(parents=True)
    (sweep / "train.log").write_text("live\n")
    script = str(REPO / "scripts" / "archive_runs.py")
    with RunFolderLock(sweep):
        proc = subprocess.run([sys.executable, script, "--restore", str(tmp_path / "archive"), str(tmp_path / "sweep")],
                              env=env(), capture_output=True, text=True)
    assert proc.returncode == 0 and "restored 0" in proc.stdout and "in use" in proc.stderr
    assert (sweep / "train.log").read_text() == "live\n" and not (sweep / "metrics.json").exists()


def test_wrapped_file_system_errors_and_lock_failures_are_one_line(tmp_path: Path, monkeypatch) -> None:
    """A read-only run folder reaches us wrapped by logging ('Unable to configure handler'); a file system without
    locks answers ENOLCK: both are 'file' errors naming the path, and the lock's file descriptor is closed."""
    import errno
    import fcntl

    from kernel_attention import cli
    from kernel_attention.training import lock as lock_mod

    try:
        try:
            raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "train.log"))
        except OSError as inner:
            raise ValueError("Unable to configure handler 'file'") from inner
    except ValueError as wrapped:
        assert cli.error_kind(wrapped) == "file"
        assert cli.one_line(wrapped).startswith(f"cannot access {tmp_path / 'train.log'}: Read-only file system")

    def no_locks(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(lock_mod.fcntl, "flock", no_locks)
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(OSError) as err:
        RunFolderLock(tmp_path).acquire()
    assert len(os.listdir("/proc/self/fd")) == before  # no descriptor leaked
    assert cli.error_kind(err.value) == "file" and str(tmp_path / ".lock") in cli.one_line(err.value)
    assert fcntl  # the real module is untouched outside lock.py
