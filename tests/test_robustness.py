"""An adversarial smoke run writes AutoAttack and the eps sweep into its record; results/robustness.py draws them.

The run is the real runner on the composed config (scale=smoke, shrunk further), so the keys checked here are
the ones a table or a reader of summary.json gets.
"""

from __future__ import annotations

import json

import pytest

from adamp_repro.results.robustness import SWEEP_COLUMNS, eps_sweep_rows, read_eps_sweeps, robustness_figures
from adamp_repro.tracking.records import read_csv_rows
from adamp_repro.train import run, run_dir_for
from adamp_repro.train.autoattack import WARNING_FLAGS

# One worker builds this module's fixtures (make test runs pytest-xdist).
pytestmark = pytest.mark.xdist_group("robustness")

TINY = [
    "task=adversarial",
    "model=wide_resnet_tiny",
    "scale.epochs=1",
    "scale.train_subset=32",
    "scale.eval_subset=16",
    "scale.max_steps_per_epoch=1",
    "dataset.batch_size=16",
    "task.train_attack.steps=1",
    "task.eval_attack.steps=2",
    "task.autoattack.version=custom",
    "task.autoattack.attacks=[apgd-ce,apgd-t]",
    "logger=none",
    "threads=1",
]


@pytest.fixture(scope="module")
def smoke_record(tmp_path_factory):
    from .conftest import compose_config

    root = tmp_path_factory.mktemp("adv")
    cfg = compose_config(["scale=smoke", "device=cpu", "progress=false", f"output_root={root}/runs", *TINY])
    summary = run(cfg)
    return root / "runs", run_dir_for(cfg), summary


def test_summary_holds_autoattack_and_the_sweep(smoke_record):
    _, run_dir, summary = smoke_record
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk["status"] == summary["status"] == "completed"
    for key in (
        "final_eval_clean_top1",
        "final_eval_robust_top1",
        "final_eval_autoattack_top1",
        "final_eval_autoattack_subset_clean_top1",
        "final_eval_autoattack_subset_robust_top1",
        "final_eval_autoattack_s_per_1000_images",
        "final_eval_autoattack_images",
        "final_eval_eps_sweep_images",
        *(f"final_eval_autoattack_warn_{flag}" for flag in WARNING_FLAGS),
        *(f"final_eval_eps_sweep_{i}_top1" for i in range(5)),
    ):
        assert isinstance(on_disk.get(key), float), key
    assert on_disk["final_eval_autoattack_images"] == on_disk["final_eval_eps_sweep_images"] == 8  # smoke
    assert on_disk["final_eval_autoattack_top1"] <= on_disk["final_eval_autoattack_subset_clean_top1"]
    settings = on_disk["task_settings"]["autoattack"]
    assert (settings["version"], settings["attacks"], settings["subset"]) == (
        "custom",
        ["apgd-ce", "apgd-t"],
        8,
    )
    assert settings["seed"] == 0 and settings["eps"] == pytest.approx(4 / 255)
    assert on_disk["task_settings"]["eps_sweep"]["eps_x255"] == [0.0, 2.0, 4.0, 8.0, 16.0]
    metrics = read_csv_rows(run_dir / "metrics.csv")
    assert "eval_autoattack_top1" in metrics[-1]  # the epoch row has it too


def test_sweep_rows_and_figure_from_the_record(smoke_record, tmp_path):
    runs_root, run_dir, summary = smoke_record
    rows = eps_sweep_rows(summary)
    assert [r["eps_x255"] for r in rows] == pytest.approx([0.0, 2.0, 4.0, 8.0, 16.0])
    assert rows[0]["attack"] == "clean" and rows[1]["attack"] == "custom:apgd-ce"
    assert rows[0]["top1"] == summary["final_eval_eps_sweep_0_top1"]
    sweeps, runs = read_eps_sweeps(runs_root)
    assert list(sweeps.columns) == list(SWEEP_COLUMNS) and len(sweeps) == 5 and len(runs) == 1
    paths = robustness_figures(runs_root, tmp_path / "figures")
    assert sorted(p.suffix for p in paths) == [".csv", ".pdf", ".png"]
    assert all(p.stat().st_size > 0 for p in paths)
    table = read_csv_rows(next(p for p in paths if p.suffix == ".csv"))
    assert [float(r["top1"]) for r in table] == [r["top1"] for r in rows]


def test_runs_without_a_sweep_draw_nothing(tmp_path):
    record = tmp_path / "runs" / "exp" / "smoke" / "run-0"
    record.mkdir(parents=True)
    (record / "summary.json").write_text(json.dumps({"status": "completed", "task_settings": {"task": "x"}}))
    assert robustness_figures(tmp_path / "runs", tmp_path / "figures") == []
    assert eps_sweep_rows({"task_settings": {"eps_sweep": None}}) == []
