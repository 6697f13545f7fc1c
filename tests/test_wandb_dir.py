"""A user's WANDB_DIR is honoured: the mirror writes W&B's files there instead of the run folder, the offline
reader finds each run's files there by its run folder, and `make sync-wandb` uploads them (W&B offline)."""

from __future__ import annotations

import os
import subprocess

from adamp_repro.tracking.dashboard import read_offline_run
from adamp_repro.tracking.wandb_mirror import WandbMirror

from .conftest import PROJECT_ROOT

LOGGER = {"name": "wandb", "project": "adamp-repro-test", "mode": "offline", "job_type": "train"}


def _mirror_one(run_dir, metric: str) -> None:
    run_dir.mkdir(parents=True)
    mirror = WandbMirror(LOGGER, name=run_dir.name, config={"seed": 0}, run_dir=run_dir)
    mirror.log_epoch({"epoch": 0, metric: 1.0})
    mirror.finish({"status": "completed"})


def test_wandb_dir_holds_the_files_and_the_reader_follows_it(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    first, second = tmp_path / "runs" / "a-11111111", tmp_path / "runs" / "b-22222222"
    _mirror_one(first, "train_loss")
    _mirror_one(second, "eval_top1")
    assert not (first / "wandb").exists() and not (second / "wandb").exists()
    assert len(list((tmp_path / "wandb_dir" / "wandb").glob("offline-run-*/*.wandb"))) == 2
    # Each run folder finds its own files among the others in WANDB_DIR (given as the folder or its wandb/).
    one, two = read_offline_run(first, wait_s=60), read_offline_run(second / "wandb", wait_s=60)
    assert "train_loss" in one.history and "eval_top1" not in one.history
    assert "eval_top1" in two.history and "run_dir" in two.config
    monkeypatch.delenv("WANDB_DIR")
    third = tmp_path / "runs" / "c-33333333"
    _mirror_one(third, "train_loss")
    assert list((third / "wandb").glob("offline-run-*/*.wandb")), "without WANDB_DIR: inside the run folder"


def test_make_sync_wandb_looks_in_wandb_dir(tmp_path):
    offline = tmp_path / "wandb_dir" / "wandb" / "offline-run-20250101_000000-abc"
    offline.mkdir(parents=True)
    (offline / "run-abc.wandb").write_bytes(b":W&B")
    fake = tmp_path / "venv" / "bin"
    fake.mkdir(parents=True)
    (fake / "wandb").write_text('#!/bin/sh\necho "wandb $*"\n')
    (fake / "wandb").chmod(0o755)
    env = os.environ | {"WANDB_DIR": str(tmp_path / "wandb_dir")}
    # VENV and STAMP point the target at a stand-in `wandb` that prints what it was asked to upload; the stamp
    # is made newer than pyproject.toml and requirements/pins.txt, so make never tries to build the environment
    # (in a fresh clone the checked-out files' mtimes are in no particular order).
    stamp = tmp_path / "installed-stamp"
    stamp.touch()
    newer = max((PROJECT_ROOT / n).stat().st_mtime for n in ("pyproject.toml", "requirements/pins.txt")) + 10
    os.utime(stamp, (newer, newer))
    out = subprocess.run(
        ["make", "-s", "sync-wandb", f"VENV={tmp_path / 'venv'}", f"STAMP={stamp}"],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert f"{offline / 'run-abc.wandb'}" in out.stdout
