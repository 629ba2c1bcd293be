"""translate.py and sample.py on tiny hand-built run folders (conftest's ``mt_run`` / ``make_run``)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

from kernel_attention.evaluation.evaluate import evaluate_run

REPO = Path(__file__).resolve().parents[1]


def _script(name: str, *args: str, cwd: Path, stdin: bytes = b"") -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(REPO / name), *args], cwd=cwd, env=env, input=stdin,
                          capture_output=True, timeout=300)


def test_translate_cli_streams_what_evaluate_scores(mt_run: Path, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    evaluate_run(mt_run, beam=3, device="cpu")
    out = _script("translate.py", f"run_dir={mt_run}", "beam=3", "device=cpu", "buffer_size=4", cwd=tmp_path,
                  stdin=(raw / "test.de").read_bytes())
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode() == (mt_run / "test.hyp.txt").read_text()  # batches of 4: same hypotheses
    assert out.stderr.decode().count("translate: ") == 3  # progress after every buffer: 4 + 4 + 1 lines
    from_file = _script("translate.py", f"run_dir={mt_run}", "beam=3", "device=cpu", f"input={raw / 'test.de'}",
                        "progress=false", cwd=tmp_path)
    assert from_file.stdout == out.stdout and b"translate:" not in from_file.stderr
    cases = [((f"run_dir={mt_run}",), b"ok\n\xff\n", "line 2 is not valid UTF-8", 3),
             ((f"run_dir={mt_run}", "beam=0"), b"x\n", "beam must be >= 1", 2),
             ((f"run_dir={mt_run}", "input=nope.de"), b"", "not a file", 2),
             ((), b"", "run_dir is missing", 2)]
    for args, stdin, hint, code in cases:
        bad = _script("translate.py", *args, "device=cpu", cwd=tmp_path, stdin=stdin)
        err = bad.stderr.decode().strip().splitlines()
        assert bad.returncode == code and len(err) == 1 and hint in err[0] and err[0].startswith("translate: "), err


def test_sample_cli_and_task_mismatch(tmp_path: Path, mt_run: Path, make_run: Any) -> None:
    text = "".join(random.Random(1).choice("abcde fgh\n") for _ in range(3000))
    (tmp_path / "lm.txt").write_text(text, encoding="utf-8")
    lm = tmp_path / "lm"
    lm.mkdir()
    run = make_run(lm, "chars", {"type": "lm", "source": "file", "path": str(tmp_path / "lm.txt"),
                                  "spm_model_type": "char", "vocab_size": 64}, block_size=16)
    args = (f"run_dir={run}", "prompt=abc", "max_new_tokens=40", "device=cpu", "seed=3")
    one, two = (_script("sample.py", *args, cwd=tmp_path) for _ in range(2))
    assert one.returncode == 0, one.stderr
    sample = one.stdout.decode()
    assert sample.startswith("abc") and len(sample) > 3 + 1 and one.stdout == two.stdout  # seeded
    other = _script("sample.py", *args[:-1], "seed=4", cwd=tmp_path).stdout
    assert other != one.stdout
    # Each command refuses the other task's run in one line, exit 2.
    for script, run_dir, hint in (("sample.py", mt_run, "does not sample text"),
                                  ("translate.py", run, "does not translate")):
        bad = _script(script, f"run_dir={run_dir}", "device=cpu", cwd=tmp_path, stdin=b"x\n")
        err = bad.stderr.decode().strip().splitlines()
        assert bad.returncode == 2 and len(err) == 1 and hint in err[0], err
    bad = _script("sample.py", f"run_dir={run}", "temperature=-1", cwd=tmp_path)
    assert bad.returncode == 2 and b"temperature=-1.0" in bad.stderr
