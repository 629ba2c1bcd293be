#!/usr/bin/env python
"""Tabulate the summaries of diagnostics.json files side by side (JSON only), e.g. trained runs vs the same
models at initialisation:

    python experiments/kernel_diagnostics/side_by_side.py trained=<folder> init=<folder> ...

One Markdown row per (label, run folder): the means over roles, layers and heads that scripts/diagnose.py wrote.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

KEYS = ("asymmetry", "asymmetry_logK", "negative_mass", "eig_ratio", "qk_form_asymmetry", "erank_A", "erank_K",
        "entropy_norm")


def main(argv: list[str]) -> int:
    print("| models | kernel | seed | " + " | ".join(KEYS) + " |")
    print("|" + "---|" * (3 + len(KEYS)))
    for arg in argv:
        label, _, folder = arg.partition("=")
        for path in sorted(Path(folder).rglob("diagnostics.json")):
            d = json.loads(path.read_text(encoding="utf-8"))
            s = d["summary"]["all"]
            cells = ["–" if s.get(k) is None else f"{s[k]:.3f}" for k in KEYS]
            print(f"| {label} | {d['run']['kernel']} | {d['run']['seed']} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
