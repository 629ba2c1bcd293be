#!/usr/bin/env python
"""The GEMM floor of attention at one size: how long the matrix products alone take for the exact path and for
the tiled path, so a fast/exact ratio can be read against what recomputation allows.

    OMP_NUM_THREADS=1 python scripts/benchmark_gemm_floor.py --threads 1        # T = 1024, B·H = 8, D = 64
    python scripts/benchmark_gemm_floor.py --quick --out /tmp/bench               # smoke test

Exact (materialised) attention forward+backward is six (B·H) × T × T × D products: Q Kᵀ, S V in forward; Sᵀ G,
G Vᵀ, dS K, dSᵀ Q in backward. The tiled path (``attention/chunked.py``, FlashAttention's schedule) does the same
per block_q × block_k tile plus Q Kᵀ once more in backward: seven. Rows: both sets, timed alone on random
float32 operands (median of repeats after a warm-up), with their FLOP rate. The fast path's time minus its GEMM
floor is what its element-wise work and loop cost; for fast ≥ 2× exact, fast must fit in exact / 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from kernel_attention.benchmarks import machine_info, median_time, write_tables
from kernel_attention.training.cpu_malloc import keep_freed_memory

REPO = Path(__file__).resolve().parents[1]
COLUMNS = ["schedule", "gemms", "T", "tile", "ms", "gflop", "gflops_per_s"]


def exact_gemms(q, k, v, g, s) -> None:
    """The six T × T products of exact attention's forward and backward (s stands for κ, dS alike)."""
    for a, b in ((q, k.mT), (s, v), (s.mT, g), (g, v.mT), (s, k), (s.mT, q)):
        a @ b


def tiled_gemms(q, k, v, g, tile: int) -> None:
    """The seven products per tile of the tiled path: forward Q Kᵀ, S V; backward Q Kᵀ again, Sᵀ G, G Vᵀ, dS K,
    dSᵀ Q."""
    T = q.shape[-2]
    for i in range(0, T, tile):
        qb, gb = q[:, i : i + tile], g[:, i : i + tile]  # (BH, t, D)
        for j in range(0, T, tile):
            kb, vb = k[:, j : j + tile], v[:, j : j + tile]  # (BH, t, D)
            u = qb @ kb.mT  # (BH, t, t) forward score tile
            u @ vb
            u = qb @ kb.mT  # recomputed in backward
            u.mT @ gb
            ds = gb @ vb.mT  # (BH, t, t)
            ds @ kb
            ds.mT @ qb


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--T", type=int, default=1024)
    ap.add_argument("--bh", type=int, default=8, help="batch × heads (the attention benchmark's 2 × 4)")
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--tile", type=int, default=256, help="the tiled path's block_q = block_k")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="smoke test: T = 128, tile 64, 1 repeat")
    ap.add_argument("--out", type=Path, default=REPO / "experiments" / "benchmarks")
    ap.add_argument("--name", default="gemm_floor")
    args = ap.parse_args(argv)
    if args.quick:
        args.T, args.tile, args.repeats = 128, 64, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()  # as the attention benchmark and train.py on CPU
    T, D = args.T, args.head_dim
    q, k, v, g = (torch.randn(args.bh, T, D) for _ in range(4))  # (BH, T, D)
    s = torch.randn(args.bh, T, T)  # (BH, T, T)
    flops = 2.0 * args.bh * T * T * D  # one T × T × D product
    rows = []
    for name, n, fn in (("exact (materialised)", 6, lambda: exact_gemms(q, k, v, g, s)),
                        ("tiled (recomputing)", 7, lambda: tiled_gemms(q, k, v, g, args.tile))):
        sec = median_time(fn, repeats=args.repeats)
        rows.append({"schedule": name, "gemms": n, "T": T, "tile": args.tile if n == 7 else "-",
                     "ms": 1e3 * sec, "gflop": n * flops / 1e9, "gflops_per_s": n * flops / sec / 1e9})
        print(" ".join(f"{c}={rows[-1][c]}" for c in COLUMNS), flush=True)
    info = machine_info("cpu")
    info.update(bh=args.bh, head_dim=D, dtype="float32",
                command="python " + " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]))
    write_tables(rows, COLUMNS, args.out / args.name, title="GEMM floor of attention", header=info,
                 notes=["ms = median time of the products alone; see the script's docstring."])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
