"""Refused config values as the user meets them, and the schema that refuses them.

`scripts/train.py` in a real process prints one line `error: ...` on stderr, exits with status 2 and writes
nothing under output_root; `HYDRA_FULL_ERROR=1` shows the traceback; a sweep prints each refused job's line,
runs the other jobs and exits non-zero. In process: the schema's exact messages, the impossible combinations,
and every config the tables catalogue runs (experiment x optimizer x scale) passes the schema.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir

from adamp_repro.config import SCALES, validate_config
from adamp_repro.errors import ConfigError, UsageError
from adamp_repro.reproduce import load_tables, optimizers_of
from adamp_repro.train.runner import config_hash

from .conftest import CONFIG_DIR, PROJECT_ROOT, compose_config

TRAIN = PROJECT_ROOT / "scripts" / "train.py"


def train_process(
    tmp_path, *overrides: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | {"WANDB_MODE": "offline"}
    return subprocess.run(
        [sys.executable, str(TRAIN), *overrides, f"output_root={tmp_path}/runs", "logger=none", "device=cpu"],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        env=environ | (env or {}),
        timeout=120,
    )


def written(tmp_path) -> list[str]:
    """Files under output_root, leaving out Hydra's own sweep folder (made before any job starts)."""
    root = tmp_path / "runs"
    return sorted(str(p) for p in root.rglob("*") if p.is_file() and ".multirun" not in p.parts)


@pytest.mark.parametrize(
    "override,line",
    [
        ("optimizer.lr=-1", "error: optimizer.lr=-1: expected a finite number >= 0"),
        (
            "+train.chekpoint=false",
            "error: train.chekpoint=false: unknown key; did you mean train.checkpoint?",
        ),
        (  # refused by the task's own builder, which also runs before the run folder is made
            "task=adversarial task.autoattack.version=custom",
            "error: task.autoattack: Invalid autoattack attacks: None; version 'custom' needs a list",
        ),
        (  # the data source is checked (file names only) before the run folder is made
            "dataset=cifar10 dataset.root=/nonexistent/cifar",
            "error: dataset.root='/nonexistent/cifar' (does not exist) holds no data set in any allowed layout. "
            "Allowed layouts: root/train_jpeg.npz",
        ),
        (
            "experiment=imagenette_resnet18 dataset.root=/nonexistent/imagenette",
            "error: dataset.root='/nonexistent/imagenette' (does not exist) must hold ImageFolder trees "
            "train/<class>/* and val/<class>/*. To obtain the data: run `make data-imagenette`",
        ),
    ],
)
def test_refused_value_is_one_line_and_exit_2(tmp_path, override, line):
    out = train_process(tmp_path, *override.split())
    assert out.returncode == 2, out.stderr[-2000:]
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert out.stderr.startswith(line), out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    assert written(tmp_path) == [] and not (tmp_path / "runs").exists()


def test_full_error_shows_the_traceback(tmp_path):
    out = train_process(tmp_path, "optimizer.lr=-1", env={"HYDRA_FULL_ERROR": "1"})
    assert out.returncode != 0
    assert "Traceback" in out.stderr and "ConfigError: optimizer.lr=-1: expected" in out.stderr
    assert written(tmp_path) == []


def test_sweep_reports_each_refused_job_and_fails(tmp_path):
    out = train_process(tmp_path, "-m", "optimizer.lr=-1,-2")
    assert out.returncode != 0
    assert "error: optimizer.lr=-1: expected a finite number >= 0" in out.stderr
    assert "error: optimizer.lr=-2: expected a finite number >= 0" in out.stderr  # the second job still ran
    assert "Traceback" not in out.stderr + out.stdout
    assert written(tmp_path) == []


