"""Issue 16's three LM studies: the experiments compose to what the issue plans, and each point of the
feature-dimension curve has the feature dimension its family's formula gives at head dim 32."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
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


def _sweeps(experiment: str) -> dict[str, str]:
    """The composed ``hydra.sweeper.params`` of an experiment (what ``-m`` sweeps, inherited params included)."""
    register_schemas()
    with initialize_config_dir(str(CONF), version_base=None):
        cfg = compose("train", overrides=[f"experiment={experiment}"], return_hydra_config=True)
    return dict(OmegaConf.to_container(cfg.hydra.sweeper.params))


def _expand(group: str, value: str) -> list[str]:
    """What Hydra's sweeper expands ``group=value`` to (lists, and glob() over the config group's files)."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path

    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(CONF)))
    override = OverridesParser.create(config_loader=loader).parse_overrides([f"{group}={value}"])[0]
    return list(override.sweep_string_iterator())


def _no_label(cfg: TrainConfig) -> dict:
    d = cfg.to_dict()
    d.pop("sweep")
    d["kernel"].pop("label")  # a preset's display name (quadratic = polynomial p=2), not a setting
    return d


def test_each_study_sweeps_only_its_own_axes() -> None:
    """An experiment's sweep params merge from the files it includes and cannot be removed, so each study must
    sweep exactly its axes (feature_dim once inherited kernels_lm's kernel=glob(*): 14 × 22 × 3 jobs)."""
    kernels = sorted(p.stem for p in (CONF / "kernel").glob("*.yaml"))
    lm, fd, long = _sweeps("kernels_lm"), _sweeps("feature_dim"), _sweeps("long_context")
    assert set(lm) == {"kernel", "seed"} and _expand("kernel", lm["kernel"]) == kernels
    assert set(fd) == {"fdim", "seed"} and set(long) == {"kernel", "seed"}
    assert len(_expand("fdim", fd["fdim"])) * len(_expand("seed", fd["seed"])) == 48
    assert len(_expand("kernel", long["kernel"])) * len(_expand("seed", long["seed"])) == 18


def test_feature_dim_sweeps_every_point_kernels_lm_does_not_already_run() -> None:
    """The points feature_dim skips are exactly those equal to a kernels_lm run (same resolved config bar the
    sweep name and the display label), so the two-folder report has every planned point once."""
    lm_runs = {k.stem: _no_label(_compose("experiment=kernels_lm", f"kernel={k.stem}"))
               for k in sorted((CONF / "kernel").glob("*.yaml"))}
    shared = {}
    for point in sorted(PLAN):
        cfg = _no_label(_compose("experiment=feature_dim", f"fdim={point}"))
        same = [k for k, run in lm_runs.items() if run == cfg]
        if same:
            shared[point] = same
    assert shared == {"edp": ["edp"], "hedgehog_m32": ["hedgehog"], "polynomial_p2": ["quadratic"],
                      "polynomial_p3": ["polynomial"], "rbf": ["rbf"], "taylor_p2": ["taylor"]}
    swept = _expand("fdim", _sweeps("feature_dim")["fdim"])
    assert sorted(swept) == sorted(set(PLAN) - set(shared))


def test_the_three_studies_share_the_nanogpt_setting() -> None:
    base = _compose("experiment=kernels_lm")
    assert (base.task.name, base.task.block_size, base.task.max_tokens) == ("tinyshakespeare", 64, 768)
    assert (base.optim.lr, tuple(base.optim.betas), base.optim.warmup_updates) == (1e-3, (0.9, 0.99), 100)
    assert (base.trainer.max_updates, base.trainer.eval_checkpoint, base.model.init) == (2000, "last", "gpt2")
    long = _compose("experiment=long_context", "kernel=cosformer")
    assert (long.sweep, long.task.block_size, long.task.max_tokens) == ("long_context", 256, 2048)
    assert long.kernel.M == 256  # cosFormer's reweighting horizon follows the context
    assert (long.model, long.optim) == (base.model, base.optim)
