"""Run records -> one pandas DataFrame, one row per completed run that can be counted.

Reads only ``summary.json`` (and checks ``config.yaml`` parses) in each run folder of the record contract
(``tracking/records.py``; key names and versions in ``tracking/schema.py``). Records that are broken or
half-written are reported by path and skipped; runs that are not ``completed`` are reported and not counted.
Nothing here raises on a bad record. A summary without ``schema_version`` reads as version 1 (written before
versions existed); every summary, from disk or W&B, is read through ``schema.upgrade_summary``, so an older
version's keys carry their current names (version 3's ``epoch1_*`` norms are version 2's ``initial_*``); one
newer than this suite's is ``broken``.

The collector refuses to guess. A completed record is *left out* (reported by path, kept apart in
``RunSet.left_out`` so each table can say what it left out) when it ran fewer epochs than planned (``short``),
when its summary's scale is not the scale folder it sits in (``<root>/<experiment>/<scale>/<run>``,
``scale_mismatch``), or when another record claims the same table cell and seed (``duplicate``: all of them,
since nothing says which one is right), or when it belongs to a tuning study (``study``: its summary names
the study, read by ``results.study`` for the study's own page, never a table cell). A record resumed across a change of ``src/``
(``code_changed_on_resume``) is counted and carries the flag, so tables mark it; so is the code that ran: the
forms of the optimizer each segment stepped with (``optimizer_forms``: column ``optimizer_forms``, the run's
signature, None for a record that does not say; ``optimizer_forms_mixed``: segments that ran different forms).

W&B is an optional second source (a mirror, never the source of truth): the summary and config of each run
of a project, read through ``wandb.Api()``; ``history()`` is never called because it samples (wandb#1783).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from adamp_repro import catalogue
from adamp_repro.tracking.records import (
    CONFIG_FILE,
    DIAGNOSTICS_FILE,
    METRICS_FILE,
    PROVENANCE_FILE,
    SUMMARY_FILE,
    read_summary,
)
from adamp_repro.tracking.schema import (
    AUTOATTACK_SUBSET_ROBUST_TOP1,
    AUTOATTACK_TOP1,
    BITS_PER_CHAR,
    CLEAN_TOP1,
    EFFECTIVE_STEP_SIZE,
    FILTER_EFFECTIVE_STEP_SIZE,
    IMAGES_PER_S,
    LOSS,
    MEAN_FILTER_NORM,
    MEAN_WEIGHT_NORM,
    OPTIMIZER_FORMS,
    OPTIMIZER_FORMS_MIXED,
    PERPLEXITY,
    ROBUST_TOP1,
    SCHEMA_VERSION,
    STUDY,
    TOP1,
    TOP5,
    TRAIN_LOSS,
    at_init_key,
    best_key,
    epoch1_key,
    eval_key,
    final_key,
    forms_mixed,
    run_forms_signature,
    schema_version_of,
    upgrade_summary,
)

log = logging.getLogger(__name__)

IDENTITY_COLUMNS = (
    "run_name",
    "experiment",
    "scale",
    "seed",
    "model",
    "dataset",
    "dataset_label",
    "optimizer",
    "table_id",
    "table_block",
    "table_model",
    STUDY,  # the tuning study of the run (None for a table run): such records fill no table cell
)
NUMERIC_COLUMNS = (
    "epochs",
    "epochs_planned",
    final_key(eval_key(TOP1)),
    final_key(eval_key(TOP5)),
    best_key(eval_key(TOP1)),
    final_key(eval_key(LOSS)),
    final_key(TRAIN_LOSS),
    "wall_time_s",
    IMAGES_PER_S,
    final_key(eval_key(CLEAN_TOP1)),
    final_key(eval_key(ROBUST_TOP1)),
    final_key(eval_key(AUTOATTACK_TOP1)),
    final_key(eval_key(AUTOATTACK_SUBSET_ROBUST_TOP1)),
    final_key(eval_key(PERPLEXITY)),
    final_key(eval_key(BITS_PER_CHAR)),
    best_key(eval_key(PERPLEXITY)),
    epoch1_key(MEAN_WEIGHT_NORM),
    final_key(MEAN_WEIGHT_NORM),
    final_key(EFFECTIVE_STEP_SIZE),
    at_init_key(MEAN_WEIGHT_NORM),
    at_init_key(MEAN_FILTER_NORM),
    final_key(MEAN_FILTER_NORM),
    final_key(FILTER_EFFECTIVE_STEP_SIZE),
)
RUN_COLUMNS = (
    "run_dir",
    "source",
    "status",
    *IDENTITY_COLUMNS,
    "row_id",  # the catalogue's row of the run's table that its table_block / table_model name (``row_of``)
    *NUMERIC_COLUMNS,
    "code_changed_on_resume",
    OPTIMIZER_FORMS,  # the run's forms (``schema.run_forms_signature``), None where the record does not say
    OPTIMIZER_FORMS_MIXED,  # its segments ran different forms (False where unknown)
    "schema_version",
)
# Completed records that are not counted: RUN_COLUMNS plus why (``RunProblem.kind`` and ``detail``).
LEFT_OUT_COLUMNS = (*RUN_COLUMNS, "left_out_kind", "left_out_detail")
LEFT_OUT_KINDS = {
    "duplicate": "with a duplicate seed",
    "short": "with fewer epochs than planned",
    "scale_mismatch": "with a scale that disagrees with its folder",
    "study": "of a tuning study (on the study's own page)",
}
# A table cell and seed: two counted records may not share these.
CELL_SEED_KEYS = ("table_id", "scale", "row_id", "optimizer", "seed")
# Without these a completed run cannot be placed in any table.
REQUIRED_KEYS = ("table_id", "optimizer", "scale", "seed")
_RECORD_FILES = (SUMMARY_FILE, CONFIG_FILE, PROVENANCE_FILE, METRICS_FILE, DIAGNOSTICS_FILE)
# W&B run states -> record statuses, used only when a mirrored summary lacks our own ``status`` key.
_WANDB_STATES = {
    "finished": "completed",
    "running": "running",
    "crashed": "failed",
    "failed": "failed",
    "killed": "interrupted",
}


@dataclass(frozen=True, order=True)
class RunProblem:
    """A run that was not counted: ``kind`` is ``not_completed``, ``broken``, ``wandb`` or one of
    ``LEFT_OUT_KINDS`` (a completed record left out of the means)."""

    path: str
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"{self.path}: {self.detail}"


@dataclass
class RunSet:
    """What the records say: ``runs`` (counted, ``RUN_COLUMNS``), ``left_out`` (completed but not counted,
    ``LEFT_OUT_COLUMNS``) and ``problems`` (every record not counted, with the reason, sorted)."""

    runs: pd.DataFrame
    left_out: pd.DataFrame
    problems: list[RunProblem]


def collect_runs(
    root: str | os.PathLike, *, wandb_project: str | None = None
) -> tuple[pd.DataFrame, list[RunProblem]]:
    """Read every run folder under ``root`` (and optionally a W&B project) into one row per counted run.

    Returns the frame (columns ``RUN_COLUMNS``, sorted by ``run_dir``; ``run_dir`` is relative to ``root``,
    or ``wandb:<entity>/<project>/<id>``) and the sorted list of runs not counted, with the reason.
    A missing ``root`` gives an empty frame. ``read_records`` also returns the left-out rows themselves.
    """
    found = read_records(root, wandb_project=wandb_project)
    return found.runs, found.problems


def read_records(root: str | os.PathLike, *, wandb_project: str | None = None) -> RunSet:
    """``collect_runs`` with the completed records it left out kept as rows, for the tables to count."""
    root = Path(root)
    rows: list[dict[str, Any]] = []
    problems: list[RunProblem] = []
    for run_dir in find_run_dirs(root):
        rel = run_dir.relative_to(root).as_posix() if run_dir != root else "."
        row, problem = _read_disk_run(run_dir, rel)
        _keep(row, problem, rows, problems)
    if wandb_project:
        wandb_rows, wandb_problems = _read_wandb_runs(wandb_project)
        problems.extend(wandb_problems)
        on_disk = {_identity(r) for r in rows}
        for row, problem in wandb_rows:
            if row is not None and _identity(row) in on_disk:
                continue  # the record on disk is the source of truth; the mirror only fills gaps
            _keep(row, problem, rows, problems)
    kept, left_out = _leave_out_doubtful(rows)
    studies: dict[str, int] = {}
    for row in left_out:
        if row["left_out_kind"] == "study":  # expected, not doubtful: one line per study, not one per run
            studies[str(row[STUDY])] = studies.get(str(row[STUDY]), 0) + 1
            continue
        problem = RunProblem(row["run_dir"], row["left_out_kind"], row["left_out_detail"])
        log.warning("Leaving out of the means %s", problem)
        problems.append(problem)
    for name, count in sorted(studies.items()):
        problem = RunProblem(f"study {name}", "study", f"{count} run(s) of the tuning study, on its own page")
        log.debug("Leaving out of the means %s", problem)
        problems.append(problem)
    return RunSet(_frame(kept, RUN_COLUMNS), _frame(left_out, LEFT_OUT_COLUMNS), sorted(problems))


def _frame(rows: list[dict[str, Any]], columns: Sequence[str]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(columns))
    frame = frame.sort_values("run_dir", kind="stable", ignore_index=True)
    for column in NUMERIC_COLUMNS:
        frame[column] = frame[column].astype(float)
    frame["seed"] = frame["seed"].astype("Int64")
    frame["code_changed_on_resume"] = frame["code_changed_on_resume"].astype(bool)
    frame[OPTIMIZER_FORMS_MIXED] = frame[OPTIMIZER_FORMS_MIXED].astype(bool)
    frame[OPTIMIZER_FORMS] = frame[OPTIMIZER_FORMS].astype(object)
    return frame


def row_of(table_id: str, block: str, model: str) -> str | None:
    """The row a run is placed in: the id of the catalogue's row of its table that names its ``table_block`` and
    ``table_model`` labels exactly; None where the table lists no such row (the run is shown nowhere). A table
    the catalogue does not list has one row per pair of labels, its id the labels themselves."""
    entry = catalogue.table(table_id)
    return f"{block} / {model}" if entry is None else entry.row_of(block, model)


def _leave_out_doubtful(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split completed rows into counted ones and those left out: short, scale mismatch, duplicate seed.

    A short or misplaced record is left out for its own fault first, so it does not also make a sound
    record of the same seed a duplicate.
    """
    kept, left_out = [], []
    for row in rows:
        fault = _record_fault(row)
        if fault is None:
            kept.append(row)
        else:
            left_out.append({**row, "left_out_kind": fault[0], "left_out_detail": fault[1]})
    by_cell_seed: dict[tuple, list[dict[str, Any]]] = {}
    for row in kept:
        by_cell_seed.setdefault(_cell_seed(row), []).append(row)
    counted = []
    for row in kept:
        same = by_cell_seed[_cell_seed(row)]
        if len(same) == 1:
            counted.append(row)
            continue
        others = ", ".join(r["run_dir"] for r in same if r is not row)
        detail = (
            f"duplicate seed {row['seed']} of {row['table_id']} {row['table_block']}/{row['table_model']}/"
            f"{row['optimizer']} at scale {row['scale']} (also in {others}); none of them is counted"
        )
        left_out.append({**row, "left_out_kind": "duplicate", "left_out_detail": detail})
    return counted, left_out


