#!/usr/bin/env python
"""The bad-input battery (issue 12): run every entry point with bad input, as a demanding new user would, and
check that each case ends with ONE line on stderr, ``<prog>: <kind> error: ...`` naming the problem, the exit code
of its kind (kernel_attention.cli: 2 config, 3 data, 4 run folder, 5 file system), and nothing of an earlier run
touched. Re-run it after any change to the entry points:

    python scripts/bad_inputs.py                 # every case (≈ 3 min on 2 CPU cores), a table, exit 1 if any fails
    python scripts/bad_inputs.py --only lock     # the cases whose name contains 'lock'
    python scripts/bad_inputs.py --list          # the cases, without running them

It works in a temporary folder: a tiny synthetic corpus (tests/test_train_support.py's), a completed run, an
interrupted run and a diverged run are made first; cases then run against copies of them and compare every file
of the run they aim at before and after.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from test_train_support import tiny_overrides, write_tiny_corpora  # noqa: E402  (test helpers, not a package)

from kernel_attention.cli import EXIT_CODES as CODES  # noqa: E402


@dataclass
class Case:
    name: str
    prog: str  # train | evaluate | translate | sample | prepare_data | report | diagnose
    args: list[str]
    kind: str  # the expected error kind
    needle: str  # must appear in the one line
    env: dict[str, str] = field(default_factory=dict)
    protect: str = ""  # a fixture run ('completed', 'interrupted', 'diverged') whose files must not change
    setup: str = ""  # a named preparation step run before the command


def cases(work: Path) -> list[Case]:
    """Every case; ``work`` holds the corpus (``corpus/``) and the fixture runs (``runs/<name>``)."""
    corpus = work / "corpus"
    mt = tiny_overrides(corpus, "mt", updates=4)
    lm = tiny_overrides(corpus, "lm", updates=4)
    run = {name: work / "runs" / name for name in ("completed", "interrupted", "diverged")}

    def at(name: str) -> str:
        return f"hydra.run.dir={run[name]}"

    out: list[Case] = []
    add = out.append
    # -- train: settings -----------------------------------------------------------------------------------
    for key, value, needle in [
        ("optim.lr", "nan", "finite"), ("optim.lr", "inf", "finite"), ("optim.lr", "-1", "optim.lr=-1"),
        ("optim.lr", "abc", "optim.lr"), ("optim.betas", "[0.9]", "betas"), ("optim.betas", "[0.9,nan]", "finite"),
        ("optim.warmup_updates", "-5", "warmup"), ("optim.label_smoothing", "1.5", "label_smoothing"),
        ("optim.schedule", "magic", "optim.schedule"), ("optim.weight_decay", "nan", "finite"),
        ("model.heads", "3", "must divide"), ("model.dropout", "nan", "finite"), ("model.d_model", "0", "d_model"),
        ("model.positions", "rotary", "positions"), ("model.activation", "swish", "activation"),
        ("trainer.max_updates", "0", "no limit"), ("trainer.device", "tpu", "trainer.device"),
        ("trainer.precision", "fp8", "precision"), ("trainer.eval_checkpoint", "worst", "eval_checkpoint"),
        ("trainer.validate_interval_updates", "0", "validate_interval"), ("trainer.max_wall_time", "nan", "finite"),
        ("trainer.best_metric", "accuracy", "best_metric"), ("task.max_tokens", "0", "max_tokens"),
        ("task.update_freq", "0", "update_freq"), ("task.max_len_a", "inf", "finite"),
        ("task.data.vocab_size", "-3", "vocab_size"), ("task.data.spm_model_type", "wordpiece", "spm_model_type"),
        ("kernel.path", "magic", "kernel.path"), ("seed", "one", "seed"), ("logger.mode", "bogus", "logger.mode"),
    ]:
        add(Case(f"train {key}={value}", "train", [*mt, f"{key}={value}"], "config", needle))
    for kernel, key, value, needle in [
        ("polynomial", "p", "0", ">= 1"), ("polynomial", "eps", "nan", "finite"), ("taylor", "p", "3", "even"),
        ("random_features", "m", "0", ">= 1"), ("rff", "m", "7", "even"), ("hedgehog", "m", "0", ">= 1"),
        ("cosformer", "M", "0", ">= 1"), ("laplacian", "scale", "-1", "> 0"), ("intersection", "normalization", "l2",
                                                                                "sum, abs"),
    ]:
        add(Case(f"train kernel={kernel} {key}={value}", "train", [*mt, f"kernel={kernel}", f"kernel.{key}={value}"],
                 "config", needle))
    add(Case("train unknown kernel", "train", [*mt, "kernel=nope"], "config", "Could not find 'kernel/nope'"))
    add(Case("train unknown option", "train", [*mt, "+optim.momentum=0.9"], "config", "momentum"))
    add(Case("train unknown task", "train", [*mt, "task=nosuch"], "config", "Could not find 'task/nosuch'"))
    add(Case("train lm preset on translation", "train", [*mt, "model=lm_small"], "config", "has no encoder"))
    add(Case("train block_size > learned positions", "train",
             [*lm, "model=lm_small", "model.max_positions=16", "task.block_size=32"], "config", "max_positions"))
    add(Case("train cosine without max_updates", "train", [*mt, "optim.schedule=cosine", "trainer.max_updates=0",
                                                           "trainer.max_epochs=1"], "config", "cosine"))
    add(Case("train bad override syntax", "train", [*mt, "optim.lr=="], "config", "optim.lr"))
    # -- train: data ------------------------------------------------------------------------------------------
    add(Case("train missing corpus", "train", [*mt, "task.data.path=nowhere"], "data", "nowhere"))
    add(Case("train empty KA_DATA_ROOT", "train", ["logger=none"], "config", "KA_DATA_ROOT",
             env={"KA_DATA_ROOT": ""}))
    add(Case("train iwslt without train split", "train", ["logger=none", "task=iwslt"], "data", "train"))
    add(Case("train one-line corpus, big BPE vocab", "train",
             [*[a for a in mt if not a.startswith(("task.data.spm_model_type", "task.data.vocab_size",
                                                    "task.data.path"))],
              "task.data.path=oneline", "task.data.vocab_size=8000"], "data", "vocab_size"))
    # -- train: run folders -----------------------------------------------------------------------------------
    add(Case("train completed run, changed config", "train", [*mt, at("completed"), "optim.lr=1e-3"], "config",
             "holds a completed run with a different config", protect="completed"))
    add(Case("train interrupted run, changed config", "train",
             [*mt, at("interrupted"), "trainer.max_updates=1000", "model.dropout=0.3"], "config",
             "different config (model.dropout)", protect="interrupted"))
    add(Case("train diverged run, changed config", "train", [*mt, at("diverged"), "optim.lr=1e-3"], "config",
             "holds a diverged run", protect="diverged"))
    add(Case("train resume=false on a used folder", "train", [*mt, at("completed"), "trainer.resume=false"],
             "config", "refuses to overwrite", protect="completed"))
    add(Case("train resume=true without checkpoint", "train", [*mt, f"hydra.run.dir={work / 'empty_run'}",
                                                               "trainer.resume=true"], "config", "does not exist"))
    add(Case("train folder locked by another process", "train", [*mt, at("interrupted"),
                                                                 "trainer.max_updates=1000"],
             "run", "is in use by process", protect="interrupted", setup="lock:interrupted"))
    add(Case("train corrupt last.pt", "train", [*mt, f"hydra.run.dir={work / 'corrupt'}", "trainer.max_updates=1000"],
             "config", "cannot load", setup="corrupt"))
    add(Case("train run folder under a file", "train", [*mt, f"hydra.run.dir={work / 'afile' / 'run'}"], "file",
             "cannot access", setup="afile"))
    # -- evaluate -------------------------------------------------------------------------------------------------
    ev = [f"run_dir={run['completed']}"]
    add(Case("evaluate without run_dir", "evaluate", [], "config", "run_dir is missing"))
    add(Case("evaluate run_dir not a folder", "evaluate", [f"run_dir={work / 'nope'}"], "config", "not a folder"))
    add(Case("evaluate folder that is no run", "evaluate", [f"run_dir={work}"], "run", "not a run folder"))
    for key, value, kind, needle in [
        ("checkpoint", "worst", "config", "checkpoint='worst'"),
        ("beam", "five", "config", "beam"), ("beam", "0", "config", "beam"), ("lenpen", "nan", "config", "finite"),
        ("device", "cuda", "config", "CUDA"), ("device", "quantum", "config", "device"),
        ("split", "train2", "run", "split='train2'"), ("max_len_a", "inf", "config", "finite"),
        ("bogus", "1", "config", "bogus"),
    ]:
        if key == "device" and value == "cuda" and _has_cuda():
            continue
        prefix = "+" if key == "bogus" else ""
        add(Case(f"evaluate {key}={value}", "evaluate", [*ev, f"{prefix}{key}={value}"], kind, needle,
                 protect="completed"))
    add(Case("evaluate diverged run", "evaluate", [f"run_dir={run['diverged']}"], "run", "best.pt",
             protect="diverged"))
    add(Case("evaluate missing avg.pt", "evaluate", [f"run_dir={run['diverged']}", "checkpoint=avg"], "run",
             "avg.pt not found", protect="diverged"))
    add(Case("evaluate folder locked", "evaluate", [f"run_dir={run['interrupted']}", "checkpoint=last"], "run",
             "is in use by process", protect="interrupted", setup="lock:interrupted"))
    add(Case("evaluate corrupt checkpoint", "evaluate", [f"run_dir={work / 'corrupt'}", "checkpoint=last"], "run",
             "cannot be loaded", setup="corrupt"))
    mt_test = work / "corpus" / "mt" / "test"
    for name, args, kind, needle in [
        ("without ref", [f"test_sets.x.src={mt_test}.de"], "config", "needs src=<source file> and ref="),
        ("missing file", [f"test_sets.x.src={work / 'nope.de'}", f"test_sets.x.ref={mt_test}.en"], "data",
         "not found"),
        ("misaligned", [f"test_sets.x.src={mt_test}.de", f"test_sets.x.ref={work / 'corpus' / 'lm.txt'}"], "data",
         "aligned line by line"),
        ("unknown sacrebleu set", ["test_sets.x.sacrebleu=wmt99"], "config", "not a sacreBLEU test set"),
        ("unknown field", ["test_sets.x.srcc=a"], "config", "srcc"),
        ("not UTF-8", [f"test_sets.x.src={work / 'latin1.txt'}", f"test_sets.x.ref={work / 'latin1.txt'}"], "data",
         "not valid UTF-8"),
    ]:
        add(Case(f"evaluate test set {name}", "evaluate", [*ev, *args], kind, needle, protect="completed",
                 setup="latin1"))
    # -- translate / sample -----------------------------------------------------------------------------------
    add(Case("translate without run_dir", "translate", [], "config", "run_dir is missing"))
    add(Case("translate beam=0", "translate", [*ev, "beam=0"], "config", "beam must be >= 1", protect="completed"))
    add(Case("translate missing input", "translate", [*ev, f"input={work / 'nope.de'}"], "config", "not a file",
             protect="completed"))
    add(Case("translate input not UTF-8", "translate", [*ev, f"input={work / 'latin1.txt'}"], "data",
             "line 1 is not valid UTF-8", protect="completed", setup="latin1"))
    add(Case("sample a translation run", "sample", ev, "config", "does not sample text", protect="completed"))
    add(Case("sample temperature=-1", "sample", [*ev, "temperature=-1"], "config", "temperature",
             protect="completed"))
    # -- prepare_data -----------------------------------------------------------------------------------------
    add(Case("prepare unknown task", "prepare_data", ["task=nosuch"], "config", "Available options in 'task'"))
    add(Case("prepare missing files", "prepare_data", [f"task.data.root={work}", "task.data.path=nowhere"], "data",
             "nowhere"))
    add(Case("prepare empty KA_DATA_ROOT", "prepare_data", ["task=multi30k"], "config", "KA_DATA_ROOT",
             env={"KA_DATA_ROOT": ""}))
    add(Case("prepare bad split fractions", "prepare_data",
             ["task=tinyshakespeare", "task.data.split_fractions=[0.9,0.5]"], "config", "split_fractions"))
    add(Case("prepare wikitext2 without train split", "prepare_data", ["task=wikitext2"], "data", "train"))
    # -- report -----------------------------------------------------------------------------------------------
    add(Case("report missing folder", "report", [str(work / "nope")], "run", "does not exist"))
    add(Case("report folder without runs", "report", [str(work / "corpus")], "run", "no metrics.json"))
    add(Case("report negative bootstrap", "report", [str(work / "runs"), "--bootstrap-samples", "-5"], "config",
             ">= 1"))
    add(Case("report non-integer seed", "report", [str(work / "runs"), "--seed", "x"], "config", "--seed"))
    add(Case("report unknown flag", "report", [str(work / "runs"), "--frobnicate"], "config", "frobnicate"))
    add(Case("report out under a file", "report", [str(work / "runs"), "--out", str(work / "afile" / "r"),
                                                   "--no-plots"], "file", "cannot access", setup="afile"))
    # -- diagnose (issue 11) ----------------------------------------------------------------------------------
    add(Case("diagnose missing folder", "diagnose", [str(work / "nope")], "run", "is not a folder"))
    add(Case("diagnose folder without runs", "diagnose", [str(work / "corpus")], "run", "no run folder"))
    add(Case("diagnose run without checkpoint", "diagnose", [str(run["diverged"]), "checkpoint=avg"], "run",
             "avg.pt not found", protect="diverged"))
    add(Case("diagnose n=0", "diagnose", [str(run["completed"]), "n=0"], "config", "n=0", protect="completed"))
    add(Case("diagnose unknown option", "diagnose", [str(run["completed"]), "bogus=1"], "config", "bogus",
             protect="completed"))
    add(Case("diagnose unknown role", "diagnose", [str(run["completed"]), "roles=decoder"], "config", "roles=",
             protect="completed"))
    add(Case("diagnose folder locked", "diagnose", [str(run["interrupted"]), "checkpoint=last"], "run",
             "is in use by process", protect="interrupted", setup="lock:interrupted"))
    add(Case("diagnose corrupt checkpoint", "diagnose", [str(work / "corrupt"), "checkpoint=last"], "run",
             "cannot be loaded", setup="corrupt"))
    return out


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


ENTRY = {"train": REPO / "train.py", "evaluate": REPO / "evaluate.py", "translate": REPO / "translate.py",
         "sample": REPO / "sample.py", "prepare_data": REPO / "scripts" / "prepare_data.py",
         "report": REPO / "scripts" / "report.py", "diagnose": REPO / "scripts" / "diagnose.py"}


def _env(extra: dict[str, str], work: Path) -> dict[str, str]:
    e = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "KA_DATA_ROOT": str(work / "corpus")}
    e.pop("KA_FULL_ERROR", None)
    e.pop("HYDRA_FULL_ERROR", None)
    return {**e, **extra}


def _run(prog: str, args: list[str], work: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ENTRY[prog]), *args], cwd=work / "cwd", env=_env(env or {}, work),
                          capture_output=True, text=True, timeout=300)


def make_fixtures(work: Path) -> None:
    """The corpus and three runs: completed, interrupted (wall time, last.pt kept) and diverged."""
    write_tiny_corpora(work / "corpus")
    one = work / "corpus" / "oneline"
    one.mkdir(parents=True, exist_ok=True)
    for split in ("train", "valid", "test"):
        (one / f"{split}.de").write_text("ein hund\n")
        (one / f"{split}.en").write_text("a dog\n")
    (work / "cwd").mkdir(exist_ok=True)
    mt = tiny_overrides(work / "corpus", "mt", updates=4)
    runs = work / "runs"
    steps = {
        "completed": [*mt, f"hydra.run.dir={runs / 'completed'}"],
        "interrupted": [*mt, f"hydra.run.dir={runs / 'interrupted'}", "trainer.max_updates=1000",
                        "trainer.max_wall_time=0.01"],
        "diverged": [*mt, f"hydra.run.dir={runs / 'diverged'}", "optim.lr=1e4", "optim.warmup_updates=0",
                     "trainer.max_consecutive_skips=2", "trainer.max_updates=30"],
        "corrupt": [*mt, f"hydra.run.dir={work / 'corrupt'}", "trainer.max_updates=1000",
                    "trainer.max_wall_time=0.01"],
    }
    for name, args in steps.items():
        proc = _run("train", args, work)
        if proc.returncode != 0:
            raise SystemExit(f"fixture {name} failed: {proc.stderr[-2000:]}")
    (work / "corrupt" / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in ("train.log", ".lock")}


def run_case(case: Case, work: Path) -> tuple[bool, str]:
    """(passed, what was seen) for one case."""
    guard = work / "runs" / case.protect if case.protect else None
    before = _snapshot(guard) if guard else {}
    holder = None
    if case.setup.startswith("lock:"):
        folder = work / "runs" / case.setup.split(":", 1)[1]
        holder = subprocess.Popen([sys.executable, "-c", (
            "import time; from kernel_attention.training.lock import RunFolderLock as L; "
            f"L({str(folder)!r}).acquire(); print('held', flush=True); time.sleep(120)")],
            stdout=subprocess.PIPE, text=True)
        holder.stdout.readline()
    if case.setup == "latin1" and not (work / "latin1.txt").exists():
        (work / "latin1.txt").write_bytes("Straße\n".encode("latin-1"))
    if case.setup == "afile" and not (work / "afile").exists():
        (work / "afile").write_text("a file where a folder would go\n")
    try:
        proc = _run(case.prog, case.args, work, case.env)
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    seen = f"exit {proc.returncode}, {len(lines)} line(s): {lines[-1][:160] if lines else '(nothing)'}"
    ok = (proc.returncode == CODES[case.kind] and len(lines) == 1 and "Traceback" not in proc.stderr
          and lines[0].startswith(f"{case.prog}: {case.kind} error: ") and case.needle in lines[0])
    if guard and _snapshot(guard) != before:
        ok, seen = False, seen + " — AND IT CHANGED THE RUN'S FILES"
    return ok, seen


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help="run only the cases whose name contains this text")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (printed)")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="ka-bad-inputs-"))
    try:
        todo = [c for c in cases(work) if args.only in c.name]
        if args.list:
            for c in todo:
                print(f"{c.name:48s} {c.prog:12s} → {c.kind} ({CODES[c.kind]}): {c.needle}")
            return 0
        t0 = time.perf_counter()
        make_fixtures(work)
        failed = 0
        for c in todo:
            ok, seen = run_case(c, work)
            failed += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {c.name:48s} {seen}", flush=True)
        print(f"{len(todo) - failed}/{len(todo)} cases: one line, the right exit code, nothing touched "
              f"({time.perf_counter() - t0:.0f} s)")
        return 1 if failed else 0
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
