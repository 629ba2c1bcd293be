"""Shared helpers of scripts/benchmark_attention.py and scripts/benchmark_training.py: timing, peak memory,
dense-matmul throughput, machine description and CSV/Markdown tables.

Timing is the median of ``repeats`` wall-clock runs after ``warmup`` untimed ones (CUDA work is synchronised
before the clock is read). The median, not the mean, because the benchmark machines are shared: a run that
another process pre-empts is an outlier, not information.

Peak memory on CPU is measured from the allocator's own events: ``torch.profiler`` with ``profile_memory=True``
records every CPU tensor allocation and free ("[memory]" events with signed byte counts); the running sum over
them, in time order, is the bytes held by tensors created inside the measured call, and its maximum is the
peak. Tensors that existed before the call (inputs, parameters) are not counted: the figure is what the call
itself needs. It is measured in a separate run from the timing because the profiler slows the call down. On
CUDA it is ``torch.cuda.max_memory_allocated`` minus what was allocated before the call.
"""

from __future__ import annotations

import csv
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


def sync(device: torch.device | str) -> None:
    """Wait for queued CUDA work so wall-clock time covers it (no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def median_time(fn: Callable[[], Any], *, repeats: int = 5, warmup: int = 1, device: str = "cpu") -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` runs after ``warmup`` untimed runs."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_memory_bytes(fn: Callable[[], Any], *, device: str = "cpu") -> tuple[int, int | None]:
    """Peak bytes of tensors allocated (and not yet freed) during ``fn()``, above what existed before it, and
    the largest single allocation (CPU only; None on CUDA)."""
    if torch.device(device).type == "cuda":
        sync(device)
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        sync(device)
        return int(torch.cuda.max_memory_allocated() - base), None
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # Kineto's raw events: "[memory]" ones carry +bytes on allocation and −bytes on free.
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    held = peak = largest = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        if e.device_type() != torch.autograd.DeviceType.CPU:
            continue
        held += e.nbytes()
        peak, largest = max(peak, held), max(largest, e.nbytes())
    return int(peak), int(largest)


def matmul_flops_per_s(*, n: int = 2048, dtype: torch.dtype = torch.float32, device: str = "cpu",
                       repeats: int = 5) -> float:
    """Dense GEMM throughput of this machine now: the median time of an n×n×n matmul (2n³ FLOPs)."""
    a = torch.randn(n, n, dtype=dtype, device=device)  # (n, n)
    b = torch.randn(n, n, dtype=dtype, device=device)  # (n, n)
    t = median_time(lambda: a @ b, repeats=repeats, warmup=1, device=device)
    return 2.0 * n**3 / t


def kernel_presets(conf_dir: Path, names: Sequence[str] | None = None) -> list[tuple[str, str, dict[str, Any]]]:
    """(preset label, registered name, params) of every ``<conf_dir>/kernel/*.yaml`` (only ``names`` if given),
    edp first: it is the SDPA baseline the other rows are compared with."""
    out = []
    for path in sorted((conf_dir / "kernel").glob("*.yaml")):
        params = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
        assert isinstance(params, dict)
        name = params.pop("name")
        if names is None or path.stem in names:
            out.append((path.stem, str(name), params))
    return sorted(out, key=lambda p: p[0] != "edp")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """What a reader needs to judge the numbers: hardware, software, threads and how busy the machine was."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": device,
        "load_avg_1_5_15": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "python": platform.python_version(),
    }
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def fmt(x: Any) -> str:
    """Compact cell text: floats to 3 significant digits (more for big numbers), None as '-'."""
    if x is None:
        return "-"
    if isinstance(x, float):
        if math.isnan(x):
            return "nan"
        return f"{x:.0f}" if abs(x) >= 1000 else f"{x:.3g}"
    return str(x)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_tables(rows: Sequence[dict[str, Any]], columns: Sequence[str], out_stem: Path, *, title: str,
                 header: dict[str, Any], notes: Sequence[str] = ()) -> tuple[Path, Path]:
    """Write ``<out_stem>.csv`` (all columns, raw values) and ``<out_stem>.md`` (title, machine, table, notes)."""
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out_stem.with_suffix(".csv"), out_stem.with_suffix(".md")
    with csv_path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in columns})
    md = [f"# {title}", "", *(f"- {k}: {v}" for k, v in header.items()), "", markdown_table(rows, columns), ""]
    md += [f"{n}" for n in notes]
    md_path.write_text("\n".join(md) + "\n")
    return csv_path, md_path