def _record_fault(row: Mapping[str, Any]) -> tuple[str, str] | None:
    if row.get(STUDY):
        return "study", f"a run of tuning study {row[STUDY]!r}, reported on the study's page"
    epochs, planned = row["epochs"], row["epochs_planned"]
    if not (math.isnan(epochs) or math.isnan(planned)) and epochs < planned:
        return "short", f"completed with {epochs:g} of {planned:g} planned epochs"
    parts = row["run_dir"].split("/")
    if row["source"] == "disk" and len(parts) >= 3 and parts[-2] != row["scale"]:
        return (
            "scale_mismatch",
            f"summary.json says scale {row['scale']!r} but the record sits in scale folder {parts[-2]!r}",
        )
    return None


def _cell_seed(row: Mapping[str, Any]) -> tuple:
    """The cell and seed of a record; records in no row stand apart by their labels."""
    key = {**row, "row_id": row["row_id"] or (row["table_block"], row["table_model"])}
    return tuple(key[k] for k in CELL_SEED_KEYS)


def find_run_dirs(root: Path) -> list[Path]:
    """Folders holding any record file, without descending into a run folder or hidden / wandb folders."""
    found: list[Path] = []
    if not root.is_dir():
        return found
    for current, dirs, files in os.walk(root):
        if any(name in files for name in _RECORD_FILES):
            found.append(Path(current))
            dirs[:] = []  # checkpoints, .hydra/ and wandb/ inside a run are not runs of their own
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "wandb")
    return sorted(found)