def test_any_usage_error_is_printed_the_same_way(monkeypatch, capsys):
    """A run folder held by another process, a refused resume: raised as UsageError, one line and exit 2."""
    from adamp_repro.cli import train as command  # what scripts/train.py and adamp-train run

    def refuse(cfg):
        raise UsageError("results/runs/x is held by process 123")

    monkeypatch.setattr(command, "run", refuse)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as stop:
        command.main(compose_config(["logger=none"]))  # hydra.main passes a given config straight through
    assert stop.value.code == 2
    assert capsys.readouterr().err == "error: results/runs/x is held by process 123\n"


# ------------------------------------------------------------------------------------------------ in process
@pytest.mark.parametrize(
    "overrides,message",
    [
        (["optimizer.lr=-1"], "optimizer.lr=-1: expected a finite number >= 0"),
        (["optimizer=sgd", "optimizer.lr=nan"], "optimizer.lr=nan: expected a finite number >= 0"),
        (["optimizer=adamw", "optimizer.lr=inf"], "optimizer.lr=inf: expected a finite number >= 0"),
        (["optimizer=adamp", "optimizer.eps=0"], "optimizer.eps=0: expected a finite number > 0"),
        (
            ["optimizer=adamp", "optimizer.betas=[0.9,1.0]"],
            "optimizer.betas=[0.9, 1.0]: expected two numbers in",
        ),
        (["+optimizer.momentun=0.9"], "optimizer.momentun=0.9: not a keyword of 'sgdp'; did you mean "),
        (["optimizer=adam", "+optimizer.nesterov=true"], "optimizer.nesterov=true: not a keyword of 'adam'"),
        (["train.checkpoint='false'"], "train.checkpoint='false': expected true or false"),
        (["train.checkpoint=yes"], "train.checkpoint='yes': expected true or false"),
        (["+train.chekpoint=false"], "train.chekpoint=false: unknown key; did you mean train.checkpoint?"),
        (["+dataset.batchsize=64"], "dataset.batchsize=64: unknown key; did you mean dataset.batch_size?"),
        (["+foo=1"], "foo=1: unknown key; valid keys: "),
        (["dataset.batch_size=2.0"], "dataset.batch_size=2.0: expected a positive integer"),
        (["dataset.batch_size=true"], "dataset.batch_size=true: expected a positive integer"),
        (["seed=1.5"], "seed=1.5: expected an integer >= 0"),
        (["train.grad_clip_norm=-1"], "train.grad_clip_norm=-1: expected a finite number > 0 or null"),
        (["train.channels_last=1"], "train.channels_last=1: expected auto, true or false"),
        (["train.amp=fp8"], "train.amp='fp8': expected one of ['none', 'bf16', 'fp16']"),
        (
            ["dataset.family=tpu"],
            "dataset.family='tpu': expected one of ['in_memory', 'image_folder', 'text'] "
            "(old spellings, still read: 'cifar', 'imagenet')",
        ),
        (["+model.kwargs.drop_rate=inf"], "model.kwargs.drop_rate=inf: expected a finite number"),
        (["+recipe.adam.lr=nan"], "recipe.adam.lr=nan: expected a finite number"),  # not the run's optimizer
        (["+model.kwargs.num_classes=3"], "model.kwargs.num_classes=3 is set by the data set"),
        (["model.name=resnet20"], "model.name='resnet20' is not a timm model; close matches: ["),
        (
            ["task=adversarial", "task.train_attack.steps=-1"],
            "task.train_attack.steps=-1: expected an integer >= 0",
        ),
        (["logger=wandb", "logger.mode=later"], "logger.mode='later': expected one of ['auto', 'online', "),
        (["run_name=a/b"], "run_name='a/b': expected a name without '/'"),
        (["resume=maybe"], "resume='maybe': expected one of ['auto', 'never']"),
        (["run_name=${nope}"], "run_name: Interpolation key 'nope' not found"),
        (
            ["scale=smoke", "scheduler.warmup_epochs=2"],
            "scheduler.warmup_epochs=2: expected fewer than the run's",
        ),
        (
            ["scheduler=multistep", "scheduler.milestones_frac=[0.75,0.5]"],
            "scheduler.milestones_frac=[0.75, 0.5]",
        ),
        (
            ["dataset=imagenette", "model=vit_small"],
            "model.name='vit_small_patch16_224' takes 224x224 images only, but the data gives 64x64",
        ),
    ],
)
def test_schema_refuses_in_one_line_naming_the_value(overrides, message):
    with pytest.raises(ConfigError) as refused:
        validate_config(compose_config(overrides))
    assert str(refused.value).startswith(message), str(refused.value)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize(
    "overrides",
    [
        ["model=vit_small", "+model.kwargs.img_size=32"],  # the ViT built for 32 px
        ["model=vit_small", "+model.kwargs.dynamic_img_size=true"],
        ["scale=smoke", "scheduler.warmup_epochs=1"],
        ["+model.kwargs.drop_rate=0.1", "train.channels_last=false", "threads=2"],
        ["logger=wandb", "logger.tags=[a,b]"],
    ],
)
def test_schema_accepts_meaningful_values(overrides):
    validate_config(compose_config(overrides))


