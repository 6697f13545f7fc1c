"""The Imagenette proxy of P1's ResNet18 row and of the ResNet-18 analysis: the experiment files compose to
P1's recipe on Imagenette, a run on a tiny ImageFolder tree completes and is tagged for table "imagenette",
and a missing data folder fails with the path and the command that provides it."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from adamp_repro.reproduce import load_tables
from adamp_repro.train import run
from adamp_repro.train.runner import _scaled_optimizer_cfg

from .conftest import compose_config

CLASSES = ("n01440764", "n02102040", "n02979186")  # three Imagenette wnids
SMALL = [
    "scale=smoke",
    "scale.train_subset=null",
    "scale.eval_subset=null",
    "device=cpu",
    "progress=false",
    "threads=1",
    f"dataset.num_classes={len(CLASSES)}",
    "dataset.batch_size=4",
    "dataset.eval_batch_size=4",
    "dataset.crop_size=32",
    "dataset.resize_size=36",
    "dataset.num_workers=0",
]


@pytest.fixture
def tiny_imagenette(tmp_path) -> Path:
    """train/ (4 per class) and val/ (2 per class) of 40x40 JPEGs, one of them greyscale, as Imagenette has."""
    rng = np.random.default_rng(0)
    root = tmp_path / "imagenette-tiny"
    for split, count in (("train", 4), ("val", 2)):
        for label, wnid in enumerate(CLASSES):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8) // 2 + 40 * label
                image = Image.fromarray(pixels.astype(np.uint8))
                if split == "train" and label == 0 and i == 0:
                    image = image.convert("L")
                image.save(folder / f"{wnid}_{i}.JPEG", quality=90)
    return root


def test_recipe_is_p1_resnet18_on_imagenette_with_linear_scaling():
    for optimizer in ("sgd", "sgdp", "adamw", "adamp"):
        ours = compose_config(["experiment=imagenette_resnet18", f"optimizer={optimizer}"])
        p1 = compose_config(["experiment=imagenet_resnet18", f"optimizer={optimizer}"])
        assert OmegaConf.to_container(ours.recipe) == OmegaConf.to_container(p1.recipe)
        plain = [OmegaConf.to_container(c.optimizer, resolve=True) for c in (ours, p1)]
        assert plain[0] == plain[1]
        assert (ours.epochs, ours.scheduler, ours.model.name) == (p1.epochs, p1.scheduler, p1.model.name)
        assert ours.dataset.name == "imagenette" and ours.dataset.crop_size == 64
        assert dict(ours.table) == {"id": "imagenette", "block": "imagenette", "model": "ResNet18"}
        # Batch 64, lr of the paper's batch 256 scaled linearly: 1/4 of the recipe's lr at run time.
        assert ours.dataset.batch_size == 64 and ours.distributed.lr_scaling == "linear"
        scaled = _scaled_optimizer_cfg(ours, SimpleNamespace(world_size=1))
        assert scaled.lr == pytest.approx(ours.recipe[optimizer].lr * 64 / 256)
    assert compose_config(["experiment=imagenette_resnet18", "scale=mini"]).scale.epochs == 8


def test_analysis_is_step_decay_and_vanilla_has_no_momentum():
    for name, block, momentum in (
        ("imagenette_resnet18_analysis", "momentum", 0.9),
        ("imagenette_resnet18_analysis_vanilla", "vanilla", 0.0),
    ):
        cfg = compose_config([f"experiment={name}", "optimizer=sgd", "scale=paper"])
        assert (cfg.table.id, cfg.table.block, cfg.experiment_name) == ("imagenette_analysis", block, name)
        assert cfg.scheduler.name == "step" and cfg.scale.epochs == 90
        assert round(cfg.scheduler.step_frac * cfg.scale.epochs) == 30 and cfg.scheduler.gamma == 0.1
        assert cfg.optimizer.momentum == momentum and cfg.optimizer.nesterov == (momentum > 0)
        assert cfg.optimizer.lr == 0.1 and cfg.dataset.name == "imagenette"
    tables = load_tables()
    assert tables["imagenette"]["experiments"] == ["imagenette_resnet18"]
    assert set(tables["imagenette_analysis"]["experiments"]) == {
        "imagenette_resnet18_analysis",
        "imagenette_resnet18_analysis_vanilla",
    }


def test_smoke_run_on_a_tiny_tree_fills_the_imagenette_table(tiny_imagenette, tmp_path):
    cfg = compose_config(
        [
            "experiment=imagenette_resnet18",
            f"dataset.root={tiny_imagenette}",
            f"output_root={tmp_path}/runs",
            *SMALL,
        ]
    )
    summary = run(cfg)
    assert summary["status"] == "completed", summary.get("error")
    assert summary["table_id"] == "imagenette" and summary["table_model"] == "ResNet18"
    assert "Imagenette" in summary["dataset_label"] and "not ImageNet" in summary["dataset_label"]
    assert summary["epochs"] == 2 and 0.0 <= summary["final_eval_top1"] <= 100.0


def test_missing_data_names_the_path_and_make_target(tmp_path):
    missing = tmp_path / "no-imagenette-here"
    cfg = compose_config(
        ["experiment=imagenette_resnet18", f"dataset.root={missing}", f"output_root={tmp_path}/runs", *SMALL]
    )
    with pytest.raises(FileNotFoundError) as info:
        run(cfg)
    assert str(missing) in str(info.value) and "make data-imagenette" in str(info.value)
    assert not (tmp_path / "runs").exists()  # refused before the run folder is made