def _keep(row, problem, rows, problems) -> None:
    if problem is not None:
        problems.append(problem)
        if problem.kind == "broken":
            log.warning("Skipping broken run record %s", problem)
        else:
            log.info("Not counting run %s", problem)
    if row is not None:
        rows.append(row)


def _read_disk_run(run_dir: Path, rel: str) -> tuple[dict[str, Any] | None, RunProblem | None]:
    if not (run_dir / SUMMARY_FILE).exists():
        return None, RunProblem(rel, "broken", f"no {SUMMARY_FILE} (half-written or never started)")
    try:
        summary = read_summary(run_dir)
    except (OSError, ValueError) as err:  # json.JSONDecodeError is a ValueError
        return None, RunProblem(rel, "broken", f"unreadable {SUMMARY_FILE}: {_without_path(err, run_dir)}")
    if summary["status"] != "completed":
        return None, RunProblem(rel, "not_completed", f"status {summary['status']!r}")
    if not (run_dir / CONFIG_FILE).exists():
        return None, RunProblem(rel, "broken", f"no {CONFIG_FILE}")
    try:
        config = yaml.safe_load((run_dir / CONFIG_FILE).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        return None, RunProblem(rel, "broken", f"unreadable {CONFIG_FILE}: {_without_path(err, run_dir)}")
    if not isinstance(config, Mapping):
        return None, RunProblem(rel, "broken", f"{CONFIG_FILE} is not a mapping but {type(config).__name__}")
    return _summary_to_row(summary, rel, "disk")


def _without_path(err: Exception, run_dir: Path) -> str:
    """The error text without the absolute folder, so reports do not depend on where the runs live."""
    text = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
    return " ".join(text.replace(f"{run_dir}{os.sep}", "").split())


def _summary_to_row(
    summary: Mapping[str, Any], run_dir: str, source: str
) -> tuple[dict[str, Any] | None, RunProblem | None]:
    """One frame row from a completed run's summary, already read with this version's key names (``read_summary``
    on disk, ``upgrade_summary`` from W&B); a bad key makes it a ``broken`` problem naming it."""
    missing = [k for k in REQUIRED_KEYS if summary.get(k) in (None, "")]
    if missing:
        return None, RunProblem(run_dir, "broken", f"completed summary lacks {missing}")
    seed = summary["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int):
        return None, RunProblem(run_dir, "broken", f"seed must be an int, got {seed!r}")
    row: dict[str, Any] = {"run_dir": run_dir, "source": source, "status": "completed"}
    for key in IDENTITY_COLUMNS:
        value = summary.get(key)
        row[key] = value if key == "seed" or value is None else str(value)
    # Older or non-table runs may lack the table placement; fall back to what the run itself says.
    row["table_block"] = row["table_block"] or "-"
    row["table_model"] = row["table_model"] or row["model"] or "-"
    row["row_id"] = row_of(row["table_id"], row["table_block"], row["table_model"])
    for key in NUMERIC_COLUMNS:
        value = summary.get(key)
        if value is None:
            row[key] = math.nan
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            row[key] = float(value)
        else:
            return None, RunProblem(run_dir, "broken", f"{key} must be a number or null, got {value!r}")
    changed = summary.get("code_changed_on_resume")
    if changed is not None and not isinstance(changed, bool):
        return None, RunProblem(
            run_dir, "broken", f"code_changed_on_resume must be true/false, got {changed!r}"
        )
    row["code_changed_on_resume"] = bool(changed)
    forms = summary.get(OPTIMIZER_FORMS)
    if forms is not None and not (
        isinstance(forms, list) and all(entry is None or isinstance(entry, Mapping) for entry in forms)
    ):
        return None, RunProblem(
            run_dir, "broken", f"{OPTIMIZER_FORMS} must be a list of one entry per segment, got {forms!r}"
        )
    mixed = summary.get(OPTIMIZER_FORMS_MIXED)
    if mixed is not None and not isinstance(mixed, bool):
        return None, RunProblem(
            run_dir, "broken", f"{OPTIMIZER_FORMS_MIXED} must be true/false/null, got {mixed!r}"
        )
    # Old records say nothing: "forms not recorded", never mixed. The segments' own entries decide, so a
    # summary whose flag disagrees with them cannot hide a mix.
    row[OPTIMIZER_FORMS] = run_forms_signature(forms or [])
    row[OPTIMIZER_FORMS_MIXED] = bool(mixed) or bool(forms_mixed(forms or []))
    try:
        version = schema_version_of(summary)
    except (TypeError, ValueError):
        version = None
    if version is None or not 1 <= version <= SCHEMA_VERSION:
        return None, RunProblem(
            run_dir,
            "broken",
            f"schema_version must be an integer in 1..{SCHEMA_VERSION}, got {summary.get('schema_version')!r}",
        )
    row["schema_version"] = version
    return row, None


def _identity(row: Mapping[str, Any]) -> tuple:
    return tuple(row.get(k) for k in ("experiment", "scale", "run_name"))


def _read_wandb_runs(project: str) -> tuple[list[tuple[dict | None, RunProblem | None]], list[RunProblem]]:
    """Rows from a W&B project's run summaries; any failure (offline, no login, no network) is a problem."""
    where = f"wandb:{project}"
    mode = os.environ.get("WANDB_MODE", "")
    if mode in ("offline", "disabled"):
        return [], [
            RunProblem(where, "wandb", f"not read: WANDB_MODE={mode} (tables use the records on disk)")
        ]
    try:
        import wandb

        runs = list(wandb.Api(timeout=30).runs(project))
    except Exception as err:  # any API failure must degrade to "not read", never crash
        return [], [RunProblem(where, "wandb", f"not read: {type(err).__name__}: {err}")]
    return [_wandb_run_to_row(run) for run in runs], []


def _wandb_run_to_row(run: Any) -> tuple[dict[str, Any] | None, RunProblem | None]:
    path = "wandb:" + "/".join(run.path)
    try:
        summary = dict(run.summary_metrics)
        config = dict(run.config)
    except Exception as err:  # a half-synced run must not stop the build
        return None, RunProblem(path, "broken", f"unreadable W&B summary/config: {err}")
    status = summary.get("status") or _WANDB_STATES.get(run.state, run.state)
    if status != "completed":
        return None, RunProblem(path, "not_completed", f"status {status!r}")
    # Identity keys the mirror did not copy into the summary may still be in the run's config.
    merged = {**{k: config.get(k) for k in IDENTITY_COLUMNS if k in config}, **summary}
    return _summary_to_row(upgrade_summary(merged), path, "wandb")


def count_statuses(problems: Iterable[RunProblem]) -> dict[str, int]:
    """How many runs were not counted, by reason (``status 'failed'``, ``broken``, ...), for summaries."""
    counts: dict[str, int] = {}
    for problem in problems:
        key = (
            problem.detail
            if problem.kind == "not_completed"
            else LEFT_OUT_KINDS.get(problem.kind, problem.kind)
        )
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))
