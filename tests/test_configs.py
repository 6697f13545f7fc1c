"""The real config tree: every option of every group and every experiment composes; bad values fail early with
a message that names them; optimizer recipes reach the optimizer."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from adamp_repro.config import validate_config
from adamp_repro.reproduce import load_tables, multirun_command, optimizers_of, parse_args

from .conftest import CONFIG_DIR, PROJECT_ROOT, compose_config

GROUPS = ("model", "dataset", "optimizer", "scheduler", "task", "scale", "logger", "experiment")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


# Options that need a companion setting on the default data (32-px CIFAR images): the ViT is built for 224 px.
# The language model, the text data and the language-modelling task go together (each refuses the image ones).
LANGUAGE = ["model=causal_transformer", "dataset=tinyshakespeare", "task=language_model"]
FITTING = {
    ("model", "vit_small"): ["+model.kwargs.img_size=32"],
    ("model", "causal_transformer"): LANGUAGE,
    ("dataset", "tinyshakespeare"): LANGUAGE,
    ("task", "language_model"): LANGUAGE,
}


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_validates(group, option):
    cfg = compose_config([f"{group}={option}", "scale=smoke", *FITTING.get((group, option), [])])
    OmegaConf.resolve(cfg)
    assert "${" not in OmegaConf.to_yaml(cfg)
    validate_config(cfg)


@pytest.mark.parametrize("experiment", options("experiment"))
def test_experiment_files_name_their_table(experiment):
    text = (CONFIG_DIR / "experiment" / f"{experiment}.yaml").read_text()
    assert text.startswith("# @package _global_")
    cfg = compose_config([f"experiment={experiment}"])
    assert cfg.experiment_name == experiment
    assert cfg.table.id and cfg.table.block and cfg.table.model


@pytest.mark.parametrize("optimizer", ["sgd", "sgdp", "adam", "adamw", "adamp"])
def test_recipe_reaches_optimizer_and_command_line_wins(optimizer):
    cfg = compose_config(["experiment=imagenet_resnet18", f"optimizer={optimizer}"])
    assert cfg.optimizer.lr == cfg.recipe[optimizer].lr
    assert cfg.optimizer.weight_decay == cfg.recipe[optimizer].weight_decay
    cfg = compose_config(["experiment=imagenet_resnet18", f"optimizer={optimizer}", "optimizer.lr=0.123"])
    assert cfg.optimizer.lr == 0.123


def test_weight_decay_ablation_zeroes_every_decay():
    for optimizer in ("sgd", "sgdp", "adamw", "adamp"):
        cfg = compose_config(["experiment=imagenet_resnet18_nowd", f"optimizer={optimizer}"])
        assert cfg.optimizer.weight_decay == 0.0 and cfg.table.id == "P2"
        assert (
            cfg.optimizer.lr
            == compose_config(["experiment=imagenet_resnet18", f"optimizer={optimizer}"]).optimizer.lr
        )


def test_paper_scale_runs_the_recipe_epochs():
    cfg = compose_config(["experiment=cifar10_resnet56", "scale=paper"])
    assert cfg.scale.epochs == 200
    assert compose_config(["experiment=cifar10_resnet56", "scale=mini"]).scale.epochs == cfg.mini_epochs


@pytest.mark.parametrize(
    "override,needle",
    [
        ("optimizer.lr=-0.1", "optimizer.lr"),
        ("scale.epochs=0", "scale.epochs"),
        ("dataset.batch_size=0", "dataset.batch_size"),
        ("model.name=resnet_does_not_exist", "resnet_does_not_exist"),
        ("seed=-1", "seed"),
        ("resume=sometimes", "resume"),
    ],
)
def test_bad_values_fail_before_work_with_their_name(override, needle):
    cfg = compose_config([override])
    with pytest.raises(ValueError, match=needle):
        validate_config(cfg)


def test_unknown_group_option_lists_the_valid_ones():
    with pytest.raises(ConfigCompositionException, match="sgdp"):
        compose_config(["optimizer=no_such_optimizer"])


def test_reproduce_table_rejects_unknown_names(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--table", "P9"])
    assert "valid tables" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--scale", "huge"])
    assert "smoke, mini, paper" in capsys.readouterr().err


def test_every_table_names_existing_experiments():
    for name, spec in load_tables().items():
        for experiment in spec["experiments"]:
            assert (CONFIG_DIR / "experiment" / f"{experiment}.yaml").is_file(), (name, experiment)
        cmd = multirun_command(spec["experiments"][0], spec["optimizers"], 2, "smoke", ["logger=none"])
        assert "-m" in cmd and "seed=0,1" in cmd and cmd[-1] == "logger=none"
    # The analysis runs the paper's three curves: vanilla SGD, momentum SGD, SGDP.
    analysis = load_tables()["imagenette_analysis"]
    assert optimizers_of(analysis, "imagenette_resnet18_analysis") == ["sgd", "sgdp"]
    assert optimizers_of(analysis, "imagenette_resnet18_analysis_vanilla") == ["sgd"]


def test_tables_file_rejects_optimizers_for_an_unlisted_experiment(tmp_path):
    bad = tmp_path / "tables.yaml"
    bad.write_text("t:\n  experiments: [a]\n  optimizers: [sgd]\n  optimizers_for: {b: [sgdp]}\n  seeds: 1\n")
    with pytest.raises(ValueError, match=r"table 't' sets optimizers_for \['b'\]"):
        load_tables(bad)


def test_train_script_help_composes():
    out = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "scripts" / "train.py"), "--cfg", "job", "optimizer=adamp"],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
    )
    assert out.returncode == 0, out.stderr
    assert "name: adamp" in out.stdout


def test_fresh_reproduction_retrains_complete_runs(capsys):
    from adamp_repro.reproduce import main

    assert main(["--dry-run", "--fresh"]) == 0
    assert "resume=never" in capsys.readouterr().out
