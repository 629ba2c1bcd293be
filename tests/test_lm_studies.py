"""Issue 16's three LM studies: the experiments compose to what the issue plans, and each point of the
feature-dimension curve has the feature dimension its family's formula gives at head dim 32."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob
from omegaconf import OmegaConf

from kernel_attention.config import TrainConfig, register_schemas
from kernel_attention.kernels.base import build_kernel

CONF = Path(__file__).resolve().parents[1] / "conf"
D = 32  # head dim of lm_cpu (d_model 128 / 4 heads)
PLAN = {  # issue 16: the points of the curve, and the feature dimension each must have (formulas from the papers)
    # Σ_{i≤p} (q·k)^i/i!: the distinct monomials of degree i ≤ p, C(d+i−1, i) each
    **{f"taylor_p{p}": sum(math.comb(D + i - 1, i) for i in range(p + 1)) for p in (2, 4, 6)},
    **{f"random_features_m{m}": m for m in (8, 32, 128, 512, 2048)},  # FAVOR+: m positive features
    **{f"rff_m{m}": m for m in (8, 32, 128, 512, 2048)},  # Rahimi & Recht: m/2 frequencies × (cos, sin)
    **{f"polynomial_p{p}": math.comb(D + p, p) for p in (1, 2, 3, 4)},  # (x·y + c)^p: C(d+p, p)
    **{f"hedgehog_m{m}": 2 * m for m in (8, 32, 128)},  # [softmax(Wx), softmax(−Wx)]
    "edp": math.inf,
    "rbf": math.inf,
}


def _compose(*overrides: str) -> TrainConfig:
    register_schemas()
    with initialize_config_dir(str(CONF), version_base=None):
        raw = OmegaConf.to_container(compose("train", overrides=list(overrides)), resolve=True)
    return TrainConfig.from_dict(raw)


def test_feature_dim_points_are_exactly_the_plan() -> None:
    assert sorted(p.stem for p in (CONF / "fdim").glob("*.yaml")) == sorted(PLAN)


@pytest.mark.parametrize("point", sorted(PLAN))
def test_each_point_has_its_family_feature_dimension(point: str) -> None:
    cfg = _compose("experiment=feature_dim", f"fdim={point}")
    assert (cfg.sweep, cfg.model.preset, cfg.model.d_model // cfg.model.heads) == ("feature_dim", "lm_cpu", D)
    kernel = build_kernel(cfg.kernel_name, D, cfg.kernel, heads=cfg.model.heads)
    assert kernel.feature_dim() == PLAN[point], (point, kernel.feature_dim())


def _sweep_points(experiment: str, key: str, names: list[str]) -> list[str]:
    """The values a sweep's ``hydra.sweeper.params.<key>`` expands to over ``names`` (Hydra's own parser)."""
    params = OmegaConf.load(CONF / "experiment" / f"{experiment}.yaml").hydra.sweeper.params
    value = OverridesParser.create().parse_override(f"{key}={params[key]}").value()
    return value.filter(names) if isinstance(value, Glob) else list(value)


def test_feature_dim_sweeps_every_point_kernels_lm_does_not_already_run() -> None:
    """The points feature_dim skips are runs of kernels_lm with the same resolved config (bar the sweep name),
    so the two-folder report has every planned point exactly once."""
    kernels = sorted(p.stem for p in (CONF / "kernel").glob("*.yaml"))
    assert _sweep_points("kernels_lm", "kernel", kernels) == kernels
    swept = _sweep_points("feature_dim", "fdim", sorted(PLAN))
    shared = sorted(set(PLAN) - set(swept))
    assert shared == ["edp", "hedgehog_m32", "polynomial_p3", "rbf", "taylor_p2"]
    for point in shared:
        fd = _compose("experiment=feature_dim", f"fdim={point}").to_dict()
        lm = _compose("experiment=kernels_lm", f"kernel={point.split('_')[0]}").to_dict()
        assert fd.pop("sweep") == "feature_dim" and lm.pop("sweep") == "kernels_lm"
        assert fd == lm, point


def test_the_three_studies_share_the_nanogpt_setting() -> None:
    base = _compose("experiment=kernels_lm")
    assert (base.task.name, base.task.block_size, base.task.max_tokens) == ("tinyshakespeare", 64, 768)
    assert (base.optim.lr, tuple(base.optim.betas), base.optim.warmup_updates) == (1e-3, (0.9, 0.99), 100)
    assert (base.trainer.max_updates, base.trainer.eval_checkpoint, base.model.init) == (2000, "last", "gpt2")
    long = _compose("experiment=long_context", "kernel=cosformer")
    assert (long.sweep, long.task.block_size, long.task.max_tokens) == ("long_context", 1024, 2048)
    assert long.kernel.M == 1024  # cosFormer's reweighting horizon follows the context
    assert (long.model, long.optim) == (base.model, base.optim)
