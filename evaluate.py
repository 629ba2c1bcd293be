"""Score a trained run: ``python evaluate.py run_dir=<run folder> [checkpoint=avg beam=5 lenpen=1.0 split=test]``.

Any number of other test sets, raw text read with the run's own tokenizer, each its own metrics.json section
``test_sets.<name>`` and hypothesis file ``test_set.<name>.hyp.txt``::

    python evaluate.py run_dir=RUN test_sets.flickr2017.src=test2017.de test_sets.flickr2017.ref=test2017.en
    python evaluate.py run_dir=RUN split=null test_sets.wmt14.sacrebleu=wmt14     # sacreBLEU fetches it (online)
    python evaluate.py run_dir=LM_RUN test_sets.mine.src=my_text.txt               # LM: perplexity of a file

A thin Hydra entry point over ``kernel_attention.evaluation.evaluate_run`` (options: conf/evaluate.yaml). Bad
input prints one line to stderr naming the fix and exits with its kind's code (``kernel_attention.cli``: 2 config,
3 data, 4 run folder, 5 file system) without writing anything; ``KA_FULL_ERROR=1`` shows the traceback. The run
folder is locked while it is scored, so it never has two writers.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from kernel_attention import cli
from kernel_attention.evaluation.evaluate import evaluate_run, load_config
from kernel_attention.registry import ConfigError, config_from_mapping
from kernel_attention.tasks import task_class
from kernel_attention.training.lock import RunFolderLock


@dataclass
class EvaluateOptions:
    """conf/evaluate.yaml, typed: a wrong key or type fails with one line listing what is allowed."""

    run_dir: str
    checkpoint: str = "best"
    beam: int = 5
    lenpen: float = 1.0
    max_len_a: float | None = None
    max_len_b: int | None = None
    max_tokens: int | None = None
    batch_size: int = 128
    no_unk: bool = False
    use_cache: bool = True
    lm_stride: int | None = None
    data_dir: str | None = None
    device: str = "auto"
    split: str | None = "test"
    test_sets: dict[str, Any] = dataclasses.field(default_factory=dict)
    diagnose: bool = False  # then run the kernel diagnostics (scripts/diagnose.py defaults) → diagnostics.json


def _summary(summary: Any, res: dict) -> list[str]:
    """One line per scored set: the split, then every test set."""
    lines = []
    if "split" in res:
        lines.append(f"{res['split']} ({res['checkpoint']}, n={res['n']}): {summary(res)}")
    for name, r in res.get("test_sets", {}).items():
        lines.append(f"test_sets.{name} ({r['checkpoint']}, n={r['n']}): {summary(r)}")
    return lines


@hydra.main(config_path="conf", config_name="evaluate", version_base="1.3")
@cli.job_errors("evaluate")
def main(cfg: DictConfig) -> None:
    from pathlib import Path

    if OmegaConf.is_missing(cfg, "run_dir"):
        raise ConfigError("run_dir is missing; pass run_dir=<a run folder, e.g. "
                          "outputs/multi30k/transformer_small/edp/seed1>")
    opts = config_from_mapping(EvaluateOptions, OmegaConf.to_container(cfg, resolve=True), "evaluate")  # type: ignore[arg-type]
    if not Path(opts.run_dir).is_dir():
        raise ConfigError(f"run_dir={opts.run_dir} is not a folder; pass a run folder that train.py wrote")
    kwargs = {f.name: getattr(opts, f.name) for f in dataclasses.fields(opts) if f.name != "diagnose"}
    if not (Path(opts.run_dir) / ".hydra" / "config.yaml").is_file():
        res = evaluate_run(**kwargs)  # not a run folder: says so, and leaves no .lock there
    else:
        with RunFolderLock(opts.run_dir):
            res = evaluate_run(**kwargs)
            if opts.diagnose:
                from kernel_attention.diagnostics.run import DiagnoseConfig, diagnose_run

                diag = diagnose_run(opts.run_dir, DiagnoseConfig(checkpoint=opts.checkpoint, data_dir=opts.data_dir))
                print(f"kernel diagnostics ({diag['sample']['n']} valid sequences, {diag['seconds']:.1f} s)  → "
                      f"{cfg.run_dir}/diagnostics.json")
    summary = task_class(load_config(Path(opts.run_dir)).task).summary
    for line in _summary(summary, res):
        print(f"{line}  → {cfg.run_dir}/metrics.json")


def test_set_overrides(argv: list[str]) -> list[str]:
    """``test_sets.<name>.<field>=...`` adds a key Hydra's struct mode does not know yet, which Hydra only takes
    as ``++test_sets...``; users type the plain form (as the README shows), so it is forced here."""
    return [f"++{a}" if a.startswith("test_sets.") else a for a in argv]


if __name__ == "__main__":
    sys.argv = test_set_overrides(sys.argv)
    sys.exit(cli.run_hydra("evaluate", main))
