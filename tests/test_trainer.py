"""The shared trainer end to end on the embedded CIFAR subset: it learns, records, resumes exactly, and fails
with a record."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F

from adamp_repro.tracking.records import read_csv_rows, read_provenance_segments, read_summary
from adamp_repro.train import run, run_dir_for
from adamp_repro.train.checkpoint import CHECKPOINT_NAME
from adamp_repro.train.schedule import build_lr_factor

from .conftest import PROJECT_ROOT


def test_smoke_run_writes_a_complete_record(smoke_cfg):
    cfg = smoke_cfg("optimizer=sgdp")
    summary = run(cfg)
    run_dir = run_dir_for(cfg)
    assert summary["status"] == "completed"
    for name in ("config.yaml", "provenance.json", "metrics.csv", "summary.json", CHECKPOINT_NAME):
        assert (run_dir / name).is_file(), name
    on_disk = read_summary(run_dir)
    assert on_disk["status"] == "completed" and on_disk["epochs"] == cfg.scale.epochs == 2
    for key in (
        "final_eval_top1",
        "final_eval_top5",
        "best_eval_top1",
        "final_eval_loss",
        "final_train_loss",
        "wall_time_s",
        "images_per_s",
        "optimizer",
        "model",
        "dataset_label",
        "seed",
        "scale",
    ):
        assert on_disk[key] is not None, key
    rows = read_csv_rows(run_dir / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert {"train_loss", "eval_top1", "lr", "images_per_s"} <= set(rows[0])
    (prov,) = read_provenance_segments(run_dir)  # one segment: the run was never resumed
    assert {"git_commit", "git_dirty", "src_hash", "started_at", "packages", "device", "seed"} <= set(prov)
    assert on_disk["segments"] == 1 and on_disk["code_changed_on_resume"] is False
    assert "hostname" not in json.dumps(prov)
    assert prov["packages"]["torch"] == torch.__version__.split("+")[0]


def test_training_learns_on_embedded_cifar(smoke_cfg):
    cfg = smoke_cfg(
        "optimizer=sgd",
        "scale.epochs=3",
        "scale.train_subset=1280",
        "scale.max_steps_per_epoch=20",
        "dataset.batch_size=64",
        "scale.eval_subset=500",
        "diagnostics.enabled=false",
    )
    summary = run(cfg)
    rows = read_csv_rows(run_dir_for(cfg) / "metrics.csv")
    losses = [float(r["train_loss"]) for r in rows]
    assert losses[-1] < losses[0]
    assert summary["final_eval_top1"] > 20.0  # chance is 10%


def test_same_seed_same_numbers_and_completed_run_is_skipped(smoke_cfg, tmp_path):
    first = run(smoke_cfg("optimizer=adamp", "resume=never"))
    second = run(smoke_cfg("optimizer=adamp", f"output_root={tmp_path}/other"))
    for key in ("final_eval_top1", "final_eval_loss", "final_train_loss"):
        assert first[key] == second[key], key
    started = time.perf_counter()
    again = run(smoke_cfg("optimizer=adamp"))
    assert again["final_eval_loss"] == first["final_eval_loss"]
    assert time.perf_counter() - started < 5.0


def test_resume_equals_uninterrupted_run(smoke_cfg, tmp_path):
    full = run(smoke_cfg("optimizer=sgdp", "scale.epochs=3", f"output_root={tmp_path}/full"))
    # The same run stopped after one epoch, then started again with the same command.
    partial_cfg = smoke_cfg("optimizer=sgdp", "scale.epochs=3", f"output_root={tmp_path}/resumed")
    run_dir = run_dir_for(partial_cfg)
    from adamp_repro.train import runner

    original = runner.Trainer.fit

    def fit_one_epoch_then_die(self):
        self.settings.epochs, planned = 1, self.settings.epochs
        original(self)
        self.settings.epochs = planned
        raise KeyboardInterrupt

    runner.Trainer.fit = fit_one_epoch_then_die
    try:
        with pytest.raises(KeyboardInterrupt):
            run(partial_cfg)
    finally:
        runner.Trainer.fit = original
    assert read_summary(run_dir)["status"] == "interrupted"
    resumed = run(partial_cfg)
    assert resumed["status"] == "completed"
    keys = ("final_eval_top1", "final_eval_loss", "final_train_loss", "final_mean_weight_norm")
    for key in (*keys, "final_mean_filter_norm", "at_init_mean_weight_norm", "at_init_mean_filter_norm"):
        assert resumed[key] == full[key], key  # at_init: the seed's initial weights, on a resume too
    rows = read_csv_rows(run_dir / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    a = torch.load(
        run_dir_for(smoke_cfg("optimizer=sgdp", "scale.epochs=3", f"output_root={tmp_path}/full"))
        / CHECKPOINT_NAME,
        weights_only=True,
    )
    b = torch.load(run_dir / CHECKPOINT_NAME, weights_only=True)
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name


def test_killed_process_resumes_to_the_same_numbers(tmp_path):
    """SIGKILL a real training process after its first checkpoint; the same command then finishes the run."""
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    args = [
        sys.executable,
        str(PROJECT_ROOT / "scripts" / "train.py"),
        "scale=smoke",
        "scale.epochs=3",
        "scale.max_steps_per_epoch=6",
        "device=cpu",
        "progress=false",
        "optimizer=adamp",
        "threads=1",
    ]
    reference = subprocess.run(
        [*args, f"output_root={tmp_path}/ref"], env=env, capture_output=True, text=True
    )
    assert reference.returncode == 0, reference.stderr[-2000:]
    killed_root = tmp_path / "killed"
    proc = subprocess.Popen(
        [*args, f"output_root={killed_root}"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while time.time() < deadline and not list(killed_root.rglob(CHECKPOINT_NAME)):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    summaries = list(killed_root.rglob("summary.json"))
    assert summaries and json.loads(summaries[0].read_text())["status"] == "running"
    again = subprocess.run([*args, f"output_root={killed_root}"], env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    ref = json.loads(next((tmp_path / "ref").rglob("summary.json")).read_text())
    got = json.loads(summaries[0].read_text())
    assert got["status"] == "completed"
    for key in ("final_eval_top1", "final_eval_loss", "final_train_loss"):
        assert got[key] == ref[key], key


def test_nan_loss_is_recorded_as_diverged(smoke_cfg):
    cfg = smoke_cfg(
        "optimizer=sgd", "optimizer.lr=1e30", "train.log_every_n_steps=1", "diagnostics.enabled=false"
    )
    summary = run(cfg)
    assert summary["status"] == "diverged"
    assert read_summary(run_dir_for(cfg))["status"] == "diverged"
    assert "loss" in summary["error"]


def test_crash_leaves_a_failed_record(smoke_cfg, monkeypatch):
    from adamp_repro.train.tasks import ClassificationTask

    def boom(self, model, x, y):
        raise RuntimeError("synthetic failure")

    monkeypatch.setattr(ClassificationTask, "train_loss", boom)
    cfg = smoke_cfg("optimizer=sgd")
    with pytest.raises(RuntimeError, match="synthetic failure"):
        run(cfg)
    summary = read_summary(run_dir_for(cfg))
    assert summary["status"] == "failed" and "synthetic failure" in summary["error"]


def test_wandb_offline_mirror_writes_run_files(smoke_cfg, monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = smoke_cfg("optimizer=sgd", "logger=wandb", "diagnostics.enabled=false")
    summary = run(cfg)
    assert summary["status"] == "completed"
    offline = list((run_dir_for(cfg) / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    assert list(offline[0].glob("*.wandb"))


def test_run_dir_is_deterministic_and_config_sensitive(smoke_cfg):
    a, b = run_dir_for(smoke_cfg("optimizer=sgdp")), run_dir_for(smoke_cfg("optimizer=sgdp"))
    assert a == b and "${" not in str(a)
    assert run_dir_for(smoke_cfg("optimizer=sgdp", "optimizer.lr=0.05")) != a
    assert run_dir_for(smoke_cfg("optimizer=sgdp", "logger=wandb")) == a  # logging does not change numbers


@pytest.mark.parametrize("name", ["cosine", "step", "multistep", "constant"])
def test_schedules_warm_up_and_decay(name):
    cfg = {
        "name": name,
        "warmup_epochs": 1,
        "warmup_start_factor": 0.1,
        "step_frac": 0.5,
        "milestones_frac": [0.5, 0.75],
        "gamma": 0.1,
    }
    factor = build_lr_factor(cfg, total_steps=100, steps_per_epoch=10)
    assert factor(0) == pytest.approx(0.1)
    assert factor(10) == pytest.approx(1.0)
    if name != "constant":
        assert factor(99) < 0.2
    if name == "multistep":
        assert (
            factor(49) == 1.0
            and factor(50) == pytest.approx(0.1)
            and factor(79) == pytest.approx(0.1)
            and factor(80) == pytest.approx(0.01)
        )


def test_bad_schedule_values_are_named():
    with pytest.raises(ValueError, match="milestones_frac"):
        build_lr_factor({"name": "multistep", "milestones_frac": [0.8, 0.2]}, 100, 10)
    with pytest.raises(ValueError, match="'linear'"):
        build_lr_factor({"name": "linear"}, 100, 10)


def test_cutmix_pastes_a_box_mixes_the_loss_and_repeats_per_epoch():
    from adamp_repro.train.tasks import ClassificationTask

    torch.manual_seed(0)
    x, y = torch.rand(8, 3, 16, 16), torch.arange(8) % 4
    task = ClassificationTask(cutmix_alpha=1.0, cutmix_prob=1.0)
    task.set_epoch(seed=0, epoch=3)
    mixed, pasted, lam = task.cutmix(x, y)
    changed = (mixed != x).any(dim=(0, 1))  # (H, W) pixels taken from another image
    assert 0.0 < lam < 1.0 and changed.float().mean().item() <= 1.0 - lam + 1e-9
    assert torch.equal(mixed[..., ~changed], x[..., ~changed]) and pasted.shape == y.shape
    task.set_epoch(seed=0, epoch=3)
    again, pasted_again, lam_again = task.cutmix(x, y)
    assert torch.equal(again, mixed) and torch.equal(pasted_again, pasted) and lam_again == lam
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 4))
    task.set_epoch(seed=0, epoch=3)
    loss, _ = task.train_loss(model, x, y)
    task.set_epoch(seed=0, epoch=3)
    task.rng.random()  # the per-batch probability draw
    m, p, lam = task.cutmix(x, y)
    logits = model(m)
    expected = lam * F.cross_entropy(logits, y) + (1 - lam) * F.cross_entropy(logits, p)
    assert torch.allclose(loss, expected)
    off = ClassificationTask()
    assert torch.equal(off.train_loss(model, x, y)[0], F.cross_entropy(model(x), y))
    with pytest.raises(ValueError, match="cutmix_prob"):
        ClassificationTask(cutmix_alpha=1.0, cutmix_prob=1.5)


def test_cutmix_experiment_runs_through_the_trainer(smoke_cfg):
    cfg = smoke_cfg(
        "experiment=imagenet_resnet50_cutmix",
        "model=cifar_resnet20",
        "dataset=cifar10_mini",
        "dataset.batch_size=32",
        "optimizer=adamp",
        "diagnostics.enabled=false",
    )
    assert cfg.table.model == "ResNet50 + CutMix" and cfg.task.cutmix_prob == 1.0
    summary = run(cfg)
    assert summary["status"] == "completed" and summary["task_settings"]["cutmix_alpha"] == 1.0
