"""Control for the kernel diagnostics: the same models at initialisation (no training), to tell learned from
initial structure. For each run folder given, writes <out>/<run name>/{.hydra/, checkpoints/{best,last,avg}.pt}
with the weights ``build_model`` draws after ``torch.manual_seed(seed)`` (the initialisation training starts from,
in distribution; not necessarily the identical draw), then diagnose that folder:

    python experiments/kernel_diagnostics/make_init_control.py <prepared data folder> <out folder> <run>...
    python scripts/diagnose.py <out folder>/<run name> data_dir=<prepared data folder>
"""
import shutil
import sys
from pathlib import Path

import torch
import yaml

from kernel_attention.config import TrainConfig
from kernel_attention.data import PreparedData
from kernel_attention.models import build_model

data = PreparedData(sys.argv[1])
out = Path(sys.argv[2])
for src in sys.argv[3:]:
    src = Path(src)
    cfg = TrainConfig.from_dict(yaml.safe_load((src / ".hydra" / "config.yaml").read_text()))
    dst = out / src.name
    shutil.copytree(src / ".hydra", dst / ".hydra", dirs_exist_ok=True)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, cfg.kernel_name, cfg.kernel, cfg.task.type, data.vocab.size, data.vocab.pad)
    (dst / "checkpoints").mkdir(exist_ok=True)
    # The same initial weights under every checkpoint name, so diagnose.py's default (the checkpoint the run was
    # scored on: best for the translation study, last for the LM studies) finds them.
    for name in ("best", "last", "avg"):
        torch.save({"model": model.state_dict(), "update": 0}, dst / "checkpoints" / f"{name}.pt")
    print(dst)
