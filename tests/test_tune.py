"""Tuning studies (adamp_repro.tune): bad input refused in one line before anything is written, the committed
points read back (never redrawn), the held-out validation split, and a minimum-budget study of two optimizers
end to end through the command line with real subprocesses, killed part-way by a real signal and rerun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from adamp_repro import tune
from adamp_repro.data.cifar_sources import CifarArrays
from adamp_repro.data.in_memory import hold_out_validation
from tests.conftest import PROJECT_ROOT, compose_config

STUDY = {
    "name": "tiny",
    "table": "mini",
    "experiment": "mini_cifar10_resnet20",
    "optimizers": ["adamw", "adamp"],
    "pairs": [["adamw", "adamp"]],
    "validation": {"size": 100, "seed": 0},
    "budget": {"studies": 1, "trials": 2, "seeds": 2},
    "draw": {"method": "halton", "seed": 0},
    "spaces": {
        "adamw": {"lr": {"low": 1e-4, "high": 1e-2, "log": True}, "weight_decay": {"low": 5e-3, "high": 1.0}},
        "adamp": {
            "lr": {"low": 1e-4, "high": 1e-2, "log": True},
            "weight_decay": {"low": 5e-2, "high": 10.0},
        },
    },
    "overrides": ["threads=1"],
}
# Smaller than scale=smoke still: one short epoch per run (amounts only).
TINY = [
    "progress=false",
    "scale.epochs=1",
    "scale.max_steps_per_epoch=2",
    "scale.train_subset=64",
    "scale.eval_subset=50",
    "dataset.batch_size=32",
    "dataset.eval_batch_size=50",
]


def write_study(folder: Path, **changes) -> Path:
    study = json.loads(json.dumps(STUDY))
    for key, value in changes.items():
        node, *path = key.split(".")
        target = study
        for part in [node, *path][:-1]:
            target = target[part]
        if value is None:
            target.pop([node, *path][-1], None)
        else:
            target[[node, *path][-1]] = value
    file = folder / "tiny.yaml"
    file.write_text(yaml.safe_dump(study))
    return file


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"spaces.adamw.lr": {"low": 1e-3, "high": 1e-3, "log": True}}, "is empty"),
        ({"spaces.adamw.lr": {"low": 1e-2, "high": 1e-4, "log": True}}, "is inverted"),
        ({"spaces.adamw.lr": {"low": 0.0, "high": 1e-2, "log": True}}, "a log range needs low > 0"),
        ({"spaces.adamw.momentum": {"low": 0.5, "high": 0.9}}, "takes no searchable key 'momentum'"),
        (
            {"spaces.adamw.weight_decay": {"low": -1.0, "high": 1.0, "log": False}},
            "leaves the values adamw takes",
        ),
        ({"budget.trials": 1}, "at least 2 trials"),
        ({"budget.seeds": 1}, "at least 2"),
        ({"validation": None}, "has no validation split"),
        (
            {"table": "imagenette", "experiment": "imagenette_resnet18"},
            "has no validation split: experiment imagenette_resnet18",
        ),
    ],
)
def test_bad_study_is_one_line_exit_2_nothing_written(tmp_path, capsys, change, says):
    file = write_study(tmp_path, **change)
    out = tmp_path / "out"
    status = tune.main(["--study", str(file), "--scale", "smoke", "--out", str(out)])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and says in err, err
    assert not out.exists() and not (tmp_path / "tiny.points.yaml").exists()


def test_budget_below_minimum_on_the_command_line(tmp_path, capsys):
    file = write_study(tmp_path)
    assert tune.main(["--study", str(file), "--trials", "1", "--out", str(tmp_path / "out")]) == 2
    assert "at least 2 trials" in capsys.readouterr().err


def test_committed_points_are_read_back_not_redrawn(tmp_path):
    committed = tune.load_study(tune.STUDIES_DIR / "mini.yaml")
    points, changed, _ = tune.points_for(committed)
    assert not changed  # the committed file holds the whole budget
    on_disk = yaml.safe_load(committed.points_file.read_text())["points"]
    assert points["adamw"] == on_disk["adamw"] and len(points["adamp"]) == 15
    # the same study with another draw seed, beside a copy of the committed points: the points do not move
    copy = tmp_path / "mini.yaml"
    raw = yaml.safe_load((tune.STUDIES_DIR / "mini.yaml").read_text())
    copy.write_text(yaml.safe_dump({**raw, "draw": {"method": "halton", "seed": 7}}))
    (tmp_path / "mini.points.yaml").write_text(committed.points_file.read_text())
    moved, changed, notes = tune.points_for(tune.load_study(copy))
    assert moved == points and not changed and "committed points are used" in notes[0]
    # without the committed file, seed 7 draws other points: the check above is not vacuous
    (tmp_path / "mini.points.yaml").unlink()
    fresh, changed, _ = tune.points_for(tune.load_study(copy))
    assert changed and fresh["adamw"] != points["adamw"]


def test_validation_split_is_held_out_of_training_and_balanced():
    labels = torch.arange(10).repeat(30)  # image i holds the number i (int64: distinct ids, not pixels)
    images = torch.arange(300).view(300, 1, 1, 1).expand(300, 3, 2, 2).contiguous()
    arrays = CifarArrays(images, labels, images[:5], labels[:5], tuple("abcdefghij"), "test", False)
    split, label = hold_out_validation(arrays, {"size": 50, "seed": 3})
    held = set(split.eval_images[:, 0, 0, 0].tolist())
    kept = set(split.train_images[:, 0, 0, 0].tolist())
    assert len(held) == 50 and len(kept) == 250 and not held & kept
    assert np.bincount(split.eval_labels.numpy()).tolist() == [5] * 10
    assert "held out" in label
    again, _ = hold_out_validation(arrays, {"size": 50, "seed": 3})
    assert torch.equal(again.eval_images, split.eval_images)
    assert hold_out_validation(arrays, None) == (arrays, "")


def test_unset_validation_and_study_move_no_folder():
    from adamp_repro.train.runner import config_hash

    base = compose_config(["experiment=mini_cifar10_resnet20", "optimizer=adamw", "scale=smoke"])
    studied = compose_config(
        [
            "experiment=mini_cifar10_resnet20",
            "optimizer=adamw",
            "scale=smoke",
            "+study.name=s",
            "+study.role=default",
        ]
    )
    assert config_hash(base) != config_hash(studied)
    with_table = compose_config(
        [
            "experiment=mini_cifar10_resnet20",
            "optimizer=adamw",
            "scale=smoke",
            "+study.name=s",
            "+study.role=default",
            "+study.points={adamw:[{lr:0.1}]}",
        ]
    )
    assert config_hash(with_table) == config_hash(studied)  # the lookup table is never hashed


def _status(folder: Path) -> str:
    return json.loads((folder / "summary.json").read_text())["status"]


def _tune(file: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "adamp_repro.cli.tune", "--study", str(file), "--scale", "smoke",
            "--out", str(out), *extra, "--", *TINY]  # fmt: skip


def test_study_end_to_end_killed_and_rerun(tmp_path):
    file = write_study(tmp_path)
    out = tmp_path / "out"
    runs = out / "runs" / "mini_cifar10_resnet20" / "smoke"
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT / "src"), "OMP_NUM_THREADS": "1"}
    # first go: killed by SIGTERM (the whole process group, as a scheduler would) once a trial has finished
    proc = subprocess.Popen(_tune(file, out), cwd=PROJECT_ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        done = [p.parent for p in runs.glob("*/summary.json") if _status(p.parent) == "completed"]
        if done:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the study ended before it could be killed"
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    before = {p: (p / "summary.json").stat().st_mtime_ns for p in done}
    assert (tmp_path / "tiny.points.yaml").is_file()
    # rerun: only what is missing runs; the finished trial keeps its record untouched
    result = subprocess.run(_tune(file, out), cwd=PROJECT_ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    folders = sorted(p.parent for p in runs.glob("*/summary.json"))
    assert len(folders) == 2 * 2 + 2 * 2 * 2  # trials + default and tuned confirmations
    assert all(_status(f) == "completed" for f in folders)
    for folder, mtime in before.items():
        assert (folder / "summary.json").stat().st_mtime_ns == mtime
    summaries = [json.loads((f / "summary.json").read_text()) for f in folders]
    roles = sorted((s["study_role"], s["optimizer"], s["eval_split"]) for s in summaries)
    assert roles.count(("trial", "adamw", "validation")) == 2
    assert roles.count(("tuned", "adamp", "test")) == 2 and roles.count(("default", "adamw", "test")) == 2
    page = (out / "tables" / "study_tiny.md").read_text()
    assert "adamp - adamw" in page and "median of the studies' bests" in page
    assert (out / "figures" / "study_tiny.png").is_file()
    # a diverged trial is a finished trial: a rerun plans nothing for it
    trial = next(f for f, s in zip(folders, summaries) if s["study_role"] == "trial")
    summary = json.loads((trial / "summary.json").read_text())
    (trial / "summary.json").write_text(json.dumps({**summary, "status": "diverged"}))
    plan = subprocess.run(
        _tune(file, out, "--dry-run"), cwd=PROJECT_ROOT, env=env, capture_output=True, text=True
    )
    assert "trial: 4 run(s), 4 finished, 0 to run" in plan.stdout, plan.stdout + plan.stderr
    # the pilot: the default recipes only (finished here), then the spread and the detectable gain
    pilot = subprocess.run(
        _tune(file, out, "--pilot"), cwd=PROJECT_ROOT, env=env, capture_output=True, text=True
    )
    assert pilot.returncode == 0, pilot.stdout[-3000:] + pilot.stderr[-3000:]
    assert "default: 4 run(s), 4 finished, 0 to run" in pilot.stdout and "trial:" not in pilot.stdout
    assert "pilot adamp - adamw, default recipes, 2 paired seed(s)" in pilot.stdout, pilot.stdout
    assert "smallest gain detected 80% of the time" in pilot.stdout and "| detectable |" in page
