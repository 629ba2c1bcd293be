"""Every config composes and validates; bad configs fail with one line and exit code 2 before any work."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from test_train_support import CONF, compose, run_cli, tiny_overrides

from kernel_attention.config import TrainConfig, config_differences
from kernel_attention.registry import ConfigError


def options(group: str) -> list[str]:
    """The yaml files of a config group: new presets are covered without touching this test."""
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))



@pytest.mark.parametrize("task,model", list(itertools.product(options("task"), options("model"))))
def test_task_model_combinations_compose(task: str, model: str) -> None:
    """Every task × model preset (with the default kernel): valid pairs build, an LM preset under a translation
    task is refused. The kernel axis is independent of both (the kernel only enters the attention layers), so
    it is covered once per kernel below instead of crossing it with these."""
    raw = compose([f"task={task}", f"model={model}"])
    if raw["task"]["type"] == "translation" and min(raw["model"]["encoder_layers"], raw["model"]["decoder_layers"]) < 1:
        with pytest.raises(ConfigError, match="has no encoder"):
            TrainConfig.from_dict(raw)
        return
    cfg = TrainConfig.from_dict(raw)
    assert cfg.task.name == raw["task"]["name"] and cfg.model.preset == raw["model"]["preset"]
    assert type(cfg.task).__name__ == {"translation": "TranslationConfig", "lm": "LMConfig"}[raw["task"]["type"]]
    assert cfg.model.d_model % cfg.model.heads == 0


@pytest.mark.parametrize("kernel", options("kernel"))
def test_every_kernel_composes_with_both_task_types(kernel: str) -> None:
    for task in ("multi30k", "tinyshakespeare"):
        raw = compose([f"kernel={kernel}", f"task={task}"])
        cfg = TrainConfig.from_dict(raw)
        assert cfg.kernel_name == raw["kernel"]["name"] and cfg.task.name == task


@pytest.mark.parametrize("group", ["optim", "trainer", "logger"])
def test_run_groups_compose(group: str) -> None:
    for option in options(group):
        cfg = TrainConfig.from_dict(compose([f"{group}={option}"]))
        assert cfg.to_dict()[group]


def test_default_is_small_and_paper_setting_composes() -> None:
    cfg = TrainConfig.from_dict(compose([]))
    assert (cfg.kernel_name, cfg.task.name, cfg.model.preset) == ("edp", "multi30k", "transformer_small")
    assert cfg.logger.mode == "offline" and cfg.trainer.evaluate_at_end
    paper = TrainConfig.from_dict(compose(["kernel=rbf", "task=iwslt", "model=transformer_iwslt_de_en"]))
    assert (paper.model.d_model, paper.model.heads, paper.model.ffn_dim) == (512, 4, 1024)
    assert paper.optim.betas == [0.9, 0.98] and paper.optim.label_smoothing == 0.1


def test_preset_label_names_the_run() -> None:
    cfg = TrainConfig.from_dict(compose(["kernel=quadratic"]))
    assert cfg.kernel_name == "polynomial" and cfg.kernel_label == "quadratic"


def test_run_control_fields_may_differ_on_resume() -> None:
    a = TrainConfig.from_dict(compose([])).to_dict()
    b = TrainConfig.from_dict(compose(["trainer.max_updates=5", "logger=none", "trainer.resume=true"])).to_dict()
    assert config_differences(a, b) == []
    c = TrainConfig.from_dict(compose(["optim.lr=1e-3"])).to_dict()
    assert config_differences(a, c) == ["optim.lr"]


@pytest.mark.parametrize("task", ["multi30k", "tinyshakespeare"])
def test_checkpoint_from_the_single_task_config_resumes(task: str) -> None:
    """Checkpoints written before task types had their own configs hold every task option (an LM run's max_len_a,
    a translation run's block_size): those never acted on the run, so they are no difference; the run's own
    options still are."""
    new = TrainConfig.from_dict(compose([f"task={task}"])).to_dict()
    old = {**new, "task": {"block_size": 256, "valid_bleu_samples": 200, "max_len_a": 1.2, "max_len_b": 10,
                           **new["task"]}}
    assert config_differences(old, new) == []
    own = "block_size" if task == "tinyshakespeare" else "valid_bleu_samples"
    changed = {**old, "task": {**old["task"], own: 7}}
    assert config_differences(changed, new) == [f"task.{own}"]


def test_launcher_configs_exist_and_compose(tmp_path: Path) -> None:
    for launcher in ("joblib", "slurm"):
        proc = run_cli([f"hydra/launcher={launcher}", "--cfg", "hydra"], cwd=tmp_path)
        assert "_target_: hydra_plugins" in proc.stdout


BAD = [
    (["optim.lrr=1"], "lrr"),  # unknown option (Hydra: not in schema)
    (["+trainer.foo=1"], "unknown option(s) foo for trainer"),
    (["+kernel.foo=1"], "unknown option(s) foo for kernel"),
    (["optim.lr=abc"], "could not be converted to Float"),  # wrong type
    (["task.max_tokens=abc"], "task 'multi30k' (translation): option max_tokens='abc' must be of type int"),
    # Each task type has its own options: an LM option on a translation task (and back) is named and refused.
    (["+task.block_size=64"], "unknown option(s) block_size for task 'multi30k' (translation); allowed: "),
    (["task=tinyshakespeare", "+task.valid_bleu_samples=5"], "unknown option(s) valid_bleu_samples for task "
                                                              "'tinyshakespeare' (lm)"),
    (["task=tinyshakespeare", "trainer.best_metric=bleu"], "trainer.best_metric='bleu' is not a validation number"),
    (["model.heads=3"], "model.heads=3"),  # heads must divide d_model
    (["kernel=nope"], "Could not find 'kernel/nope'"),
    (["model=lm_small"], "has no encoder"),
    (["trainer.max_updates=0"], "training has no limit"),
    (["logger.mode=bogus"], "logger.mode='bogus'"),
]


@pytest.mark.parametrize("args,needle", BAD, ids=[a[0] for a, _ in BAD])
def test_bad_config_is_one_line_and_exit_2(tmp_path: Path, args: list[str], needle: str) -> None:
    proc = run_cli(["logger=none", *args], cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("train: config error: ") and needle in lines[0], proc.stderr
    assert not (tmp_path / "outputs").exists(), "a rejected command must not leave a run folder"


def test_resume_with_different_config_is_refused(tmp_path: Path, tiny_root: Path) -> None:
    args = [*tiny_overrides(tiny_root, "mt", updates=4), "trainer.max_updates=1000",
            "trainer.max_wall_time=0.01"]
    run_cli(args, cwd=tmp_path)  # stops on wall time right away, leaving last.pt
    run_dir = tmp_path / "outputs" / "tiny_mt" / "transformer_tiny" / "edp" / "seed1"
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    proc = run_cli([*args, "optim.lr=1e-2", "trainer.resume=true"], cwd=tmp_path, check=False)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "different config (optim.lr)" in lines[0], proc.stderr
    after = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != "train.log"}
    assert all(before[p] == data for p, data in after.items()), "an earlier run's files were overwritten"


@pytest.mark.parametrize("experiment", options("experiment"))
def test_experiments_compose_and_sweep_known_options(experiment: str) -> None:
    """Every conf/experiment/*.yaml validates, names its own sweep, and sweeps only options that exist."""
    import yaml

    cfg = TrainConfig.from_dict(compose([f"experiment={experiment}"]))
    assert cfg.sweep == experiment
    text = (CONF / "experiment" / f"{experiment}.yaml").read_text()
    assert f"experiment={experiment}" in text, "an experiment file carries the command that runs it"
    params = yaml.safe_load(text).get("hydra", {}).get("sweeper", {}).get("params", {})
    for group, values in params.items():
        if group in ("kernel", "task", "model", "optim", "trainer", "logger"):
            for value in sweep_values(group, str(values)):
                assert value in options(group), f"{experiment} sweeps unknown {group}={value}"


def sweep_values(group: str, values: str) -> list[str]:
    """What Hydra's sweeper expands ``group=values`` to (lists, ranges and glob() over the config group)."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path
    from hydra.core.override_parser.overrides_parser import OverridesParser

    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(CONF)))
    override = OverridesParser.create(config_loader=loader).parse_overrides([f"{group}={values}"])[0]
    return list(override.sweep_string_iterator()) if override.is_sweep_override() else [str(override.value())]


@pytest.mark.parametrize("experiment", ["multi30k_kernels", "shakespeare_kernels", "paper_iwslt", "kernels_mt"])
def test_every_kernel_sweeps_come_from_the_registry(experiment: str) -> None:
    """A new kernel (one file + one yaml) joins these studies with no edit to them."""
    import yaml

    from kernel_attention.kernels import KERNELS

    text = (CONF / "experiment" / f"{experiment}.yaml").read_text()
    swept = sweep_values("kernel", str(yaml.safe_load(text)["hydra"]["sweeper"]["params"]["kernel"]))
    assert set(KERNELS.names()) <= set(swept) and set(swept) == set(options("kernel")), swept


def test_eval_checkpoint_avg_needs_averaging() -> None:
    with pytest.raises(ConfigError, match="average_last"):
        TrainConfig.from_dict(compose(["trainer.eval_checkpoint=avg", "trainer.average_last=0"]))
    assert TrainConfig.from_dict(compose(["trainer=paper"])).trainer.eval_checkpoint == "avg"


@pytest.mark.parametrize("task", ["tinyshakespeare", "wikitext2", "wikitext103"])
def test_lm_tasks_select_an_lm_model_by_default(task: str) -> None:
    """Issue 16: an LM task used to train transformer_small's decoder unless model=lm_small was passed."""
    assert compose([f"task={task}"])["model"]["preset"] == "lm_small"
    assert compose([f"task={task}", "model=lm_base"])["model"]["preset"] == "lm_base"  # the command line wins
    assert compose([])["model"]["preset"] == "transformer_small"  # translation keeps its default
