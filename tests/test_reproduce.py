"""`make reproduce-table` end to end at smoke scale: the Hydra multirun of the default table, then the tables
and figures built from the records it wrote; a second call skips the complete runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

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
    assert sorted(s["optimizer"] for s in summaries) == ["adam", "adamp", "sgd", "sgd", "sgdp"]
    assert {s["status"] for s in summaries} == {"completed"} and {s["scale"] for s in summaries} == {"smoke"}
    assert {s["table_block"] for s in summaries if s["optimizer"] == "sgd"} == {"momentum", "vanilla"}
    tables = tmp_path / "tables"
    assert (tables / "README.md").is_file()
    cells = pd.read_csv(tables / "mechanism.csv")
    text = (tables / "mechanism.md").read_text()
    assert "smoke" in text  # the scale of our runs is printed in the table
    measured = {s["optimizer"]: s["final_eval_top1"] for s in summaries}
    for optimizer, value in measured.items():
        assert any(abs(v - value) < 1e-9 for v in pd.to_numeric(cells.select_dtypes("number").stack())), (
            optimizer
        )
    assert "| 0 |" in (tables / "mechanism_mechanism.md").read_text()  # seed 0 of each pair, judged
    assert list((tmp_path / "figures").glob("*.png"))
    # The terminal output ends with the findings, the comparison with the committed records and the paths.
    assert "findings:" in first.stdout and "SGDP vs momentum SGD" in first.stdout
    assert "no committed reference" in first.stdout and f"tables in {tables}" in first.stdout
    # Each line a run logs names it; the table's progress: one line per finished run, done of total.
    assert "[mini_mechanism sgdp s0] epoch 1: train_loss=" in first.stdout
    assert "[mini_mechanism_vanilla sgd s0] epoch 1: train_loss=" in first.stdout
    finished = [line for line in first.stdout.splitlines() if line.startswith("[reproduce-table] [mini_")]
    assert len(finished) == 5 and all(", final top-1 " in line for line in finished), finished
    assert "[reproduce-table] [mini_mechanism sgdp s0] completed, final top-1 " in first.stdout
    assert (
        finished[-1].endswith("(5/5 runs, " + finished[-1].split("(5/5 runs, ")[-1])
        and "elapsed)" in finished[-1]
    )
    assert "about" in finished[0] and "left)" in finished[0]  # an estimate once a run has finished
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("summary.json")}
    second = _reproduce(tmp_path, "--no-figures")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "[reproduce-table] 5 of 5 run(s) already complete" in second.stdout
    assert "run already completed" in second.stdout and "[reproduce-table] [mini_" not in second.stdout
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes  # complete runs were skipped, not redone


def test_p4a_is_in_the_catalogue_and_dry_run_shows_its_commands():
    cmd = [sys.executable, str(PROJECT_ROOT / "scripts" / "reproduce_table.py"), "--table", "P4a",
           "--scale", "paper", "--dry-run"]  # fmt: skip
    result = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stdout.splitlines() if "adamp_repro.cli.train -m" in line]
    assert len(lines) == 2, result.stdout
    for line, experiment in zip(lines, ("cifar10_wrn_adv_linf", "cifar10_wrn_adv_l2")):
        assert f"experiment={experiment} seed=0 optimizer=adam,adamp scale=paper" in line
    assert "unknown table" not in result.stdout + result.stderr
    assert not (PROJECT_ROOT / "results" / "runs" / "cifar10_wrn_adv_linf").exists()  # nothing ran


def test_p4a_mini_runs_three_seeds_of_the_pair_and_one_control_arm():
    cmd = [sys.executable, str(PROJECT_ROOT / "scripts" / "reproduce_table.py"), "--table", "P4a_mini",
           "--dry-run"]  # fmt: skip
    result = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stdout.splitlines() if "adamp_repro.cli.train -m" in line]
    assert len(lines) == 2 and "7 run(s)" in result.stdout, result.stdout
    assert "seed=0,1,2 optimizer=adam,adamp scale=mini" in lines[0]
    assert "seed=0 optimizer=adamw scale=mini" in lines[1]
    assert all("hydra/launcher=local_parallel threads=1" in line for line in lines)


def test_seeds_for_must_name_an_optimizer_of_the_table(tmp_path):
    from adamp_repro.errors import ConfigError
    from adamp_repro.reproduce import EXPERIMENTS_DIR, load_tables, seed_groups

    spec = {
        "experiments": ["mini_mechanism"],
        "optimizers": ["sgd", "sgdp"],
        "seeds": 3,
        "seeds_for": {"sgd": 1},
    }
    assert seed_groups(spec, "mini_mechanism") == [(["sgd"], 1), (["sgdp"], 3)]
    assert seed_groups(spec, "mini_mechanism", seeds=5) == [(["sgd"], 1), (["sgdp"], 5)]
    bad = tmp_path / "tables.yaml"
    bad.write_text(
        "mechanism:\n  experiments: [mini_mechanism]\n  optimizers: [sgd]\n  seeds: 2\n  seeds_for: {adam: 1}\n"
    )
    with pytest.raises(
        ConfigError, match=r"table 'mechanism' sets seeds_for adam: 1; expected a positive integer"
    ):
        load_tables(bad, EXPERIMENTS_DIR)


def test_catalogue_runs_only_what_the_experiment_recipes_cover(tmp_path):
    from adamp_repro.errors import ConfigError
    from adamp_repro.reproduce import EXPERIMENTS_DIR, load_tables

    tables = load_tables()
    assert tables["P4a"]["optimizers"] == ["adam", "adamp"]
    bad = tmp_path / "tables.yaml"
    bad.write_text("P4a:\n  description: x\n  experiments: [cifar10_wrn_adv_linf]\n  optimizers: [adamw, adamp]\n"
                   "  seeds: 1\n")  # fmt: skip
    with pytest.raises(ConfigError, match=r"runs \['adamw'\] in experiment 'cifar10_wrn_adv_linf', whose "
                                          r"recipe covers only \['adam', 'adamp'\]"):  # fmt: skip
        load_tables(bad, EXPERIMENTS_DIR)
    bad.write_text(
        "x:\n  description: x\n  experiments: [no_such_experiment]\n  optimizers: [sgd]\n  seeds: 1\n"
    )
    with pytest.raises(ConfigError, match="names experiment 'no_such_experiment'; known: cifar10_resnet56"):
        load_tables(bad, EXPERIMENTS_DIR)


def test_exit_status_says_whether_the_runs_met_the_tables_targets_not_whether_they_match(
    tmp_path, monkeypatch, capsys
):
    """``main`` on made records (the training, tables and ledger steps stubbed out): numbers moved on another
    CPU type with the same conclusions exit 0; a missed per-seed target exits 1."""
    from adamp_repro import reproduce

    from .test_mechanism import COMPARED_EXPERIMENT, EPYC, _edit, passing_records

    fresh, reference = passing_records(tmp_path, fresh_cpu=EPYC)
    _edit(fresh, "momentum-sgd-s0", final_eval_top1=57.85)  # committed 50.0
    for root in (fresh, reference):  # the default table's experiment folder
        (root / COMPARED_EXPERIMENT).rename(root / "mini_mechanism")
    commands = []
    monkeypatch.setattr(
        reproduce.subprocess,
        "run",
        lambda cmd, **kw: commands.append(cmd) or subprocess.CompletedProcess(cmd, 0),
    )
    argv = ["--output-root", str(fresh), "--reference", str(reference), "--tables-out", str(tmp_path / "t"),
            "--figures-out", str(tmp_path / "f"), "--no-figures"]  # fmt: skip
    assert reproduce.main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-3].startswith(
        "[reproduce-table] conclusions: the same as the committed records: 12 of 12 judged"
    )
    assert "top-1 by up to 7.85 points (7.9x the seed spread), norm growth not at all" in out[-2]
    assert out[-1].startswith(
        "[reproduce-table] targets: the runs completed and met the table's per-seed targets"
    )
    ledger_step = next(cmd for cmd in commands if "--claims-only" in cmd)
    assert ledger_step[-2:] == ["--claims-tables", "mechanism"]  # the fresh ledger: this table's claims only
    path = fresh / "mini_mechanism" / "mini" / "momentum-sgdp-s2" / "summary.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "final_mean_filter_norm": 1.45}))
    assert reproduce.main(argv) == 1
    assert (
        "targets: missed (1): [mini] SGDP vs momentum SGD seed 2" in capsys.readouterr().out.splitlines()[-1]
    )
