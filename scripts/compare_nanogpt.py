#!/usr/bin/env python
"""Our edp LM against nanoGPT's CPU Shakespeare configuration, side by side on this machine (issue 16).

    python scripts/compare_nanogpt.py --nanogpt /path/to/nanoGPT --out experiments/kernels_lm/nanogpt
    python scripts/compare_nanogpt.py --nanogpt /path/to/nanoGPT --updates 40 --out /tmp/cmp   # smoke (1 min)

nanoGPT (Karpathy; a checkout the user provides, used unchanged and never imported) runs its README command:
4 layers, 4 heads, d 128, block 64, batch 12, lr 1e-3 cosine to 1e-4 over the run, warm-up 100, β₂ 0.99,
dropout 0, AdamW weight decay 0.1, clip 1.0, no compile, ``--eval_iters=20``, on its own character split of
the same file (first 90 % train, last 10 % validation — ours is the same split, ``conf/task/tinyshakespeare.yaml``).
Ours runs the same sizes and schedule with ``model=lm_small`` overrides (its init: ``model.init=gpt2``).

Both run one after the other (or with ``--concurrent`` at the same time, so that a busy machine loads both
alike) in this process's environment with the same thread count each (``--threads``), each
timed from process start to exit (``wall_s``, start-up and evaluation included) and by its own training clock
in updates only (nanoGPT: its per-iteration times, less the iterations that
begin with an evaluation; ours: ``train.train_tokens / train.tokens_per_s``). Validation loss is nats per character
at the same updates: nanoGPT's estimate from 20 random batches (≈ 15 k characters, standard error ≈ 0.01), ours
over the whole validation split (111 k characters). The table goes to ``<out>/comparison.md`` and ``.json``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kernel_attention.cli import ArgumentParser, positive_int, run
from kernel_attention.data import DataError
from kernel_attention.training.atomic import write_json, write_text

REPO = Path(__file__).resolve().parents[1]
OURS = ["kernel=edp", "task=tinyshakespeare", "model=lm_small", "model.decoder_layers=4", "model.d_model=128",
        "model.heads=4", "model.ffn_dim=512", "model.dropout=0.0", "task.block_size=64", "task.max_tokens=768",
        "optim=adam_cosine", "optim.betas=[0.9,0.99]", "optim.warmup_updates=100", "trainer.evaluate_at_end=false",
        "trainer.progress_bar=false", "logger=none"]
NANOGPT = ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20",
           "--log_interval=1", "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128",
           "--dropout=0.0"]


def _timed(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> float:
    start = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd[:3])} … exited {proc.returncode}; see {log}")
    return time.perf_counter() - start


def prepare_nanogpt(src: Path, work: Path, corpus: Path, env: dict[str, str]) -> Path:
    tree = work / "nanogpt"
    shutil.copytree(src, tree, ignore=shutil.ignore_patterns(".git", "out-*"))
    shutil.copy(corpus, tree / "data" / "shakespeare_char" / "input.txt")  # prepare.py then skips its download
    _timed([sys.executable, "data/shakespeare_char/prepare.py"], tree, env, work / "nanogpt_prepare.log")
    return tree


def run_nanogpt(tree: Path, work: Path, updates: int, interval: int, env: dict[str, str]) -> dict:
    args = [*NANOGPT, f"--max_iters={updates}", f"--lr_decay_iters={updates}", f"--eval_interval={interval}",
            f"--out_dir={work / 'nanogpt_out'}"]
    log = work / "nanogpt_train.log"
    wall = _timed([sys.executable, "train.py", *args], tree, env, log)
    text = log.read_text()
    valid = {int(s): float(v) for s, v in re.findall(r"step (\d+): train loss [\d.]+, val loss ([\d.]+)", text)}
    # An iteration that starts with an evaluation (and checkpoint) times both: keep the update-only iterations.
    iters = [(int(i), float(t)) for i, t in re.findall(r"iter (\d+): loss [\d.]+, time ([\d.]+)ms", text)]
    train_ms = sum(t for i, t in iters if i % interval)
    return {"valid_loss": valid, "train_s": train_ms / 1000, "wall_s": wall, "command": ["train.py", *args]}


def _our_args(work: Path, updates: int, interval: int) -> list[str]:
    return [*OURS, f"trainer.max_updates={updates}", f"trainer.validate_interval_updates={interval}",
            f"hydra.run.dir={work / 'ours'}", f"task.data.out_root={work / 'data'}"]


def prepare_ours(work: Path, env: dict[str, str]) -> None:
    _timed([sys.executable, str(REPO / "scripts" / "prepare_data.py"), "task=tinyshakespeare",
            f"task.data.out_root={work / 'data'}"], work, env, work / "ours_prepare.log")


def run_ours(work: Path, updates: int, interval: int, env: dict[str, str]) -> dict:
    args = _our_args(work, updates, interval)
    wall = _timed([sys.executable, str(REPO / "train.py"), *args], work, env, work / "ours_train.log")
    m = json.loads((work / "ours" / "metrics.json").read_text())
    valid = {h["update"]: h["loss"] for h in m["valid"]["history"]}
    train_s = m["train"]["train_tokens"] / m["train"]["tokens_per_s"]  # time in updates, validation excluded
    return {"valid_loss": valid, "train_s": train_s, "run_wall_s": m["train"]["wall_time_s"], "wall_s": wall,
            "command": ["python train.py", *args[:-2]], "status": m["status"]}


def table(nano: dict, ours: dict, threads: int, concurrent: bool) -> str:
    steps = sorted(set(nano["valid_loss"]) & set(ours["valid_loss"]))
    how = "at the same time" if concurrent else "one after the other"
    lines = [f"Validation loss (nats/char) at equal updates; {threads} thread(s) each, same machine, {how}.",
             "", "| update | nanoGPT | ours (edp) | ours − nanoGPT |", "|---:|---:|---:|---:|"]
    for s in steps:
        a, b = nano["valid_loss"][s], ours["valid_loss"][s]
        lines.append(f"| {s} | {a:.4f} | {b:.4f} | {b - a:+.4f} |")
    lines += ["", "| | nanoGPT | ours |", "|---|---:|---:|",
              f"| time in updates (s) | {nano['train_s']:.1f} | {ours['train_s']:.1f} |",
              f"| process wall time (s) | {nano['wall_s']:.1f} | {ours['wall_s']:.1f} |"]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nanogpt", type=Path, required=True, help="a nanoGPT checkout (karpathy/nanoGPT)")
    p.add_argument("--out", type=Path, required=True, help="folder for comparison.md/.json and both logs")
    p.add_argument("--updates", type=positive_int, default=2000)
    p.add_argument("--interval", type=positive_int, default=250, help="validate every this many updates")
    p.add_argument("--threads", type=positive_int, default=2, help="threads for each of the two")
    p.add_argument("--concurrent", action="store_true",
                   help="run both at once (use --threads 1 on 2 cores): on a busy machine both then see the same load")
    args = p.parse_args()
    if not all((args.nanogpt / f).is_file() for f in ("train.py", "config/train_shakespeare_char.py")):
        raise DataError(f"{args.nanogpt} is not a nanoGPT checkout (no train.py / config/train_shakespeare_char.py); "
                        "pass --nanogpt the folder of `git clone https://github.com/karpathy/nanoGPT`")
    root = os.environ.get("KA_DATA_ROOT", str(REPO.parent / "shared" / "data"))
    corpus = Path(root) / "tinyshakespeare" / "input.txt"
    if not corpus.is_file():
        raise DataError(f"{corpus} not found; set KA_DATA_ROOT to the folder holding tinyshakespeare/input.txt")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "KA_DATA_ROOT": root, "WANDB_MODE": "disabled"}
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ka_nanogpt_") as tmp:
        work = Path(tmp)
        tree = prepare_nanogpt(args.nanogpt, work, corpus, env)
        prepare_ours(work, env)  # both prepared before either clock starts
        jobs = (lambda: run_nanogpt(tree, work, args.updates, args.interval, env),
                lambda: run_ours(work, args.updates, args.interval, env))
        if args.concurrent:  # the same load on both, whatever else the machine runs
            with ThreadPoolExecutor(2) as pool:
                nano, ours = (f.result() for f in [pool.submit(j) for j in jobs])
        else:
            nano, ours = (j() for j in jobs)
        for log in ("nanogpt_train.log", "ours_train.log"):
            shutil.copy(work / log, args.out / log)
    md = table(nano, ours, args.threads, args.concurrent)
    write_text(args.out / "comparison.md", md)
    write_json(args.out / "comparison.json", {"threads": args.threads, "concurrent": args.concurrent,
                                              "updates": args.updates, "nanogpt": nano, "ours": ours})
    print(md, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(run("compare_nanogpt", main))
