"""The suite grows by configs: an optimizer, a task and a table added to a copy of the config tree run end to end.

A temporary copy of ``configs/`` (``ADAMP_REPRO_CONFIG_DIR``) gets an optimizer file (``torch.optim.RMSprop``),
a task file naming a task class of a module outside the package (``task._target_``), an experiment using both
and a table entry; ``scripts/reproduce_table.py`` then trains the table at smoke scale and builds it
(docs/extending.md: "Adding an optimizer", "Adding a task", "Adding a table").
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from adamp_repro import paths
from adamp_repro.errors import ConfigError
from adamp_repro.tracking.schema import SCHEMA_VERSION
from adamp_repro.train.tasks import ClassificationTask, build_task

ROOT = paths.project_root()

TASK_MODULE = '''
"""A user's task: label-smoothed cross-entropy; top-1 and the mean probability of the true class."""

import torch
import torch.nn.functional as F

from adamp_repro.train.tasks import TaskBase, classifier_sums, classifier_train_metrics


class SmoothTask(TaskBase):
    name = "my_task"
    primary_metric = "top1"
    train_metric_names = ("loss", "top1")

    def __init__(self, label_smoothing: float):
        self.label_smoothing = float(label_smoothing)

    def train_step(self, model, batch):
        x, y = batch
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        return loss, classifier_sums(loss, logits, y)

    def train_metrics(self, totals):
        return classifier_train_metrics(totals)

    @torch.no_grad()
    def evaluate(self, model, batches, final=True):
        sums = {}
        for x, y in batches:
            logits = model(x).float()
            batch = {
                "top1": 100.0 * logits.argmax(dim=1).eq(y).sum().float(),
                "true_prob": logits.softmax(dim=1).gather(1, y[:, None]).sum(),
                "count": torch.tensor(float(y.numel()), device=y.device),
            }
            for key, value in batch.items():
                sums[key] = sums.get(key, 0) + value
        return sums

    def describe(self):
        return {"task": self.name, "label_smoothing": self.label_smoothing}
'''

FILES = {
    "optimizer/my_rmsprop.yaml": """
        name: my_rmsprop
        _target_: torch.optim.RMSprop
        lr: ${oc.select:recipe.my_rmsprop.lr,1.0e-3}
        weight_decay: ${oc.select:recipe.my_rmsprop.weight_decay,0.0}
        alpha: 0.99
        eps: 1.0e-8
        momentum: 0.0
        centered: false
        no_decay_bias_norm: false
        foreach: null
    """,
    "task/my_task.yaml": """
        name: my_task
        _target_: my_suite_task.SmoothTask
        label_smoothing: 0.1
    """,
    "experiment/my_experiment.yaml": """
        # @package _global_
        defaults:
          - override /model: cifar_resnet20
          - override /dataset: cifar10_mini
          - override /scheduler: constant
          - override /task: my_task
        experiment_name: my_experiment
        table: {id: my_table, block: embedded, model: CIFAR ResNet-20}
        recipe:
          sgdp: {lr: 0.1, weight_decay: 0.0}
          my_rmsprop: {lr: 1.0e-3, weight_decay: 0.0}
    """,
}
TABLE_ENTRY = """
    my_table:
      kind: own
      title: "RMSprop beside SGDP with a label-smoothed task (a test table)"
      description: "CIFAR ResNet-20 on the CIFAR-10 mini subset, SGDP and RMSprop, label-smoothed loss"
      experiments: [my_experiment]
      optimizers: [sgdp, my_rmsprop]
      seeds: 1
      metrics: {top1_acc: final_eval_top1}
      columns: {RMSprop: [my_rmsprop]}
      pairs: [[RMSprop, SGDP]]
      reference_gain: {table: P1, row: resnet18}
"""


@pytest.fixture()
def config_copy(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the config tree with the user's files, and a folder holding the user's task module."""
    configs = tmp_path / "configs"
    shutil.copytree(paths.config_dir(), configs)
    for name, text in FILES.items():
        (configs / name).write_text(textwrap.dedent(text).lstrip())
    with open(configs / "tables.yaml", "a") as handle:
        handle.write(textwrap.dedent(TABLE_ENTRY))
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "my_suite_task.py").write_text(TASK_MODULE.lstrip())
    return configs, modules


def test_an_optimizer_a_task_and_a_table_join_by_config(config_copy, tmp_path):
    configs, modules = config_copy
    out = tmp_path / "out"
    env = os.environ | {
        paths.CONFIG_DIR_VAR: str(configs),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(modules), os.environ.get("PYTHONPATH", "")]),
        "WANDB_MODE": "disabled",
    }
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "reproduce_table.py"),
        "--table",
        "my_table",
        "--scale",
        "smoke",
    ]
    cmd += ["--out", str(out), "--no-figures", "--", "logger=none", "threads=1"]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    summaries = [json.loads(p.read_text()) for p in sorted((out / "runs").rglob("summary.json"))]
    assert sorted(s["optimizer"] for s in summaries) == ["my_rmsprop", "sgdp"]
    for summary in summaries:
        assert summary["status"] == "completed" and summary["task"] == "my_task"
        assert summary["task_settings"] == {"task": "my_task", "label_smoothing": 0.1}
        assert 0.0 < summary["final_eval_true_prob"] < 1.0 and "best_eval_top1" in summary
        assert summary["schema_version"] == SCHEMA_VERSION
    table = (out / "tables" / "my_table.md").read_text()
    assert "RMSprop" in table and "SGDP" in table


def test_a_task_target_is_checked_before_the_run(config_copy, monkeypatch):
    _, modules = config_copy
    monkeypatch.syspath_prepend(str(modules))
    task = build_task({"name": "my_task", "_target_": "my_suite_task.SmoothTask", "label_smoothing": 0.2})
    assert task.describe() == {"task": "my_task", "label_smoothing": 0.2}
    with pytest.raises(ConfigError, match="refuses the task keys"):
        build_task({"name": "my_task", "_target_": "my_suite_task.SmoothTask", "smoothing": 0.2})
    with pytest.raises(ConfigError, match="cannot import 'no_such_module'"):
        build_task({"name": "x", "_target_": "no_such_module.Task"})
    with pytest.raises(ConfigError, match=r"without \["):
        build_task({"name": "x", "_target_": "collections.OrderedDict"})
    assert isinstance(build_task({"name": "classification"}), ClassificationTask)
