"""Prepare a task's corpus: ``python scripts/prepare_data.py task=multi30k`` (see conf/prepare.yaml).

Hydra stays here: the config is turned into a plain ``DataConfig`` at once. Bad input prints one line to stderr
and exits 1.
"""

from __future__ import annotations

import sys
import time

import hydra
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from kernel_attention.data import DataConfig, DataError, PreparedData, ensure_prepared
from kernel_attention.registry import ConfigError


@hydra.main(config_path="../conf", config_name="prepare", version_base="1.3")
def main(cfg: DictConfig) -> None:
    t0 = time.perf_counter()
    try:
        task = OmegaConf.to_container(cfg.task, resolve=True)
        data_cfg = DataConfig.from_task(task)  # type: ignore[arg-type]
        path = ensure_prepared(data_cfg)
    except (ConfigError, DataError, OmegaConfBaseException) as e:
        print(f"prepare_data: error: {e}".splitlines()[0], file=sys.stderr)
        sys.exit(1)
    meta = PreparedData(path).meta
    counts = ", ".join(f"{split} {info['n']}" for split, info in meta["splits"].items())
    print(f"{path}  ({meta['task']}: vocab {meta['vocab']['size']}, {counts}; {time.perf_counter() - t0:.2f} s)")


if __name__ == "__main__":
    main()
