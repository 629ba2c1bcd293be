#!/usr/bin/env python
"""Attention micro-benchmark: every kernel preset × path × role × sequence length.

    OMP_NUM_THREADS=1 python scripts/benchmark_attention.py                      # full CPU sweep (< 15 min)
    python scripts/benchmark_attention.py --kernels edp taylor --lengths 1024 --roles noncausal
    python scripts/benchmark_attention.py --device cuda --dtype bfloat16          # GPU sweep
    python scripts/benchmark_attention.py --quick --out /tmp/bench                # smoke test (seconds)

For each (kernel, path, role, T) it times the forward pass and forward+backward (median of repeats after a
warm-up) and measures the peak bytes of tensors the forward+backward allocates (see kernel_attention.benchmarks).
Ratios are taken against numbers from the same run: ``x_exact`` = exact path time / this time (fwd+bwd),
``mem_frac_exact`` = this peak / exact peak, ``x_edp_sdpa`` = edp-through-SDPA time / this time (> 1: faster than
softmax attention). ``no_5d`` checks that no single allocation reached the size of a (B, H, Tq, Tk, D) tensor.

Roles: ``noncausal`` (encoder self-attention), ``causal`` (decoder self-attention), ``cross`` (decoder→encoder:
Tq = Tk = T with the last quarter of the keys padded in half the batch, so the masked code paths run).
The exact path is skipped — reported as "skipped (OOM risk)" — when its estimated memory (a few (B, H, T, T)
tensors) exceeds ``--memory-budget-gb`` (0.5 GiB by default, which keeps the CPU sweep under 15 minutes on a
shared machine: exact is skipped from T = 2048 on, and still runs at T = 1024, where the targets are). A path
whose ``--repeats`` runs would take longer than ``--max-seconds`` is timed once.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from kernel_attention.benchmarks import (
    DTYPES,
    kernel_presets,
    machine_info,
    median_time,
    peak_memory_bytes,
    write_tables,
)
from kernel_attention.kernels import build_kernel
from kernel_attention.kernels.base import Kernel
from kernel_attention.training.cpu_malloc import keep_freed_memory

REPO = Path(__file__).resolve().parents[1]
ROLES = ("noncausal", "causal", "cross")
COLUMNS = [
    "kernel", "path", "runs", "role", "T", "fwd_ms", "fwd_bwd_ms", "peak_mb", "largest_alloc_mb", "no_5d",
    "x_exact", "mem_frac_exact", "x_edp_sdpa", "repeats", "status",
]
# Tensors of shape (B, H, T, T) the exact path holds at its peak (scores, weights, their gradients, ...):
# measured 4–7 on CPU, so 8 is a safe over-estimate for the OOM guard.
EXACT_TT_TENSORS = 8


def paths_of(kern: Kernel, device: str) -> list[str]:
    paths = ["exact", "fast"]
    # FlexAttention trains only on CUDA (no CPU backward); opt-in kernels that can express log κ get a row there.
    if torch.device(device).type == "cuda":
        x = torch.zeros(1, 1, 1, kern.head_dim, device=device)  # (1, 1, 1, D): the score_mod may capture norms
        if kern.flex_score_mod(x, x) is not None:
            paths.append("flex")
    # A separate linear row only where it differs from fast and applies to the preset's normaliser.
    if kern.has_feature_map and kern.default_path != "linear" and not (
        kern.can_be_negative and kern.normalization == "abs"
    ):
        paths.append("linear")
    return paths


def what_runs(kern: Kernel, path: str) -> str:
    """Human name of the implementation behind a path (e.g. fast = SDPA for edp, tiled for ei)."""
    if path == "fast":
        if type(kern).fast is not Kernel.fast:
            return "sdpa" if kern.name in ("edp", "rbf") else "linear (φ)"
        return "tiled"
    return {"exact": "materialised κ", "linear": "linear (φ)", "flex": "flex_attention"}.get(path, path)


def make_inputs(B: int, H: int, T: int, D: int, role: str, dtype: torch.dtype, device: str):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, T, D, generator=g).to(device, dtype).requires_grad_() for _ in range(3))
    kpm = None
    if role == "cross":
        kpm = torch.zeros(B, T, dtype=torch.bool)  # (B, Tk) True = padding
        kpm[: max(1, B // 2), T - T // 4 :] = True
        kpm = kpm.to(device)
    return q, k, v, kpm


def bench_one(kern: Kernel, path: str, role: str, T: int, args: argparse.Namespace) -> dict:
    B, H, D = args.batch, args.heads, args.head_dim
    dtype = DTYPES[args.dtype]
    q, k, v, kpm = make_inputs(B, H, T, D, role, dtype, args.device)
    causal = role == "causal"

    def fwd() -> None:
        with torch.no_grad():
            kern(q, k, v, causal=causal, key_padding_mask=kpm, path=path)

    def fwd_bwd() -> None:
        out = kern(q, k, v, causal=causal, key_padding_mask=kpm, path=path)  # (B, H, T, D)
        out.backward(grad_out)
        q.grad = k.grad = v.grad = None

    grad_out = torch.randn(B, H, T, D, generator=torch.Generator().manual_seed(1)).to(args.device, dtype)
    # The first call doubles as warm-up and as the probe that decides how many repeats fit in the time cap.
    t0 = time.perf_counter()
    fwd_bwd()
    first = time.perf_counter() - t0
    reps = args.repeats if first * args.repeats <= args.max_seconds else 1
    row = {"repeats": reps}
    row["fwd_ms"] = 1e3 * median_time(fwd, repeats=reps, warmup=1 if reps > 1 else 0, device=args.device)
    row["fwd_bwd_ms"] = 1e3 * median_time(fwd_bwd, repeats=reps, warmup=0, device=args.device)
    if not args.no_memory:
        peak, largest = peak_memory_bytes(fwd_bwd, device=args.device)
        row["peak_mb"] = peak / 2**20
        row["largest_alloc_mb"] = None if largest is None else largest / 2**20
        five_d = B * H * T * T * D * torch.tensor([], dtype=dtype).element_size()
        row["no_5d"] = None if largest is None else largest < five_d
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kernels", nargs="+", help="preset names (conf/kernel/*.yaml stems); default: all")
    ap.add_argument("--lengths", nargs="+", type=int, default=[64, 256, 1024, 2048, 4096])
    ap.add_argument("--roles", nargs="+", choices=ROLES, default=list(ROLES))
    ap.add_argument("--paths", nargs="+", choices=("exact", "fast", "linear", "flex"),
                    default=["exact", "fast", "linear", "flex"], help="flex runs on CUDA only")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=64, help="64 = transformer_small and the paper model")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--no-keep-freed-memory", action="store_true",
                    help="leave glibc malloc's mmap/trim defaults (train.py tunes them on CPU)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-seconds", type=float, default=8.0, help="time cap per measurement before 1 repeat")
    ap.add_argument("--memory-budget-gb", type=float, default=0.5,
                    help="skip exact above this estimate (default keeps the CPU sweep under 15 min)")
    ap.add_argument("--no-memory", action="store_true", help="skip the (profiler) peak-memory runs")
    ap.add_argument("--quick", action="store_true", help="smoke test: tiny sizes, 1 repeat")
    ap.add_argument("--out", type=Path, default=REPO / "experiments" / "benchmarks")
    ap.add_argument("--name", default="attention", help="output file stem")
    args = ap.parse_args(argv)
    if args.quick:
        args.lengths, args.batch, args.heads, args.head_dim, args.repeats = [16, 64], 1, 2, 8, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cpu" and not args.no_keep_freed_memory:
        # As train.py on CPU (training/cpu_malloc.py). Without it glibc mmaps each fresh 32 MiB (B, H, T, T)
        # tensor of the exact path at T = 1024 or not, depending on its dynamic threshold's history: the same
        # exact run measured 151 or 282 ms (quadratic, cross) in two processes — the ratios became bimodal.
        keep_freed_memory()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda but CUDA is not available")

    itemsize = torch.tensor([], dtype=DTYPES[args.dtype]).element_size()
    rows: list[dict] = []
    sdpa: dict[tuple[str, int], float] = {}  # (role, T) -> edp fast fwd+bwd ms, this run
    for label, name, params in kernel_presets(REPO / "conf", args.kernels):
        # The benchmark picks each path itself, so a preset's own `path` option is dropped.
        params = {k: v for k, v in params.items() if k != "path"}
        kern = build_kernel(name, args.head_dim, params, heads=args.heads).to(args.device)
        for role in args.roles:
            for T in args.lengths:
                exact_ms = exact_mb = None
                for path in [p for p in paths_of(kern, args.device) if p in args.paths or p == "exact"]:
                    row = {"kernel": label, "path": path, "runs": what_runs(kern, path), "role": role, "T": T}
                    est = EXACT_TT_TENSORS * args.batch * args.heads * T * T * max(itemsize, 4)
                    if path == "exact" and est > args.memory_budget_gb * 2**30:
                        row["status"] = "skipped (OOM risk)"
                    elif path == "exact" and "exact" not in args.paths:
                        continue
                    else:
                        try:
                            row.update(bench_one(kern, path, role, T, args))
                            row["status"] = "ok"
                        except (RuntimeError, MemoryError) as e:  # a real OOM: report it, keep going
                            row["status"] = f"failed: {type(e).__name__}: {str(e)[:60]}"
                    if path == "exact" and row["status"] == "ok":
                        exact_ms, exact_mb = row["fwd_bwd_ms"], row.get("peak_mb")
                    if label == "edp" and path == "fast" and row["status"] == "ok":
                        sdpa[(role, T)] = row["fwd_bwd_ms"]
                    if row["status"] == "ok":
                        if exact_ms is not None and path != "exact":
                            row["x_exact"] = exact_ms / row["fwd_bwd_ms"]
                            if exact_mb and row.get("peak_mb") is not None:
                                row["mem_frac_exact"] = row["peak_mb"] / exact_mb
                        if (role, T) in sdpa:
                            row["x_edp_sdpa"] = sdpa[(role, T)] / row["fwd_bwd_ms"]
                    rows.append(row)
                    print(" ".join(f"{c}={row.get(c)}" for c in COLUMNS if row.get(c) is not None), flush=True)

    info = machine_info(args.device)
    info.update(keep_freed_memory=args.device == "cpu" and not args.no_keep_freed_memory,
                batch=args.batch, heads=args.heads, head_dim=args.head_dim, dtype=args.dtype,
                command="python " + " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]))
    notes = [
        "Times in ms (median); peak_mb = peak bytes of tensors allocated during forward+backward (torch.profiler "
        "memory events on CPU, max_memory_allocated on CUDA), inputs excluded.",
        "x_exact = exact fwd+bwd / this fwd+bwd; mem_frac_exact = this peak / exact peak; x_edp_sdpa = edp (SDPA) "
        "fwd+bwd / this fwd+bwd, same role and T, same run.",
    ]
    csv_path, md_path = write_tables(rows, COLUMNS, args.out / args.name, title="Attention benchmark",
                                     header=info, notes=notes)
    print(f"wrote {csv_path} and {md_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
