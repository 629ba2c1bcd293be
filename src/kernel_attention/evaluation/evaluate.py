"""``evaluate_run``: score one run folder's checkpoint on a split (and on any test sets given as raw text) and
record the results in the run's metrics.json.

Reads what training left (``.hydra/config.yaml``, ``checkpoints/<name>.pt``) and the prepared data, rebuilds the
model through the run's task, and lets the task score it (``Task.evaluate`` / ``Task.evaluate_test_set``:
translation decodes and computes BLEU, LM computes perplexity); this module never asks which task it is. Results
go to the ``test`` section (or ``eval_<split>``) and ``test_sets.<name>`` of metrics.json (docs/contracts.md §3)
through the one metrics writer (``store.metrics.update_metrics``). Options and test sets are checked before
anything is written: bad input raises a one-line error naming the fix and leaves the folder untouched.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml

from kernel_attention.config import TrainConfig
from kernel_attention.data import DataError, PreparedData, ensure_prepared
from kernel_attention.evaluation.errors import EvaluationError
from kernel_attention.evaluation.generate import make_batches, translate
from kernel_attention.evaluation.options import EvalOptions, TestSet
from kernel_attention.registry import ConfigError, config_from_mapping
from kernel_attention.store import checkpoint as ckpt_io
from kernel_attention.store.metrics import read_metrics, replacing, update_metrics
from kernel_attention.tasks import Task, build_task

__all__ = ["CHECKPOINTS", "EvaluationError", "checkpoint_path", "checkpoint_state", "evaluate_run", "load_config",
           "load_run", "make_batches", "translate"]

CHECKPOINTS = ("best", "avg", "last")


RUN_DIR_FIX = "pass run_dir=<a folder that train.py wrote, e.g. outputs/multi30k/transformer_small/edp/seed1>"


def load_config(run_dir: Path, fix: str = RUN_DIR_FIX) -> TrainConfig:
    """The run's resolved config (``.hydra/config.yaml``), typed; ``fix`` ends the message when there is none."""
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        raise EvaluationError(f"{run_dir} is not a run folder (no .hydra/config.yaml); {fix}")
    try:
        return TrainConfig.from_dict(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    except (ConfigError, yaml.YAMLError) as e:
        raise EvaluationError(f"{path}: {str(e).splitlines()[0]}") from None


def checkpoint_path(run_dir: Path, name: str) -> Path:
    """``run_dir``'s checkpoint ``name`` (best | avg | last); a missing one names those that exist."""
    if name not in CHECKPOINTS:
        raise ConfigError(f"checkpoint={name!r} is not allowed; choose one of: {', '.join(CHECKPOINTS)}")
    path = run_dir / ckpt_io.CKPT_DIR / f"{name}.pt"
    if not path.is_file():
        have = sorted(p.stem for p in (run_dir / ckpt_io.CKPT_DIR).glob("*.pt") if p.stem in CHECKPOINTS)
        fix = f"pick checkpoint={' or '.join(have)}" if have else "train the run first (python train.py ...)"
        raise EvaluationError(f"{path} not found; {fix}")
    return path


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device} but CUDA is not available on this machine; use device=auto or cpu")
    try:
        return torch.device(device)
    except RuntimeError as e:
        raise ConfigError(f"device={device!r} is not a device ({str(e).splitlines()[0]}); "
                          "use auto, cpu or cuda:N") from None


def _test_sets(raw: Mapping[str, Any] | None) -> dict[str, TestSet]:
    """``test_sets`` of evaluate.py (name → {src, ref} | {sacrebleu[, langpair]}) as typed ``TestSet``s."""
    out: dict[str, TestSet] = {}
    for name, spec in (raw or {}).items():
        if isinstance(spec, TestSet):
            out[name] = spec
            continue
        if not str(name).replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"test_sets.{name}: a test set name is letters, digits, '-' and '_' (it names "
                              "the metrics.json section and the hypothesis file)")
        if not isinstance(spec, Mapping):
            raise ConfigError(f"test_sets.{name} must be a mapping, e.g. test_sets.{name}.src=FILE "
                              f"test_sets.{name}.ref=FILE")
        out[str(name)] = config_from_mapping(TestSet, dict(spec), f"test_sets.{name}")
    return out


