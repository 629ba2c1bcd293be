"""What the user sees: a tqdm bar (loss, lr, tokens/s, ETA) and one fixed-format log line per interval.

Only rank 0 prints. Log lines go through ``logging`` (Hydra sends them to the console and ``train.log``);
while the bar is shown they are routed through ``tqdm.write`` so the two do not garble each other.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from typing import Any

log = logging.getLogger("kernel_attention.train")


def fmt_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def format_train_line(stats: dict[str, Any]) -> str:
    """``update 200/2000 | epoch 1 | loss 5.312 | ppl 96.4 | lr 5.00e-05 | gnorm 1.234 | tok/s 8123 | …``"""
    total = stats.get("max_updates") or "?"
    return (
        f"update {stats['update']}/{total} | epoch {stats['epoch']} | loss {stats['loss']:.3f} | "
        f"ppl {stats['ppl']:.2f} | lr {stats['lr']:.3e} | gnorm {stats['gnorm']:.3f} | "
        f"tok/s {stats['tokens_per_s']:.0f} | skipped {stats['skipped']} | "
        f"wall {fmt_duration(stats['wall'])} | eta {fmt_duration(stats['eta'])}"
    )


def format_valid_line(entry: dict[str, Any], best: bool) -> str:
    parts = [f"valid update {entry['update']}", f"loss {entry['loss']:.3f}", f"ppl {entry['ppl']:.2f}"]
    # The task's own validation numbers (translation: bleu), whichever they are.
    parts += [f"{k} {v:.3f}" if k == "bpc" else f"{k} {v:.2f}" for k, v in entry.items()
              if k not in ("update", "loss", "ppl")]
    return " | ".join(parts) + (" | best" if best else "")


class Progress:
    """The tqdm bar over updates (disabled off-TTY, on ranks > 0, or with trainer.progress_bar=false)."""

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm

            # disable=None: tqdm switches itself off when stderr is not a terminal (SLURM logs, pytest).
            self.bar = tqdm(total=total or None, initial=initial, unit="upd", dynamic_ncols=True, disable=None,
                            smoothing=0.05)

    def update(self, n: int, postfix: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix(postfix, refresh=False)

    @contextlib.contextmanager
    def redirect_logging(self) -> Iterator[None]:
        if self.bar is None or self.bar.disable:
            yield
            return
        from tqdm.contrib.logging import logging_redirect_tqdm

        with logging_redirect_tqdm():
            yield

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Throughput:
    """Tokens/s over the current logging interval and over the whole run (excluding validation time)."""

    def __init__(self) -> None:
        self.train_time = 0.0
        self.tokens = 0
        self._interval_time = 0.0
        self._interval_tokens = 0

    def add(self, dt: float, tokens: int) -> None:
        self.train_time += dt
        self.tokens += tokens
        self._interval_time += dt
        self._interval_tokens += tokens

    def interval_rate(self) -> float:
        rate = self._interval_tokens / self._interval_time if self._interval_time > 0 else 0.0
        self._interval_time, self._interval_tokens = 0.0, 0
        return rate

    def overall_rate(self) -> float:
        return self.tokens / self.train_time if self.train_time > 0 else 0.0
