#!/usr/bin/env python
"""Every CUDA path of the project checked and measured in one short run (issue 14): ≤ 8 minutes on one
H100/H200, everything under one output folder, each step's result kept even when a later step fails or times out.

On a lent GPU (the ``device`` tool: the repository travels, ``../shared`` does not; see ``prepare_gpu_carry``):

    python scripts/gpu_check.py --prepare            # HERE, once: wheels (.whl/) and the raw Multi30k (.gpu/)
    # device run, carry [".whl", ".gpu"]:
    . .whl/install.sh && PYTHONPATH=src:$PYTHONPATH python3 scripts/gpu_check.py --out $OUT
    python scripts/gpu_check.py --device cpu --quick --out /tmp/gpu_dry    # HERE: the same steps as a CPU dry run

Steps (each a subprocess with its own time limit; ``summary.json`` is rewritten after every one):
1. environment: GPU, driver, CUDA, torch, the measured bf16 matmul rate;
2. the CUDA test suite (``tests/test_kernels_cuda.py``: FlexAttention and compiled paths against exact, every
   kernel, float32 and bfloat16);
3. ``benchmark_attention.py --dtype bfloat16`` at T = 1024 and 4096, every kernel × path × role;
4. ``benchmark_training.py --dtype bfloat16 --model transformer_iwslt_de_en``, without and with ``--compile``
   (tokens/s, MFU against this run's measured matmul rate, peak memory);
5. a short real training run on Multi30k (edp and the tiled ``laplacian``): autocast, checkpoint, evaluation.
Files under the output folder (the device tool returns at most 8): ``summary.json``, ``gpu_check.log`` (every
step's output), ``attention.csv``, ``training.csv``, ``training_compile.csv``, ``runs.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CARRY_DATA = REPO / ".gpu" / "data"  # raw corpora that travel with the repository (git-ignored)
STEPS = ("cuda_tests", "attention_benchmark", "training_benchmark", "training_benchmark_compile", "train_edp",
         "train_laplacian")


def prepare_gpu_carry() -> None:
    """Here, before a device run: the Hydra wheels (../shared/device/fetch-wheels.sh) and the raw Multi30k."""
    fetch = REPO.parent / "shared" / "device" / "fetch-wheels.sh"
    if fetch.is_file():
        subprocess.run(["bash", str(fetch)], cwd=REPO, check=True)
    src = Path(os.environ.get("KA_DATA_ROOT", REPO.parent / "shared" / "data")) / "multi30k"
    if not src.is_dir():
        raise SystemExit(f"{src} not found; set KA_DATA_ROOT to the raw corpora")
    shutil.copytree(src, CARRY_DATA / "multi30k", dirs_exist_ok=True)
    exclude = REPO / ".git" / "info" / "exclude"
    if exclude.parent.is_dir() and "/.gpu/" not in (exclude.read_text() if exclude.exists() else ""):
        with open(exclude, "a") as f:
            f.write("/.gpu/\n")
    print(f"ready to carry: .whl/ and {CARRY_DATA.relative_to(REPO)}/multi30k")


class Check:
    """Runs the steps, appending every step's output to one log and rewriting summary.json after each."""

    def __init__(self, out: Path, device: str, quick: bool) -> None:
        self.out, self.device, self.quick = out, device, quick
        self.log = out / "gpu_check.log"
        self.summary: dict[str, Any] = {"device": device, "quick": quick, "started": time.strftime("%F %T"),
                                        "steps": {}}
        self.tmp = Path(tempfile.mkdtemp(prefix="ka-gpu-check-"))
        out.mkdir(parents=True, exist_ok=True)
        self.log.write_text("")

    def env(self) -> dict[str, str]:
        e = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled"}
        e["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), e.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        if CARRY_DATA.is_dir() and "KA_DATA_ROOT" not in os.environ:
            e["KA_DATA_ROOT"] = str(CARRY_DATA)
        return e

    def step(self, name: str, cmd: list[str], timeout: float, **record: Any) -> bool:
        t0 = time.perf_counter()
        with open(self.log, "a") as f:
            f.write(f"\n===== {name}: {' '.join(cmd)}\n")
            f.flush()
            try:
                proc = subprocess.run(cmd, cwd=REPO, env=self.env(), stdout=f, stderr=subprocess.STDOUT,
                                      timeout=timeout)
                status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
            except subprocess.TimeoutExpired:
                status = f"timed out after {timeout:.0f} s"
            f.write(f"===== {name}: {status} in {time.perf_counter() - t0:.1f} s\n")
        self.summary["steps"][name] = {"status": status, "seconds": round(time.perf_counter() - t0, 1), **record}
        self.write_summary()
        return status == "ok"

    def write_summary(self) -> None:
        tmp = self.out / ".summary.json.tmp"
        tmp.write_text(json.dumps(self.summary, indent=2) + "\n")
        os.replace(tmp, self.out / "summary.json")

    def keep(self, produced: Path, name: str) -> None:
        if produced.is_file():
            shutil.copyfile(produced, self.out / name)


def environment(device: str) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0]}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        smi = shutil.which("nvidia-smi")
        if smi:
            q = subprocess.run([smi, "--query-gpu=driver_version,memory.total", "--format=csv,noheader"],
                               capture_output=True, text=True)
            info["driver, memory"] = q.stdout.strip()
        n = 8192
        a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
        for _ in range(3):
            a @ a
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(10):
            a @ a
        torch.cuda.synchronize()
        info["bf16_matmul_tflops"] = round(2 * n**3 * 10 / (time.perf_counter() - t0) / 1e12, 1)
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (the CPU dry run)")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu_check_out")))
    ap.add_argument("--prepare", action="store_true", help="prepare what a device run carries, then stop")
    ap.add_argument("--only", default="", help=f"comma-separated steps to run (default all: {', '.join(STEPS)})")
    args = ap.parse_args(argv)
    wanted = set(args.only.split(",")) if args.only else set(STEPS)
    if wanted - set(STEPS):
        ap.error(f"unknown step(s) {', '.join(sorted(wanted - set(STEPS)))}; choose from {', '.join(STEPS)}")
    if args.prepare:
        prepare_gpu_carry()
        return 0
    ck = Check(args.out, args.device, args.quick)
    py = sys.executable
    dtype = "float32" if args.device == "cpu" else "bfloat16"
    ck.summary["environment"] = environment(args.device)
    ck.write_summary()

    # 2. The CUDA tests (all skipped on a CPU: the dry run checks they collect and the step records it).
    junit = ck.tmp / "cuda.xml"
    if "cuda_tests" in wanted:
        ck.step("cuda_tests", [py, "-m", "pytest", "-q", "-m", "cuda", "tests/test_kernels_cuda.py", "-p",
                           "no:cacheprovider", f"--junitxml={junit}"], timeout=60 if args.quick else 200)
        ck.summary["steps"]["cuda_tests"]["counts"] = _junit_counts(junit)
        ck.write_summary()

    # 3. Attention: every kernel × path × role at the lengths the issue names.
    lengths = ["64"] if args.quick else ["1024", "4096"]
    attn = [py, "scripts/benchmark_attention.py", "--device", args.device, "--dtype", dtype, "--lengths", *lengths,
            "--out", str(ck.tmp), "--name", "attention", "--memory-budget-gb", "0.5" if args.quick else "48"]
    if args.quick:
        attn += ["--quick", "--kernels", "edp", "laplacian", "linear"]
    if "attention_benchmark" in wanted:
        ck.step("attention_benchmark", attn, timeout=60 if args.quick else 150)
        ck.keep(ck.tmp / "attention.csv", "attention.csv")

    # 4. Training throughput of the paper-size model, without and with torch.compile.
    model = "transformer_tiny" if args.quick else "transformer_iwslt_de_en"
    train = [py, "scripts/benchmark_training.py", "--device", args.device, "--dtype", dtype, "--model", model,
             "--kernels", "edp", "laplacian", "--out", str(ck.tmp)]
    if args.quick:
        train += ["--quick"]
    if "training_benchmark" in wanted:
        ck.step("training_benchmark", [*train, "--name", "training"], timeout=60 if args.quick else 100)
        ck.keep(ck.tmp / "training.csv", "training.csv")
    if "training_benchmark_compile" in wanted:
        ck.step("training_benchmark_compile", [*train, "--name", "training_compile", "--compile"], timeout=120)
        ck.keep(ck.tmp / "training_compile.csv", "training_compile.csv")

    # 5. The whole loop on CUDA: a short real Multi30k run per kernel (autocast, checkpoints, beam evaluation).
    runs: dict[str, Any] = {}
    for kernel in ("edp", "laplacian"):
        if f"train_{kernel}" not in wanted:
            continue
        run_dir = ck.tmp / "runs" / kernel
        cmd = [py, "train.py", f"kernel={kernel}", "task=multi30k", "logger=none", f"hydra.run.dir={run_dir}",
               f"task.data.out_root={ck.tmp / 'data'}", f"trainer.device={args.device}", "trainer.progress_bar=false",
               "trainer.log_interval=50"]
        cmd += (["model=transformer_tiny", "trainer.max_updates=4", "trainer.validate_interval_updates=2",
                 "task.valid_bleu_samples=4", "task.data.vocab_size=1000"] if args.quick else
                ["model=transformer_small", "trainer.max_updates=300", "trainer.validate_interval_updates=150",
                 "task.data.vocab_size=8000"])
        ck.step(f"train_{kernel}", cmd, timeout=60 if args.quick else 150)
        metrics = run_dir / "metrics.json"
        runs[kernel] = json.loads(metrics.read_text()) if metrics.is_file() else None
        (args.out / "runs.json").write_text(json.dumps(runs, indent=1) + "\n")
    failed = [n for n, s in ck.summary["steps"].items() if s["status"] != "ok"]
    ck.summary["failed_steps"] = failed
    ck.summary["finished"] = time.strftime("%F %T")
    ck.write_summary()
    shutil.rmtree(ck.tmp, ignore_errors=True)
    print(f"{len(ck.summary['steps']) - len(failed)}/{len(ck.summary['steps'])} steps ok; {args.out}/summary.json")
    return 1 if failed else 0


def _junit_counts(path: Path) -> dict[str, int]:
    if not path.is_file():
        return {}
    import xml.etree.ElementTree as ET

    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    return {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")} if suite is not None else {}


if __name__ == "__main__":
    sys.exit(main())
