"""scripts/compare_nanogpt.py: runs a nanoGPT checkout unchanged next to our LM and tabulates both; a folder
that is not nanoGPT is one line. nanoGPT itself is not available here, so a stand-in prints nanoGPT's log format."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "compare_nanogpt.py"
FAKE_TRAIN = """\
import sys
args = dict(a[2:].split("=", 1) for a in sys.argv[2:] if a.startswith("--"))
n, every = int(args["max_iters"]), int(args["eval_interval"])
assert args["block_size"] == "64" and args["n_embd"] == "128" and args["device"] == "cpu"
for it in range(n + 1):
    if it % every == 0:
        print(f"step {it}: train loss 9.0, val loss {4.0 - it / 100:.4f}")
    print(f"iter {it}: loss 3.0, time {500.0 if it % every == 0 else 10.0:.2f}ms, mfu 0.01%")
"""


def _fake_nanogpt(root: Path) -> Path:
    (root / "config").mkdir(parents=True)
    (root / "config" / "train_shakespeare_char.py").write_text("# nanoGPT config stand-in\n")
    (root / "data" / "shakespeare_char").mkdir(parents=True)
    (root / "data" / "shakespeare_char" / "prepare.py").write_text(
        "import pathlib; assert pathlib.Path(__file__).with_name('input.txt').stat().st_size > 1_000_000\n")
    (root / "train.py").write_text(FAKE_TRAIN)
    return root


def _env() -> dict[str, str]:
    data = Path(os.environ.get("KA_DATA_ROOT", REPO.parent / "shared" / "data"))
    if not (data / "tinyshakespeare" / "input.txt").is_file():
        pytest.skip("Tiny Shakespeare not available (set KA_DATA_ROOT)")
    return {**os.environ, "KA_DATA_ROOT": str(data), "WANDB_MODE": "disabled"}


def test_side_by_side_table_from_both_logs(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--nanogpt", str(_fake_nanogpt(tmp_path / "nanoGPT")),
                           "--updates", "4", "--interval", "2", "--threads", "1", "--out", str(out)],
                          env=_env(), capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((out / "comparison.json").read_text())
    assert res["nanogpt"]["valid_loss"] == {"0": 4.0, "2": 3.98, "4": 3.96}
    assert res["nanogpt"]["train_s"] == pytest.approx(2 * 0.010)  # iterations 1 and 3; 0, 2, 4 begin with an eval
    ours = res["ours"]
    assert ours["status"] == "completed" and sorted(ours["valid_loss"]) == ["2", "4"]
    assert all(2.0 < v < 4.5 for v in ours["valid_loss"].values())  # a char LM after 2-4 updates: near ln 69
    md = (out / "comparison.md").read_text()
    assert f"| 2 | 3.9800 | {ours['valid_loss']['2']:.4f} | {ours['valid_loss']['2'] - 3.98:+.4f} |" in md
    assert (out / "nanogpt_train.log").is_file() and (out / "ours_train.log").is_file()


def test_a_folder_that_is_not_nanogpt_is_one_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--nanogpt", str(tmp_path), "--out", str(tmp_path / "o")],
                          env=_env(), capture_output=True, text=True)  # fmt: skip
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 3 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("compare_nanogpt: data error: ") and "is not a nanoGPT checkout" in lines[0]
    assert not (tmp_path / "o").exists()
