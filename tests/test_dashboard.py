"""W&B dashboards as code: every table has a view, specs are byte-stable, and no panel names a key the trainer
does not log (checked against real smoke runs of the trainer, W&B offline, read back from their .wandb files)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from types import SimpleNamespace

import pytest
import yaml

from adamp_repro.tracking import dashboard
from adamp_repro.tracking.dashboard import (
    build_report,
    build_workspace,
    check_spec,
    discover_tables,
    read_offline_run,
    to_spec,
    write_specs,
)
from adamp_repro.train import run, run_dir_for

from .conftest import CONFIG_DIR, PROJECT_ROOT, compose_config

# One worker builds this module's fixtures (make test runs pytest-xdist).
pytestmark = pytest.mark.xdist_group("dashboard")

SMOKE = ["scale=smoke", "device=cpu", "progress=false", "logger=wandb", "train.log_every_n_steps=1"]
# PGD at the smallest size that still runs the adversarial task's training and (final) evaluation code.
ADVERSARIAL = [
    "experiment=cifar10_wrn_adv_linf",  # P4a's experiment, shrunk:
    "dataset=cifar10_mini",
    "model=wide_resnet_tiny",
    "optimizer=adamp",
    "scale.epochs=1",
    "scale.train_subset=32",
    "scale.eval_subset=16",
    "scale.max_steps_per_epoch=2",
    "dataset.batch_size=16",
    "task.train_attack.steps=1",
    "task.eval_attack.steps=1",
    "task.autoattack.version=custom",
    "task.autoattack.attacks=[apgd-ce]",
]


# The P7 proxy's experiment at a size that runs in a second.
LANGUAGE_MODEL = [
    "experiment=p7_mini_transformer_wn",
    "optimizer=adamp",
    "scale.epochs=1",
    "scale.eval_subset=8",
    "model.kwargs.width=32",
    "model.kwargs.depth=1",
    "model.kwargs.heads=2",
    "dataset.context=32",
    "dataset.batch_size=8",
]


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """What W&B received from the real trainer (a classification, an adversarial and a language-model smoke run)
    and from the results build's tables run, all offline, read back from their local .wandb files."""
    from adamp_repro.results.build import build_tables, log_tables_to_wandb

    tmp = tmp_path_factory.mktemp("dashboard")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_DIR", str(tmp))
        mp.setenv("WANDB_SILENT", "true")
        # step/* rows are logged every train.log_every_n_steps steps; a smoke epoch has 4 steps.
        cfgs = {
            "classification": compose_config(
                [*SMOKE, f"output_root={tmp}/runs", "experiment=mini_cifar10_resnet20", "optimizer=sgdp"]
            ),
            "adversarial": compose_config([*SMOKE, f"output_root={tmp}/runs", *ADVERSARIAL]),
            "language_model": compose_config([*SMOKE, f"output_root={tmp}/runs", *LANGUAGE_MODEL]),
        }
        out = {}
        for task, cfg in cfgs.items():
            assert cfg.task.name == task
            assert any(cfg.experiment_name in t.experiments and task in t.tasks for t in discover_tables())
            assert run(cfg)["status"] == "completed"
            out[task] = read_offline_run(run_dir_for(cfg) / "wandb", wait_s=60)
        # The build logs <table>/cells and /gains for the tables it knows and every table it has runs of; as
        # with real runs, give it one record tagged with each table the dashboard shows.
        for table in discover_tables():
            record = tmp / "records" / table.table_id
            shutil.copytree(
                run_dir_for(cfgs["classification"]), record, ignore=shutil.ignore_patterns("wandb")
            )
            summary = json.loads((record / "summary.json").read_text())
            (record / "summary.json").write_text(json.dumps(summary | {"table_id": table.table_id}))
        docs = build_tables(tmp / "records", tmp / "tables", PROJECT_ROOT / "results" / "paper").docs
        tables_run = log_tables_to_wandb(docs, project="adamp-repro", mode="offline")
        out["tables"] = read_offline_run(tables_run, wait_s=60)
    assert all(logged_run.finished for logged_run in out.values())
    return out


