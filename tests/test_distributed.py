"""Beyond one process: a real 2-process gloo DDP run (torchrun) against the single-process run with the same
global batch, exactly-once evaluation on an odd-sized set, one run folder and one W&B run per distributed job,
and Hydra's joblib and submitit_local launchers running two tiny jobs each."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import PROJECT_ROOT

TRAIN = str(PROJECT_ROOT / "scripts" / "train.py")
# A LayerNorm network: its numbers do not depend on how a batch is split across processes (BatchNorm's do).
TINY = [
    "model=vit_small",
    "model.name=test_vit",
    "+model.kwargs.img_size=32",
    "dataset.crop_padding=0",
    "dataset.hflip=false",
    "scale=smoke",
    "scale.eval_subset=201",
    "scale.max_steps_per_epoch=3",
    "device=cpu",
    "progress=false",
    "optimizer=adamp",
    "threads=1",
]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _summaries(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(root.rglob("summary.json"))]


def test_two_process_ddp_matches_single_process_with_the_same_global_batch(tmp_path):
    single = subprocess.run(
        [sys.executable, TRAIN, *TINY, "dataset.batch_size=32", f"output_root={tmp_path}/one"],
        env=_env(),
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(_free_port()),
            TRAIN,
            *TINY,
            "dataset.batch_size=16",
            "logger=wandb",
            f"output_root={tmp_path}/two",
        ],
        env=_env(),
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    (one,), two = _summaries(tmp_path / "one"), _summaries(tmp_path / "two")
    assert len(two) == 1, "a distributed job must make exactly one run folder"
    two = two[0]
    assert two["world_size"] == 2 and two["status"] == "completed"
    run_dir = Path(two["run_dir"])
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1, "exactly one W&B run"
    # Evaluation counts each of the 201 samples exactly once on both layouts.
    rows = [r for r in (run_dir / "metrics.csv").read_text().splitlines()[1:] if r]
    header = (run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert all(float(r.split(",")[header.index("eval_count")]) == 201 for r in rows)
    assert two["final_train_loss"] == pytest.approx(one["final_train_loss"], rel=1e-4)
    assert two["final_eval_loss"] == pytest.approx(one["final_eval_loss"], rel=1e-4)
    assert abs(two["final_eval_top1"] - one["final_eval_top1"]) <= 100.0 / 201 + 1e-9


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_hydra_launchers_run_two_jobs_with_a_record_each(tmp_path, launcher):
    extra = (
        ["hydra.launcher.n_jobs=2"]
        if launcher == "joblib"
        else [f"hydra.launcher.submitit_folder={tmp_path}/submitit", "hydra.launcher.timeout_min=10"]
    )
    out = subprocess.run(
        [
            sys.executable,
            TRAIN,
            "-m",
            f"hydra/launcher={launcher}",
            *extra,
            "scale=smoke",
            "scale.max_steps_per_epoch=2",
            "scale.epochs=1",
            "device=cpu",
            "progress=false",
            "threads=1",
            "diagnostics.enabled=false",
            "optimizer=sgd,sgdp",
            f"output_root={tmp_path}/runs",
        ],
        env=_env(),
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    summaries = _summaries(tmp_path / "runs")
    assert sorted(s["optimizer"] for s in summaries) == ["sgd", "sgdp"]
    assert all(s["status"] == "completed" for s in summaries)
