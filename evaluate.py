"""Score a trained run: ``python evaluate.py run_dir=<run folder> [checkpoint=avg beam=5 lenpen=1.0 split=test]``.

A thin Hydra entry point over ``kernel_attention.evaluation.evaluate_run`` (options: conf/evaluate.yaml). Bad
input prints one line to stderr naming the fix and exits with its kind's code (``kernel_attention.cli``: 2 config,
3 data, 4 run folder, 5 file system) without writing anything; ``KA_FULL_ERROR=1`` shows the traceback. The run
folder is locked while it is scored, so it never has two writers.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass

import hydra
from omegaconf import DictConfig, OmegaConf

from kernel_attention import cli
from kernel_attention.evaluation import evaluate_run
from kernel_attention.registry import ConfigError, config_from_mapping
from kernel_attention.training.lock import RunFolderLock


@dataclass
class EvaluateOptions:
    """conf/evaluate.yaml, typed: a wrong key or type fails with one line listing what is allowed."""

    run_dir: str
    checkpoint: str = "best"
    split: str = "test"
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
    diagnose: bool = False  # then run the kernel diagnostics (scripts/diagnose.py defaults) → diagnostics.json


def _summary(res: dict) -> str:
    head = f"{res['split']} ({res['checkpoint']}, n={res['n']})"
    if "bleu" in res:
        tok = f"  tok BLEU {res['tok_bleu']:.2f}" if "tok_bleu" in res else ""
        return f"{head}: BLEU {res['bleu']:.2f}{tok}  chrF {res['chrf']:.2f}  [{res['bleu_signature']}]"
    bpc = f"  bpc {res['bpc']:.4f}" if "bpc" in res else ""
    return f"{head}: loss {res['loss']:.4f}  ppl {res['ppl']:.2f}{bpc}"


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
    args = {k: v for k, v in dataclasses.asdict(opts).items() if k != "diagnose"}
    if not (Path(opts.run_dir) / ".hydra" / "config.yaml").is_file():
        res = evaluate_run(**args)  # not a run folder: says so, and leaves no .lock there
    else:
        with RunFolderLock(opts.run_dir):
            res = evaluate_run(**args)
            if opts.diagnose:
                from kernel_attention.diagnostics import DiagnoseConfig, diagnose_run

                diag = diagnose_run(opts.run_dir, DiagnoseConfig(checkpoint=opts.checkpoint, data_dir=opts.data_dir))
                print(f"kernel diagnostics ({diag['sample']['n']} valid sequences, {diag['seconds']:.1f} s)  → "
                      f"{cfg.run_dir}/diagnostics.json")
    print(f"{_summary(res)}  → {cfg.run_dir}/metrics.json")


if __name__ == "__main__":
    sys.exit(cli.run_hydra("evaluate", main))
