from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException

from dlnlab.experiments.build import compose, conf_dir, prepare
from dlnlab.experiments.checks import validate
from dlnlab.experiments.config import ConfigError
from dlnlab.tasks import DataError

GROUPS = ("model", "task", "optim", "record", "experiment")


def options(group):
    return sorted(p.stem for p in (Path(conf_dir()) / group).glob("*.yaml"))


@pytest.mark.parametrize("group, option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_config_option_composes_and_validates(group, option):
    overrides = [f"{group}={option}"]
    if option == "regression_file":
        overrides += ["task.path=/nonexistent.npz"]  # composes; the file is checked at prepare time
    cfg = compose(overrides)
    validate(cfg)


def test_default_config_is_the_saddle_to_saddle_experiment():
    cfg = compose()
    assert cfg.model.depth == 4 and cfg.model.init.kind == "small"
    assert cfg.task.kind == "regression" and cfg.optim.name == "gd"


def test_typo_fails_at_compose_time_naming_the_key():
    with pytest.raises(ConfigCompositionException) as e:
        compose(["model.widht=3"])
    assert "widht" in str(e.value) + str(e.value.__cause__)


def test_wrong_type_fails_at_compose_time():
    with pytest.raises(ConfigCompositionException) as e:
        compose(["optim.lr=fast"])
    assert "lr" in str(e.value) + str(e.value.__cause__)


def test_task_options_are_checked_per_task():
    # `spectrum` belongs to regression, not to matrix completion
    with pytest.raises(ConfigCompositionException):
        compose(["task=matrix_completion", "task.spectrum=[1.0]"])


@pytest.mark.parametrize("override, option", [
    ("model.depth=1", "model.depth"),
    ("model.depth=9223372036854775807", "model.depth"),  # found by the fuzz test: no list of 2^63 layers
    ("model.width=0", "model.width"),
    ("model.widths=[3,3]", "model.widths"),
    ("model.init.kind=xavier", "model.init.kind"),
    ("optim.lr=0", "optim.lr"),
    ("optim.lr=-0.1", "optim.lr"),
    ("optim.ridge=-1", "optim.ridge"),
    ("optim.milestones=[10,5]", "optim.milestones"),
    ("optim.lr_values=[0.1,0.2]", "optim.lr_values"),
    ("record.rank_rtol=1.5", "record.rank_rtol"),
    ("record.rank_rtol=0", "record.rank_rtol"),
    ("record.every=0", "record.every"),
    ("precision=float16", "precision"),
    ("record.progress=maybe", "record.progress"),
    ("seed=-1", "seed"),
    ("optim.lr=inf", "optim.lr"),
    ("model.init.scale=inf", "model.init.scale"),
    ("task.noise=-1", "task.noise"),
    ("record.tb_members=-3", "record.tb_members"),
    ("record.checkpoint_every=150", "record.checkpoint_every"),
])
def test_invalid_values_fail_with_the_option_named(override, option):
    cfg = compose([override])
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert str(e.value).startswith(option + "=") and "allowed" in str(e.value)


def test_batch_size_must_fit_the_data():
    cfg = compose(["optim=sgd", "optim.batch_size=65", "task.m=64"])
    with pytest.raises(ConfigError, match=r"optim.batch_size=65 .*1\.\.64"):
        prepare(cfg)


def test_regression_violating_assumption1_is_rejected_clearly():

    with pytest.raises(DataError, match="Assumption 1"):
        prepare(compose(["task.spectrum=[2.0,2.0,1.0,0.5]"]))  # repeated eigenvalue
    with pytest.raises(DataError, match="d_y <= d_x <= m"):
        prepare(compose(["task.d_x=3", "task.d_y=4"]))


@pytest.mark.parametrize("overrides, option", [
    (["task=matrix_completion", "task.observed_count=0"], "task.observed_count"),
    (["experiment=one_way_jumps", "jumps.label_every=-1"], "jumps.label_every"),
])
def test_invalid_values_in_other_groups_fail_with_the_option_named(overrides, option):
    with pytest.raises(ConfigError) as e:
        validate(compose(overrides))
    assert str(e.value).startswith(option + "=") and "allowed" in str(e.value)