def runs_for(table, logged):
    return [logged[task] for task in table.tasks] + [logged["tables"]]


def test_every_table_and_experiment_has_a_section():
    tables = discover_tables()
    ids = [t.table_id for t in tables]
    assert len(ids) == len(set(ids))
    assert {"mini", "cifar", "P1", "P2", "P4a"} <= set(ids)
    by_id = {t.table_id: t for t in tables}
    for path in sorted((CONFIG_DIR / "experiment").glob("*.yaml")):
        exp = yaml.safe_load(path.read_text())
        name = exp.get("experiment_name", path.stem)
        if "id" in (exp.get("table") or {}):
            assert name in by_id[exp["table"]["id"]].experiments, path.name
    entries = yaml.safe_load((CONFIG_DIR / "tables.yaml").read_text())
    for key, entry in entries.items():
        if entry.get("runs", True):
            assert any(set(entry["experiments"]) <= set(t.experiments) for t in tables), key
        else:  # a printed-only table of the catalogue has no runs, so no view
            assert "experiments" not in entry and entry.get("id", key) not in by_id, key
    assert by_id["mechanism"].title == entries["default"]["description"]
    assert by_id["P4a"].tasks == ("adversarial",)
    assert set(by_id["P2"].experiments) == {"imagenet_resnet18", "imagenet_resnet18_nowd"}


def test_views_filter_group_and_list_the_run_columns():
    p1, mini = (next(t for t in discover_tables() if t.table_id == i) for i in ("P1", "mini"))
    spec = to_spec(build_workspace(p1, project="adamp-repro"))
    runset = spec["spec"]["section"]["runSets"][0]
    experiment_filter = runset["filters"]["filters"][0]
    assert experiment_filter["key"] == {"section": "config", "name": "experiment_name"}
    assert experiment_filter["op"] == "IN" and experiment_filter["value"] == list(p1.experiments)
    assert [k["name"] for k in runset["grouping"]] == ["experiment_name.value", "optimizer.value.name"]
    assert runset["runFeed"]["columnOrder"] == [
        "run:displayName",
        "config:model.value.name",
        "config:dataset.value.name",
        "config:optimizer.value.name",
        "config:seed.value",
        "config:scale.value.name",
        "config:experiment_name.value",
    ]
    sections = spec["spec"]["section"]["panelBankConfig"]["sections"]
    assert [s["name"] for s in sections] == ["Accuracy", "Loss", "Learning rate", "Diagnostics"]
    top1 = sections[0]["panels"][0]["config"]
    assert (top1["metrics"], top1["xAxis"], top1["groupAgg"], top1["groupArea"]) == (
        ["eval_top1"], "epoch", "mean", "minmax"
    )  # fmt: skip
    # One experiment: the panels group by optimizer themselves (several: they follow the run-table grouping).
    mini_spec = to_spec(build_workspace(mini, project="adamp-repro"))
    mini_top1 = mini_spec["spec"]["section"]["panelBankConfig"]["sections"][0]["panels"][0]["config"]
    assert mini_top1["groupBy"] == "optimizer.value.name" and "groupBy" not in top1


def test_never_an_empty_panel(logged):
    """Every metric, x axis, grouping, filter and column key of every view and report section is logged by a
    run of the table's task; the report's tables are the ones the results build logs."""
    assert logged["classification"].job_type == logged["adversarial"].job_type == "train"
    assert logged["tables"].job_type == "tables"
    for table in discover_tables():
        runs = runs_for(table, logged)
        assert check_spec(to_spec(build_workspace(table, project="adamp-repro")), runs) == [], table.table_id
        assert check_spec(to_spec(build_report([table], project="adamp-repro")), runs) == [], table.table_id


