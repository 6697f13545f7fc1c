"""Run identity: every committed record's folder is still the folder its config maps to today.

A run folder ends with ``config_hash(cfg)``. A config change that does not change a run's numbers (a new option
left at its default, a volatile key) must not change the hash, or every committed record and checkpoint is
orphaned and ``make reproduce-table`` trains them all again. Each committed record is composed afresh from the
overrides that made it (experiment, optimizer, seed, scale) and its hash compared with the folder's.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from adamp_repro.train.runner import config_hash, run_dir_for

from .conftest import PROJECT_ROOT, compose_config

RUNS = PROJECT_ROOT / "results" / "runs"
RECORDS = sorted(p.parent for p in RUNS.glob("*/*/*/config.yaml"))


def _overrides(record: Path) -> list[str]:
    cfg = yaml.safe_load((record / "config.yaml").read_text())
    out = [
        f"experiment={cfg['experiment_name']}",
        f"optimizer={cfg['optimizer']['name']}",
        f"seed={cfg['seed']}",
        f"scale={cfg['scale']['name']}",
    ]
    study = cfg.get("study")
    if study:  # a tuning study's run: its identity keys, and the values its trial looked up (never hashed)
        out += [f"+study.name={study['name']}", f"+study.role={study['role']}"]
        if study.get("trial") is not None:
            out.append(f"+study.trial={study['trial']}")
            points = study["points"][cfg["optimizer"]["name"]][study["trial"]]
            out += [f"optimizer.{key}={cfg['optimizer'][key]}" for key in points]
        validation = cfg["dataset"].get("validation")
        if validation:
            out.append(f"+dataset.validation={{size:{validation['size']},seed:{validation['seed']}}}")
    return out


def test_there_are_committed_records():
    assert len(RECORDS) >= 8


@pytest.mark.parametrize("record", RECORDS, ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_committed_record_keeps_its_folder(record):
    cfg = compose_config(_overrides(record))
    assert record.name.endswith("-" + config_hash(cfg)), (
        f"{record.relative_to(PROJECT_ROOT)} would now be written to {run_dir_for(cfg).name}: a config change "
        "altered the run hash of configs whose numbers did not change"
    )
    assert run_dir_for(cfg) == Path("results/runs") / record.relative_to(RUNS)


DATASETS = sorted(p.stem for p in (PROJECT_ROOT / "configs" / "dataset").glob("*.yaml"))
NEVER_RENAMED = {"text"}  # families added after the rename: one spelling only
OLD_FAMILY = {"in_memory": "cifar", "image_folder": "imagenet"}  # dataset.family before the rename


@pytest.mark.parametrize("dataset", DATASETS)
def test_a_renamed_value_keeps_the_hash_of_its_old_spelling(dataset):
    """``dataset.family`` was renamed (cifar -> in_memory, imagenet -> image_folder); a config in either
    spelling maps to the folder the old spelling always had."""
    cfg = compose_config([f"dataset={dataset}"])
    new = cfg.dataset.family
    if new in NEVER_RENAMED:
        assert new not in OLD_FAMILY.values()
        return
    assert new in OLD_FAMILY, f"configs/dataset/{dataset}.yaml: family {new!r} is not a current spelling"
    old = compose_config([f"dataset={dataset}", f"dataset.family={OLD_FAMILY[new]}"])
    assert config_hash(cfg) == config_hash(old)
    assert run_dir_for(cfg) == run_dir_for(old)