def load_run(run_dir: Path | str, checkpoint: str | None = "best", data_dir: Path | str | None = None,
             device: str = "auto") -> tuple[TrainConfig, Task, torch.nn.Module, torch.device]:
    """A run folder's config, its task (on the prepared data) and the ``checkpoint``'s model (None = the run's
    own ``trainer.eval_checkpoint``) in eval mode on ``device``: what evaluate.py, translate.py and sample.py
    start from. Bad input raises one-line errors."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise EvaluationError(f"run_dir={run_dir} does not exist; pass the folder train.py wrote")
    cfg = load_config(run_dir)
    checkpoint = checkpoint or cfg.trainer.eval_checkpoint
    ckpt_path = checkpoint_path(run_dir, checkpoint)
    try:
        data = PreparedData(data_dir if data_dir is not None else ensure_prepared(cfg.task.data))
    except (DataError, ConfigError) as e:
        raise EvaluationError(f"prepared data: {str(e).splitlines()[0]}") from None
    dev = _resolve_device(device)
    task = build_task(cfg.task, data)
    model = task.build_model(cfg.model, cfg.kernel_name, cfg.kernel)
    state = checkpoint_state(ckpt_path)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise EvaluationError(f"{ckpt_path} does not fit the run's model config: {str(e).splitlines()[0]}") from None
    return cfg, task, model.to(dev).eval(), dev


def evaluate_run(
    run_dir: Path | str,
    checkpoint: str | None = "best",
    split: str | None = "test",
    beam: int = 5,
    lenpen: float = 1.0,
    max_len_a: float | None = None,
    max_len_b: int | None = None,
    max_tokens: int | None = None,
    batch_size: int = 128,
    no_unk: bool = False,
    use_cache: bool = True,
    lm_stride: int | None = None,
    data_dir: Path | str | None = None,
    device: str = "auto",
    test_sets: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Score ``run_dir``'s ``checkpoint`` on ``split`` and on every ``test_sets`` entry; merge the results into
    its metrics.json and return them (the split's section, plus ``test_sets: {name: section}`` when given).

    The run's task does the scoring (``Task.evaluate``). Translation: beam search (``beam``, ``lenpen``, max length
    ``max_len_a·src_len + max_len_b``, by default the task's), detokenized sacreBLEU + signature, chrF, tokenized
    BLEU for Moses-tokenized+lowercased corpora, per-sentence BLEU statistics; hypotheses go to ``<name>.hyp.txt``.
    LM: loss, ppl (and bpc for char-level) with a sliding window of the training context (``task.block_size``;
    stride ``lm_stride``, default the window). ``split="test"`` falls back to ``valid`` when the corpus has no
    test split (Tiny Shakespeare); the section is ``test`` either way and records the split. Another split writes
    ``eval_<split>``; ``split=None`` scores only the test sets. A test set is raw text read with the run's own
    tokenizer (``TestSet``: ``src`` + ``ref`` files, or a sacreBLEU test set name); each gets its own section
    ``test_sets.<name>``. ``data_dir`` overrides the prepared-data folder (default: the run config's).
    """
    opts = EvalOptions(beam=beam, lenpen=lenpen, max_len_a=max_len_a, max_len_b=max_len_b, max_tokens=max_tokens,
                       batch_size=batch_size, no_unk=no_unk, use_cache=use_cache, lm_stride=lm_stride)
    sets = _test_sets(test_sets)
    if split is None and not sets:
        raise ConfigError("nothing to evaluate: split is null and no test_sets are given")
    cfg, task, model, dev = load_run(run_dir, checkpoint, data_dir, device)
    checkpoint = checkpoint or cfg.trainer.eval_checkpoint  # None: the run's own choice, recorded by name
    run_dir = Path(run_dir)
    task.check_options(opts)
    # Every test set is read and encoded now: a missing or misaligned file fails before anything is written.
    loaded = {name: task.load_test_set(name, ts, model) for name, ts in sets.items()}
    if split is not None:
        section = "test" if split == "test" else f"eval_{split}"
        if split == "test" and "test" not in task.data.splits:
            split = "valid"
        if split not in task.data.splits:
            raise EvaluationError(f"split={split!r} is not in {task.data.path}; choose one of: "
                                  f"{', '.join(task.data.splits)}")

    result: dict[str, Any] = {}
    metrics = read_metrics(run_dir)
    if split is not None:
        t0 = time.perf_counter()
        out = {"checkpoint": checkpoint, "split": split,
               **task.evaluate(model, split, opts, dev, run_dir, "test" if section == "test" else split)}
        out["eval_seconds"] = round(time.perf_counter() - t0, 3)
        # Replace the whole section: keys of an earlier evaluation (e.g. tok_bleu) must not survive.
        update_metrics(run_dir, {section: replacing(metrics.get(section, {}), out)})
        result = out
    if loaded:
        done: dict[str, Any] = {}
        for name, test_set in loaded.items():
            t0 = time.perf_counter()
            out = {"checkpoint": checkpoint,
                   **task.evaluate_test_set(model, test_set, opts, dev, run_dir, f"test_set.{name}")}
            out["eval_seconds"] = round(time.perf_counter() - t0, 3)
            old = (metrics.get("test_sets") or {}).get(name, {})
            update_metrics(run_dir, {"test_sets": {name: replacing(old, out)}})
            done[name] = out
        result = {**result, "test_sets": done}
    return result


_load_config = load_config  # the former (private) name


def checkpoint_state(path: Path) -> dict[str, torch.Tensor]:
    """The model weights of a checkpoint file (``{"model": state_dict, ...}``), loaded with weights_only."""
    try:
        state = ckpt_io.load(path)
    except Exception as e:  # a truncated or foreign file: say which one
        raise EvaluationError(f"{path} cannot be loaded ({ckpt_io.load_problem(e, path)}); re-save it or pick "
                              "another") from None
    if not isinstance(state, dict) or "model" not in state:
        raise EvaluationError(f"{path} has no 'model' weights; it was not written by train.py")
    return state["model"]