@pytest.mark.parametrize(
    ("dataset", "old", "new"),
    [("cifar10_mini", "cifar", "in_memory"), ("imagenette", "imagenet", "image_folder")],
)
def test_old_family_spelling_still_composes_and_validates(dataset, old, new):
    """A user's config, or an old record's config.yaml, written before the family values were renamed."""
    assert compose_config([f"dataset={dataset}"]).dataset.family == new
    cfg = compose_config([f"dataset={dataset}", f"dataset.family={old}"])
    validate_config(cfg)
    assert config_hash(cfg) == config_hash(compose_config([f"dataset={dataset}"]))


def test_sync_batchnorm_on_cpu_is_refused_only_where_it_would_be_used(monkeypatch):
    cfg = compose_config(["device=cpu", "distributed.sync_batchnorm=true"])
    monkeypatch.delenv("SLURM_NTASKS", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    validate_config(cfg)  # one process: the runner does not convert, plain batch norm is the same thing
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=r"^distributed.sync_batchnorm=true: SyncBatchNorm needs CUDA"):
        validate_config(cfg)


def test_validation_leaves_the_config_and_its_hash_alone():
    cfg = compose_config(["experiment=imagenette_resnet18", "optimizer=adamp"])
    before, text = config_hash(cfg), str(cfg)
    validate_config(cfg)
    assert config_hash(cfg) == before and str(cfg) == text


def _shipped() -> list[tuple[str, str]]:
    pairs = {
        (e, o) for spec in load_tables().values() for e in spec["experiments"] for o in optimizers_of(spec, e)
    }
    return sorted(pairs)


def _passes(experiment: str, optimizer: str, scale: str) -> None:
    """Compose (inside the caller's initialize_config_dir, cheaper than one per config) and validate."""
    cfg = compose(
        config_name="train",
        overrides=[f"experiment={experiment}", f"optimizer={optimizer}", f"scale={scale}"],
    )
    try:
        validate_config(cfg)
    except ConfigError as exc:
        pytest.fail(f"experiment={experiment} optimizer={optimizer} scale={scale}: {exc}")


def test_every_config_the_tables_run_passes_the_schema():
    """Every experiment x optimizer pair of the catalogue at smoke scale, and every experiment at each scale.
    The scale group sets only ``scale.*``, which meets the scheduler (warmup vs run length) and not the
    optimizer, so this covers the product; the full product is the slow test below."""
    shipped = _shipped()
    assert len(shipped) >= 20  # every table's experiments with each of their optimizers
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        for experiment, optimizer in shipped:
            _passes(experiment, optimizer, "smoke")
        for experiment, optimizer in dict(shipped).items():
            for scale in SCALES[1:]:
                _passes(experiment, optimizer, scale)


@pytest.mark.slow
@pytest.mark.parametrize("scale", SCALES)
def test_every_experiment_optimizer_scale_passes_the_schema(scale):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        for experiment, optimizer in _shipped():
            _passes(experiment, optimizer, scale)
