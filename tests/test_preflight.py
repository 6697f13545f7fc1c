"""Refusing before any work, for a whole table, and following a long one.

A table's pre-flight (`scripts/reproduce_table.py` in a real process) composes every run as its multirun will and
refuses a missing data root in one line per distinct problem, exit 2, nothing written; on a cluster launcher the
data sources are left to the compute nodes. `compose_sweep` expands a multirun in Hydra's order. Each line a run
logs names the run. The progress watcher reads made run folders' summary.json.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys

import pytest

from adamp_repro import reproduce
from adamp_repro.errors import ConfigError
from adamp_repro.tracking.progress import RunWatcher, TableProgress, headline
from adamp_repro.train import runner
from adamp_repro.train.preflight import compose_sweep, expand_sweep, is_local, launcher_of

from .conftest import CONFIG_DIR, PROJECT_ROOT, compose_config

SCRIPT = PROJECT_ROOT / "scripts" / "reproduce_table.py"


def test_table_preflight_refuses_a_missing_data_root_once_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, str(SCRIPT), "--table", "P4a", "--scale", "smoke", "--seeds", "1", "--out", str(out),
           "--", "dataset.root=/nonexistent", "threads=1"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    errors = result.stderr.strip().splitlines()
    # 2 experiments x 2 optimizers: one problem, one line naming the table and both experiments
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith(
        "error: table P4a (cifar10_wrn_adv_linf, cifar10_wrn_adv_l2): dataset.root='/nonexistent' "
        "(does not exist) holds no data set in any allowed layout. Allowed layouts: "
    )
    assert "make data-cifar10" in errors[0] and 'ARGS="dataset.root=<folder>"' in errors[0]
    assert "Traceback" not in result.stdout + result.stderr and "cli.train -m" not in result.stdout
    assert not out.exists() and not any(tmp_path.rglob("*.json"))


def _commands(argv: list[str]) -> tuple:
    args = reproduce.parse_args(argv)
    commands = [
        (
            e,
            reproduce.multirun_command(
                e, o, n, args.scale, args.extra, args.output_root, args.spec.get("overrides", [])
            ),
        )
        for e in args.spec["experiments"]
        for o, n in reproduce.seed_groups(args.spec, e, args.seeds)
    ]
    return args, commands


def test_cluster_launcher_leaves_the_data_check_to_the_compute_nodes(tmp_path, capsys):
    base = ["--table", "P4a", "--scale", "smoke", "--seeds", "1", "--out", str(tmp_path), "--"]
    args, commands = _commands([*base, "hydra/launcher=slurm", "dataset.root=/nonexistent"])
    lines, runs = reproduce.preflight(args, commands)
    assert lines == [] and len(runs) == 4  # composed all the same: the watcher knows each run's folder
    assert "pre-flight: launcher slurm runs the jobs on other machines" in capsys.readouterr().out
    assert all(path.parent.parent.parent == tmp_path / "runs" for path in runs.values())
    # The schema is still checked there; --no-preflight checks nothing.
    args, commands = _commands([*base, "hydra/launcher=slurm", "optimizer.lr=-1"])
    lines, _ = reproduce.preflight(args, commands)
    assert len(lines) == 1 and "optimizer.lr=-1: expected a finite number >= 0" in lines[0]
    args, commands = _commands(["--no-preflight", *base, "dataset.root=/nonexistent"])
    assert reproduce.preflight(args, commands)[0] == []
    assert not tmp_path.joinpath("runs").exists()


def test_compose_sweep_expands_a_multirun_in_hydras_order():
    overrides = ["-m", "hydra/launcher=local_parallel", "experiment=mini_mechanism", "seed=0,1",
                 "optimizer=sgd,sgdp", "scale=smoke"]  # fmt: skip
    assert launcher_of(overrides) == "local_parallel" and is_local("local_parallel")
    assert not is_local(launcher_of([*overrides, "hydra/launcher=slurm"]))
    assert expand_sweep(overrides)[1] == [
        "experiment=mini_mechanism",
        "seed=0",
        "optimizer=sgdp",
        "scale=smoke",
    ]
    cfgs = compose_sweep(overrides, CONFIG_DIR)
    assert [runner.run_tag(c) for c in cfgs] == [
        "[mini_mechanism sgd s0]", "[mini_mechanism sgdp s0]", "[mini_mechanism sgd s1]", "[mini_mechanism sgdp s1]"
    ]  # fmt: skip
    with pytest.raises(ConfigError, match="optimizer"):
        compose_sweep(["optimizer=nosuch"], CONFIG_DIR)


def test_every_line_a_run_logs_names_the_run(monkeypatch, caplog):
    log = logging.getLogger("adamp_repro")

    def train(cfg):
        log.info("epoch %d: %s", 1, "train_loss=2.3, 100% done")
        return {}

    monkeypatch.setattr(runner, "_locked_run", train)
    cfg = compose_config(["experiment=mini_mechanism", "optimizer=adamp", "seed=1", "logger=none"])
    with caplog.at_level(logging.INFO, logger="adamp_repro"):
        runner.run(cfg)
        log.info("after the run")
    assert [r.getMessage() for r in caplog.records] == [
        "[mini_mechanism adamp s1] epoch 1: train_loss=2.3, 100% done",
        "after the run",  # the prefix ends with the run
    ]


def _summary(run_dir, status: str, stamp: int, **values) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "summary.json"
    path.write_text(json.dumps({"status": status, **values}))
    os.utime(path, ns=(stamp, stamp))  # a distinct mtime, whatever the file system's clock resolution


def test_watcher_reports_each_run_once_when_it_finishes(tmp_path):
    a, b, c, d = (tmp_path / name for name in "abcd")
    _summary(a, "completed", 10**18, final_eval_top1=50.0)  # complete before: done at the start
    _summary(b, "failed", 10**18, error="boom")  # an earlier attempt's failure: trained again, not done
    seen = []
    watcher = RunWatcher({"a": a, "b": b, "c": c, "d": d}, lambda n, s: seen.append((n, s["status"])))
    assert watcher.already_done == ["a"]
    watcher.poll()
    assert seen == []  # b's old summary is not news; c and d have none yet
    _summary(c, "running", 2 * 10**18)
    _summary(b, "completed", 2 * 10**18, final_eval_top1=61.25, wall_time_s=75.0)
    watcher.poll()
    _summary(c, "diverged", 3 * 10**18, error="loss is nan at step 3")
    (d / "summary.json").parent.mkdir()
    (d / "summary.json").write_text("{")  # caught between writes: not finished, not an error
    watcher.stop()
    watcher.poll()
    assert seen == [("b", "completed"), ("c", "diverged")]
    assert RunWatcher({"a": a}, print, done_at_start=False).already_done == []  # --fresh trains it again


def test_progress_lines_say_done_of_total_elapsed_and_the_rest(tmp_path):
    now = [100.0]
    out = io.StringIO()
    progress = TableProgress(4, ["a"], stream=out, bar=False, clock=lambda: now[0])
    now[0] += 90
    progress.finished("[t adamp s0]", {"status": "completed", "final_eval_top1": 61.25, "wall_time_s": 75.0})
    now[0] += 30
    progress.finished("[t sgd s0]", {"status": "failed", "error": "RuntimeError: boom\nmore"})
    assert out.getvalue().splitlines() == [
        "[reproduce-table] 1 of 4 run(s) already complete",
        "[reproduce-table] [t adamp s0] completed, final top-1 61.25, 1 min 15 s (2/4 runs, 1 min 30 s elapsed, "
        "about 3 min 00 s left)",
        "[reproduce-table] [t sgd s0] failed, RuntimeError: boom (3/4 runs, 2 min 00 s elapsed, about 1 min 00 s left)",
    ]
    assert headline({"status": "interrupted"}) == "interrupted"
    progress.close()
