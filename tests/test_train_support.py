"""Shared helpers for the training tests: tiny corpora, config composition, CLI runs.

Imported by tests/test_train*.py, test_config*.py, test_resume*.py, test_ddp*.py (pytest puts tests/ on
sys.path). The corpora are small synthetic "German→English" number phrases (word-for-word, so a tiny model
memorises them in a few dozen updates) and a repetitive text for LM; both prepared by the data stage's own
``ensure_prepared`` with a character vocabulary.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"

DE = ["null", "eins", "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht", "neun", "zehn", "elf"]
EN = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven"]


def write_tiny_corpora(root: Path, n_train: int = 240) -> Path:
    """``root/mt/{train,valid,test}.{de,en}`` and ``root/lm.txt``; returns ``root``."""
    rng = random.Random(0)
    mt = root / "mt"
    mt.mkdir(parents=True, exist_ok=True)
    pairs = []
    for _ in range(n_train):
        idx = [rng.randrange(len(DE)) for _ in range(rng.randint(2, 6))]
        pairs.append((" ".join(DE[i] for i in idx), " ".join(EN[i] for i in idx).capitalize() + "."))
    # valid = the first training pairs: the tests check that the model memorises what it is trained on.
    splits = {"train": pairs, "valid": pairs[:24], "test": pairs[24:48]}
    for split, rows in splits.items():
        (mt / f"{split}.de").write_text("".join(f"{de}\n" for de, _ in rows), encoding="utf-8")
        (mt / f"{split}.en").write_text("".join(f"{en}\n" for _, en in rows), encoding="utf-8")
    lines = [" ".join(EN[(i + j) % len(EN)] for j in range(5)) for i in range(400)]
    (root / "lm.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def task_overrides(root: Path, kind: str) -> list[str]:
    """Point the multi30k / tinyshakespeare presets at the tiny corpora (char vocabulary, tiny batches)."""
    common = [f"task.data.root={root}", f"task.data.out_root={root / 'prepared'}", "task.data.spm_model_type=char",
              "task.data.vocab_size=256", "++task.data.spm_threads=1"]
    if kind == "mt":
        return ["task=multi30k", "task.name=tiny_mt", "task.data.path=mt", "task.max_tokens=600",
                "task.valid_bleu_samples=8", *common]
    return ["task=tinyshakespeare", "task.name=tiny_lm", "task.data.path=lm.txt", "task.block_size=32",
            "task.max_tokens=256", *common]


def tiny_overrides(root: Path, kind: str = "mt", updates: int = 20) -> list[str]:
    """A run of ``updates`` updates of a tiny model that takes a second or two on one CPU thread."""
    return [
        *task_overrides(root, kind), "model=transformer_tiny", "model.dropout=0.1", "logger=none",
        f"trainer.max_updates={updates}", f"trainer.validate_interval_updates={max(updates // 2, 1)}",
        "trainer.log_interval=5", "trainer.evaluate_at_end=false", "trainer.progress_bar=false",
        "trainer.average_last=2", "trainer.device=cpu", "optim.lr=3e-3", "optim.warmup_updates=5",
    ]


def compose(overrides: list[str]) -> Any:
    """The resolved config mapping that ``train.py`` would see for these overrides."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    import kernel_attention.config as kc

    kc.register_schemas()
    if not OmegaConf.has_resolver("ka.first"):
        OmegaConf.register_new_resolver("ka.first", lambda *xs: next((x for x in xs if x), ""))
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose(config_name="train", overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=True)


def env() -> dict[str, str]:
    e = dict(os.environ)
    e.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1"})
    e.pop("HYDRA_FULL_ERROR", None)
    return e


def run_cli(args: list[str], cwd: Path, timeout: float = 240, check: bool = True) -> subprocess.CompletedProcess:
    """``python train.py <args>`` in ``cwd`` (run folders land under cwd/outputs)."""
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=cwd, env=env(),
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"train.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def test_tiny_corpora_are_aligned(tiny_root: Path) -> None:
    for split in ("train", "valid", "test"):
        de = (tiny_root / "mt" / f"{split}.de").read_text().splitlines()
        en = (tiny_root / "mt" / f"{split}.en").read_text().splitlines()
        assert len(de) == len(en) > 0
