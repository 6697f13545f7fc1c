"""`make reproduce-table` end to end at smoke scale: the Hydra multirun of the default table, then the tables
and figures built from the records it wrote; a second call skips the complete runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd

from .conftest import PROJECT_ROOT


def _reproduce(tmp_path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        str(PROJECT_ROOT / "scripts" / "reproduce_table.py"),
        "--scale",
        "smoke",
        "--seeds",
        "1",
        "--output-root",
        str(tmp_path / "runs"),
        "--tables-out",
        str(tmp_path / "tables"),
        "--figures-out",
        str(tmp_path / "figures"),
        *extra,
        "--",
        "threads=1",
        "scale.max_steps_per_epoch=2",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    return subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_reproduce_table_smoke_end_to_end(tmp_path):
    first = _reproduce(tmp_path)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    summaries = [json.loads(p.read_text()) for p in (tmp_path / "runs").rglob("summary.json")]
    assert sorted(s["optimizer"] for s in summaries) == ["adamp", "adamw", "sgd", "sgdp"]
    assert {s["status"] for s in summaries} == {"completed"} and {s["scale"] for s in summaries} == {"smoke"}
    tables = tmp_path / "tables"
    assert (tables / "README.md").is_file()
    cells = pd.read_csv(tables / "mini.csv")
    text = (tables / "mini.md").read_text()
    assert "smoke" in text  # the scale of our runs is printed in the table
    measured = {s["optimizer"]: s["final_eval_top1"] for s in summaries}
    for optimizer, value in measured.items():
        assert any(abs(v - value) < 1e-9 for v in pd.to_numeric(cells.select_dtypes("number").stack())), (
            optimizer
        )
    assert list((tmp_path / "figures").glob("*.png"))
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("summary.json")}
    second = _reproduce(tmp_path, "--no-figures")
    assert second.returncode == 0, second.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes  # complete runs were skipped, not redone
