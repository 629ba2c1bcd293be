"""Prepare a task's corpus: ``python scripts/prepare_data.py task=multi30k`` (see conf/prepare.yaml).

Hydra stays here: the config is turned into a plain ``DataConfig`` at once. Bad input prints one line to stderr
with its kind's exit code (``kernel_attention.cli``: 2 config, 3 data, 5 file system).
"""

from __future__ import annotations

import sys
import time

import hydra
from omegaconf import DictConfig, OmegaConf

from kernel_attention import cli
from kernel_attention.data import DataConfig, PreparedData, ensure_prepared


@hydra.main(config_path="../conf", config_name="prepare", version_base="1.3")
@cli.job_errors("prepare_data")
def main(cfg: DictConfig) -> None:
    t0 = time.perf_counter()
    task = OmegaConf.to_container(cfg.task, resolve=True)
    data_cfg = DataConfig.from_task(task)  # type: ignore[arg-type]
    path = ensure_prepared(data_cfg)
    meta = PreparedData(path).meta
    counts = ", ".join(f"{split} {info['n']}" for split, info in meta["splits"].items())
    print(f"{path}  ({meta['task']}: vocab {meta['vocab']['size']}, {counts}; {time.perf_counter() - t0:.2f} s)")


if __name__ == "__main__":
    sys.exit(cli.run_hydra("prepare_data", main))