def test_a_metric_renamed_on_one_side_only_is_caught(logged):
    mini = next(t for t in discover_tables() if t.table_id == "mini")
    spec = to_spec(build_workspace(mini, project="adamp-repro"))
    trained = logged["classification"]
    renamed = replace(trained, history=trained.history - {"eval_top1"} | {"eval_acc1"})
    assert any("'eval_top1'" in p for p in check_spec(spec, [renamed]))
    regrouped = replace(trained, config=trained.config - {"optimizer.name"})
    assert any("'optimizer.name'" in p for p in check_spec(spec, [regrouped]))
    # An adversarial table's panels are not satisfied by a classification run.
    p4a = next(t for t in discover_tables() if t.table_id == "P4a")
    assert any(
        "eval_robust_top1" in p for p in check_spec(to_spec(build_workspace(p4a, project="p")), [trained])
    )
    assert any("no logged run of job_type ['train']" in p for p in check_spec(spec, [logged["tables"]]))


def test_specs_are_byte_stable_atomic_and_match_the_script(tmp_path):
    out = tmp_path / "dashboards"
    paths = write_specs(out, project="adamp-repro")
    assert [p.name for p in paths][-1] == "report.json" and len(paths) == len(discover_tables()) + 1
    first = {p.name: p.read_bytes() for p in paths}
    stamps = {p.name: p.stat().st_mtime_ns for p in paths}
    (out / "workspace_gone.json").write_text("{}")
    write_specs(out, project="adamp-repro")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first  # stale view removed, no temp files left
    assert {p.name: p.stat().st_mtime_ns for p in paths} == stamps  # unchanged files are not rewritten
    report = json.loads(first["report.json"])
    assert report["project"] == {"entityName": dashboard.OFFLINE_ENTITY, "name": "adamp-repro"}
    # Another process (fresh random state in the library) writes the same bytes.
    script_out = tmp_path / "script"
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_ENTITY", "WANDB_PROJECT")}
    subprocess.run(
        [
            sys.executable,
            str(PROJECT_ROOT / "scripts" / "wandb_dashboard.py"),
            "--out",
            str(script_out),
            "--project",
            "adamp-repro",
        ],
        check=True,
        capture_output=True,
        env=env,
    )
    assert {p.name: p.read_bytes() for p in script_out.iterdir()} == first


def test_the_committed_specs_are_what_the_code_writes(tmp_path):
    """results/dashboards is rebuilt by `make dashboards`; a view or panel added to the code shows up there."""
    logger = yaml.safe_load((CONFIG_DIR / "logger" / "wandb.yaml").read_text())
    written = write_specs(tmp_path, project=logger["project"])
    committed = PROJECT_ROOT / "results" / "dashboards"
    assert sorted(p.name for p in committed.glob("*.json")) == sorted(p.name for p in written)
    stale = [p.name for p in written if p.read_bytes() != (committed / p.name).read_bytes()]
    assert not stale, f"stale specs in results/dashboards (run `make dashboards`): {stale}"


def load_script():
    spec = importlib.util.spec_from_file_location(
        "wandb_dashboard_script", PROJECT_ROOT / "scripts" / "wandb_dashboard.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_publish_without_a_key_fails_clearly_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert load_script().main(["--publish", "--out", str(tmp_path / "out")]) == 2
    assert "WANDB_API_KEY" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_publish_saves_every_view_and_the_report(tmp_path, monkeypatch, capsys):
    import wandb
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    saved = []
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    monkeypatch.delenv("WANDB_ENTITY", raising=False)
    monkeypatch.setattr(wandb, "Api", lambda: SimpleNamespace(default_entity="me"))
    monkeypatch.setattr(
        ws.Workspace, "save", lambda self: saved.append(self) or SimpleNamespace(url=self.name)
    )
    monkeypatch.setattr(
        wr.Report, "save", lambda self: saved.append(self) or SimpleNamespace(url="report-url")
    )
    assert load_script().main(["--publish", "--out", str(tmp_path), "--project", "adamp-repro"]) == 0
    tables = discover_tables()
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1] == "report-url" and len(printed) == len(tables) + 2
    assert [s.entity for s in saved] == ["me"] * (len(tables) + 1)
    grids = [b for b in saved[-1].blocks if isinstance(b, wr.PanelGrid)]
    assert all((rs.entity, rs.project) == ("me", "adamp-repro") for g in grids for rs in g.runsets)
    assert dashboard.OFFLINE_ENTITY in (tmp_path / "report.json").read_text()  # offline copy: placeholder
