"""W&B dashboards as code: one workspace view per table and one report, built from ``configs/``.

Offline by default: ``write_specs`` writes the specs as JSON (same input, same bytes; atomic writes) for
review; ``publish`` saves them to W&B (needs ``WANDB_API_KEY``) and returns their URLs. A W&B workspace has
one run set, so a per-table filter (``experiment_name``) needs a view per table; inside a view the sections
are the metric groups. The report has one section per table, each with run sets of its own.

"Never an empty panel": ``check_spec`` reads back every key a spec names (panel metrics and x axes, grouping,
filters, run-table columns, summary tables) and checks it against what a real run logged
(``read_offline_run`` reads the run's ``.wandb`` file); tests/test_dashboard.py does so on smoke runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import time
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import wandb
import wandb_workspaces.reports.v2 as wr
import wandb_workspaces.workspaces as ws
import yaml
from wandb.proto import wandb_internal_pb2 as pb
from wandb_workspaces import expr

from adamp_repro import catalogue, paths
from adamp_repro.tracking.records import atomic_write_text
from adamp_repro.tracking.schema import (
    BITS_PER_CHAR,
    CLEAN_TOP1,
    EPOCH,
    LOSS,
    LR,
    MEAN_FILTER_NORM,
    MEAN_WEIGHT_NORM,
    PERPLEXITY,
    ROBUST_LOSS,
    ROBUST_TOP1,
    STEP,
    SUMMARY_KEYS,
    TITLES,
    TOP1,
    TOP5,
    TRAIN_LOSS,
    eval_key,
    step_key,
    train_key,
)

CONFIG_DIR = paths.config_dir()
OFFLINE_ENTITY = "<entity>"  # placeholder: the library's objects need an entity; offline there is none
CLS, ADV, LM = "classification", "adversarial", "language_model"
GROUP_KEY = "optimizer.name"
# The runs table of every view and report section: model, dataset, optimizer, seed, scale, experiment.
COLUMN_KEYS = ("model.name", "dataset.name", "optimizer.name", "seed", "scale.name", "experiment_name")


@dataclass(frozen=True)
class PanelDef:
    section: str
    tasks: tuple[str, ...]
    x: str
    metric: str
    title: str
    in_report: bool  # also in the report, beside each experiment's table


# Every panel of a table view; a table gets the panels of its experiments' tasks (c: classification,
# a: adversarial, l: language_model). Columns: section | tasks | x axis (EPOCH for the per-epoch rows, as wandb_mirror defines
# them; STEP for the per-step ones) | metric | also in the report. Key names and panel titles are the record
# schema's (tracking/schema.py: TITLES).
_PANEL_ROWS = (
    ("Accuracy", "c", EPOCH, eval_key(TOP1), True),
    ("Accuracy", "c", EPOCH, eval_key(TOP5), False),
    ("Accuracy", "a", EPOCH, eval_key(CLEAN_TOP1), True),
    ("Accuracy", "a", EPOCH, eval_key(ROBUST_TOP1), True),
    ("Accuracy", "ca", EPOCH, train_key(TOP1), False),
    ("Perplexity", "l", EPOCH, eval_key(PERPLEXITY), True),
    ("Perplexity", "l", EPOCH, eval_key(BITS_PER_CHAR), True),
    ("Loss", "cal", EPOCH, TRAIN_LOSS, False),
    ("Loss", "cal", EPOCH, eval_key(LOSS), False),
    ("Loss", "a", EPOCH, eval_key(ROBUST_LOSS), False),
    ("Loss", "cal", STEP, step_key(LOSS), False),
    ("Learning rate", "cal", EPOCH, LR, False),
    ("Learning rate", "cal", STEP, step_key(LR), False),
    *(
        ("Diagnostics", "cal", EPOCH, key, key in (MEAN_WEIGHT_NORM, MEAN_FILTER_NORM))
        for key in SUMMARY_KEYS
    ),
)
_TASKS = {"c": CLS, "a": ADV, "l": LM}
PANELS = tuple(
    PanelDef(section, tuple(_TASKS[t] for t in tasks), x, metric, TITLES[metric].title, report)
    for section, tasks, x, metric, report in _PANEL_ROWS
)


@dataclass(frozen=True)
class TableSection:
    table_id: str
    title: str
    experiments: tuple[str, ...]  # experiment_name values the section filters on
    tasks: tuple[str, ...]  # task names of those experiments

    def panels(self, report: bool = False) -> list[PanelDef]:
        return [p for p in PANELS if set(p.tasks) & set(self.tasks) and (p.in_report or not report)]


# ------------------------------------------------------------------------------------------- discovery
def _config_info(path: Path, exp_dir: Path) -> dict[str, Any]:
    """experiment_name, table id and task set by one config file, following plain parents in its defaults."""
    data = yaml.safe_load(path.read_text()) or {}
    info: dict[str, Any] = {}
    for entry in data.get("defaults") or []:
        if isinstance(entry, str) and (exp_dir / f"{entry}.yaml").exists():
            info.update(_config_info(exp_dir / f"{entry}.yaml", exp_dir))
        elif isinstance(entry, Mapping):
            info.update(("task", v) for k, v in entry.items() if str(k).split()[-1].strip("/") == "task")
    info.update({k: data[k] for k in ("experiment_name",) if k in data})
    info.update({"table_id": data["table"]["id"]} if "id" in (data.get("table") or {}) else {})
    return info


def discover_tables(config_dir: str | os.PathLike = CONFIG_DIR) -> list[TableSection]:
    """The tables of the catalogue (``tables.yaml``) that run, in its order, then every other ``table.id`` of the
    experiment files. An entry is named by its table id (``default`` -> ``mechanism``); ``P2`` keeps the P1
    ResNet18 runs."""
    config_dir = Path(config_dir)
    exp_dir = config_dir / "experiment"
    base = _config_info(config_dir / "train.yaml", exp_dir)
    exps = {p.stem: base | _config_info(p, exp_dir) for p in sorted(exp_dir.glob("*.yaml"))}
    known = catalogue.load(config_dir / "tables.yaml")
    tables = []
    for entry in (t for t in known.tables if t.runs):
        experiments = entry.spec["experiments"]
        infos = [exps.get(e, base | {"experiment_name": e, "table_id": entry.table_id}) for e in experiments]
        tables.append(_section(entry.table_id, entry.spec.get("description"), infos, known))
    for table_id in dict.fromkeys(i["table_id"] for i in exps.values()):
        if table_id not in {t.table_id for t in tables}:
            infos = [i for i in exps.values() if i["table_id"] == table_id]
            tables.append(_section(table_id, None, infos, known))
    return tables


def _section(
    table_id: str, title: str | None, infos: Sequence[Mapping[str, Any]], known: catalogue.Catalogue
) -> TableSection:
    if not title:
        entry = known.get(table_id)
        title = entry.title if entry is not None else f"Runs tagged table id {table_id}"
    names, tasks = (tuple(dict.fromkeys(str(i[k]) for i in infos)) for k in ("experiment_name", "task"))
    return TableSection(str(table_id), title, names, tasks)


# -------------------------------------------------------------------------------------------- builders
def _stable_id(*parts: str) -> str:
    """A base-36 id from the object's place in the spec (the library draws random ones): same input, same bytes."""
    number, digits = int(hashlib.sha256("/".join(parts).encode()).hexdigest()[:15], 16), ""
    while number:
        number, rest = divmod(number, 36)
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"[rest] + digits
    return digits


def _columns() -> list[str]:
    return [f"config:{expr.groupby_str_to_key(f'config.{k}').name}" for k in COLUMN_KEYS]


def _train_runs(experiments: Sequence[str]):
    return expr.And(expr.Config("experiment_name").isin(list(experiments)), expr.Metric("JobType") == "train")


def _line_plot(panel: PanelDef, group: bool, *id_parts: str, **layout: Any):
    """Mean over the runs of each group (optimizer) with a min/max band."""
    agg = {"aggregate": True, "groupby_aggfunc": "mean", "groupby_rangefunc": "minmax"}
    more = {"groupby": wr.Config(GROUP_KEY)} if group else {}
    more |= {"layout": wr.Layout(**layout)} if layout else {}
    plot = wr.LinePlot(title=panel.title, x=panel.x, y=[panel.metric], title_x=panel.x, **agg, **more)
    plot._id = _stable_id(*id_parts, panel.title)
    return plot


def build_workspace(table: TableSection, *, project: str, entity: str = OFFLINE_ENTITY):
    """The view of one table: train runs of its experiments grouped by optimizer (by experiment first when
    there are several, and then the panels follow the run-table grouping), one section per metric group."""
    single, title = len(table.experiments) == 1, f"adamp-repro {table.table_id}: {table.title}"
    sections: dict[str, list] = {}
    for p in table.panels():
        sections.setdefault(p.section, []).append(_line_plot(p, single, table.table_id, p.section))
    groupby = [expr.Config(k) for k in ([] if single else ["experiment_name"]) + [GROUP_KEY]]
    section_settings = ws.SectionPanelSettings(x_axis=EPOCH)
    return ws.Workspace(
        entity=entity,
        project=project,
        name="".join(c for c in title if not unicodedata.category(c).startswith("S"))[:100],  # app rule
        sections=[
            ws.Section(name=n, panels=p, is_open=True, panel_settings=section_settings)
            for n, p in sections.items()
        ],
        settings=ws.WorkspaceSettings(x_axis=EPOCH, max_runs=100),
        runset_settings=ws.RunsetSettings(
            filters=_train_runs(table.experiments), groupby=groupby, pinned_columns=_columns()
        ),
    )


REPORT_INTRO = (
    "Each section shows one table rebuilt from the run records and logged by `python scripts/build_tables.py "
    "--wandb` (a run with job_type tables): <table>/cells puts the paper's number (paper) beside ours (ours_mean, "
    "ours_std over n_seeds seeds, diff); <table>/gains compares each baseline with its projected optimizer. Below "
    "it, each experiment's curves grouped by optimizer: mean over seeds with a min/max band."
)


def build_report(
    tables: Sequence[TableSection], *, project: str, entity: str = OFFLINE_ENTITY, online: bool = False
):
    """One section per table: the rebuilt table from the ``job_type="tables"`` run, then each experiment's
    curves. ``online`` names entity and project in every run set (the library looks them up on the server)."""

    def runset(name: str, filters: Any, **kwargs: Any):
        where = {"entity": entity, "project": project} if online else {}
        rs = wr.Runset(name=name, filters=filters, **where, **kwargs)
        rs._id = _stable_id("runset", name)
        return rs

    def summary_table(key: str, y: int, h: int):
        panel = wr.WeavePanelSummaryTable(table_name=key, layout=wr.Layout(x=0, y=y, w=24, h=h))
        panel._id = _stable_id("table", key)
        return panel

    blocks: list[Any] = [wr.TableOfContents(), wr.P(REPORT_INTRO)]
    for t in tables:
        tid = t.table_id
        tables_run = runset(f"{tid} tables", expr.And(expr.Metric("JobType") == "tables"))
        cells, gains = summary_table(f"{tid}/cells", 0, 12), summary_table(f"{tid}/gains", 12, 8)
        blocks += [wr.H1(f"{tid}: {t.title}"), wr.PanelGrid(runsets=[tables_run], panels=[cells, gains])]
        for exp in t.experiments:
            rs = runset(
                f"{tid} {exp}", _train_runs([exp]), groupby=[f"config.{GROUP_KEY}"], pinned_columns=_columns()
            )
            panels = [
                _line_plot(p, True, tid, exp, x=8 * (i % 3), y=6 * (i // 3), w=8, h=6)
                for i, p in enumerate(t.panels(report=True))
            ]
            blocks += [wr.H2(f"{tid}: {exp}"), wr.PanelGrid(runsets=[rs], panels=panels)]
    title = "AdamP replication: the paper's tables beside ours"
    return wr.Report(project=project, entity=entity, title=title, blocks=blocks, width="fluid")


def to_spec(obj: Any) -> dict[str, Any]:
    """The JSON the library saves for a Workspace or Report (built without the network)."""
    return obj._to_model().model_dump(by_alias=True, exclude_none=True, mode="json")


def write_specs(
    out_dir: str | os.PathLike, *, project: str, entity: str | None = None, tables=None
) -> list[Path]:
    """``workspace_<table>.json`` per table and ``report.json``; unchanged files are left alone, stale
    ``workspace_*.json`` removed. Returns the paths."""
    tables = discover_tables() if tables is None else tables
    entity, out_dir = entity or OFFLINE_ENTITY, Path(out_dir)
    specs = {
        f"workspace_{t.table_id}.json": build_workspace(t, project=project, entity=entity) for t in tables
    }
    specs["report.json"] = build_report(tables, project=project, entity=entity)
    for stale in {p.name for p in out_dir.glob("workspace_*.json")} - set(specs):
        (out_dir / stale).unlink()
    for name, obj in specs.items():
        text = json.dumps(to_spec(obj), indent=2, sort_keys=True) + "\n"
        if not (out_dir / name).exists() or (out_dir / name).read_text() != text:
            atomic_write_text(out_dir / name, text)
    return [out_dir / name for name in specs]


class PublishError(RuntimeError):
    """Publishing needs a W&B API key; nothing was sent."""


def require_api_key() -> None:
    if not os.environ.get("WANDB_API_KEY"):
        raise PublishError(
            "--publish needs WANDB_API_KEY in the environment; nothing was sent "
            "(without --publish the specs are written offline to results/dashboards/, no key needed)"
        )


def publish(*, project: str, entity: str | None = None, tables=None) -> list[str]:
    """Save every table view and the report to W&B (new views each time); return their URLs, report last."""
    require_api_key()
    tables = discover_tables() if tables is None else tables
    entity = entity or wandb.Api().default_entity
    urls = [build_workspace(t, project=project, entity=entity).save().url for t in tables]
    return urls + [build_report(tables, project=project, entity=entity, online=True).save().url]


# -------------------------------------------------------------------------------- checking against runs
@dataclass(frozen=True)
class LoggedRun:
    """What one W&B run logged, read from its local files."""

    job_type: str
    history: frozenset[str]
    summary: frozenset[str]
    config: frozenset[str]  # dotted paths, every level: "model", "model.name", ...
    finished: bool  # every file ends with an exit record


def _leveldb_records(data: bytes) -> Iterator[bytes]:
    """Records of a ``.wandb`` file (LevelDB log format: 32 KiB blocks, 7-byte chunk headers)."""
    if len(data) >= 4 and data[:4] != b":W&B":  # shorter: not written yet
        raise ValueError("not a .wandb transaction log")
    block, pos, parts = 32768, 7, b""
    while pos + 7 <= len(data):
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if block - pos % block < 7 or kind == 0:  # block trailer / padding
            pos += block - pos % block
            continue
        if pos + 7 + length > len(data):  # still being written
            return
        parts, pos = parts + data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # FULL or LAST chunk
            yield parts
            parts = b""


def _paths(key: str, value: Any) -> Iterator[str]:
    yield key
    for sub, inner in value.items() if isinstance(value, Mapping) else ():
        yield from _paths(f"{key}.{sub}", inner)


def _offline_files(path: Path) -> list[Path]:
    """The ``.wandb`` files under ``path``; for a run folder (or its ``wandb/``) whose W&B files went to the
    user's ``WANDB_DIR`` (wandb_mirror.wandb_root), the runs there that logged this folder as their run_dir."""
    if path.is_file():
        return [path]
    files = sorted(path.rglob("*.wandb")) if path.is_dir() else []
    if files or not os.environ.get("WANDB_DIR"):
        return files
    run_dir = (path.parent if path.name == "wandb" else path).resolve()
    shared = sorted(Path(os.environ["WANDB_DIR"]).rglob("*.wandb"))
    return [f for f in shared if _logged_run_dir(f) == run_dir]


def _logged_run_dir(file: Path) -> Path | None:
    for raw in _leveldb_records(file.read_bytes()):
        record = pb.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "run":
            logged = {i.key: i.value_json for i in record.run.config.update}.get("run_dir")
            return Path(json.loads(logged)).resolve() if logged else None
    return None


def read_offline_run(path: str | os.PathLike, wait_s: float = 0.0) -> LoggedRun:
    """Keys logged by the run under ``path`` (a ``.wandb`` file, an ``offline-run-*`` folder or a run folder;
    the files of a resumed run are merged). wandb's service writes these files after ``finish()`` returns, so
    this waits up to ``wait_s`` seconds for each to end with its exit record (``finished``)."""
    path, deadline = Path(path), time.monotonic() + wait_s
    files = _offline_files(path)
    if not files:
        where = f" (nor under WANDB_DIR={os.environ['WANDB_DIR']})" if os.environ.get("WANDB_DIR") else ""
        raise FileNotFoundError(f"no .wandb file under {path}{where}")
    while True:
        job_type, history, summary, config, exits = "", set(), set(), set(), 0
        for raw in (raw for f in files for raw in _leveldb_records(f.read_bytes())):
            record = pb.Record()
            record.ParseFromString(raw)
            kind = record.WhichOneof("record_type")
            job_type = (record.run.job_type or job_type) if kind == "run" else job_type
            exits += kind == "exit"
            updates = {"run": record.run.config.update, "config": record.config.update}.get(kind, ())
            config |= {
                p for i in updates if i.key != "_wandb" for p in _paths(i.key, json.loads(i.value_json))
            }
            if kind == "history":
                history |= {i.key or ".".join(i.nested_key) for i in record.history.item}
            elif kind == "summary":
                summary |= {i.key or i.nested_key[0] for i in record.summary.update}
        if exits >= len(files) or time.monotonic() > deadline:
            return LoggedRun(job_type, *map(frozenset, (history, summary, config)), exits >= len(files))
        time.sleep(0.1)


def _config_name(backend: str) -> str:
    return ".".join(part for part in backend.split(".") if part != "value")


def _scopes(spec: Mapping[str, Any]) -> Iterator[tuple[str, list, list]]:
    """(name, run sets, panels) of each part of a spec with its own run sets: a workspace or a report grid."""
    if "section" in spec["spec"]:
        section = spec["spec"]["section"]
        panels = [p for s in section["panelBankConfig"]["sections"] for p in s["panels"]]
        yield spec["displayName"], section["runSets"], panels
    for i, block in enumerate(spec["spec"].get("blocks", [])):
        if block["type"] == "panel-grid":
            meta = block["metadata"]
            names = ", ".join(rs["name"] for rs in meta["runSets"])
            yield f"report grid {i} ({names})", meta["runSets"], meta["panelBankSectionConfig"]["panels"]


def spec_references(runsets: Iterable[Mapping], panels: Iterable[Mapping]) -> set[tuple[str, str]]:
    """Every (kind, key) named: kind is history, summary, config or job_type (a run set's JobType filter)."""
    refs: set[tuple[str, str]] = set()
    for rs in runsets:
        for f in rs["filters"].get("filters", []):
            section, name = f["key"]["section"], f["key"]["name"]
            refs |= {("job_type", f["value"])} if (section, name) == ("run", "jobType") else {(section, name)}
        refs |= {("config", _config_name(k["name"])) for k in rs["grouping"]}
        refs |= {tuple(c.split(":", 1)) for c in rs["runFeed"]["columnOrder"] if not c.startswith("run:")}
    for panel in panels:
        config = panel["config"]
        if panel["viewType"] == "Run History Line Plot":
            refs |= {("history", m) for m in config["metrics"]} | {("history", config["xAxis"])}
            refs |= {("config", config["groupBy"])} if config.get("groupBy") else set()
        elif panel["viewType"] == "Weave":  # a summary table: runs.summary[key]
            refs.add(("summary", config["panel2Config"]["exp"]["fromOp"]["inputs"]["key"]["val"]))
        else:
            raise ValueError(f"check_spec does not know panels of type {panel['viewType']!r}")
    return {(kind, _config_name(key) if kind == "config" else key) for kind, key in refs}


def check_spec(spec: Mapping[str, Any], runs: Sequence[LoggedRun]) -> list[str]:
    """Keys a spec names that the logged runs its run sets select (by JobType) lack; empty when none."""
    problems = []
    for name, runsets, panels in _scopes(spec):
        refs = spec_references(runsets, panels)
        job_types = sorted(key for kind, key in refs if kind == "job_type")
        chosen = [r for r in runs if not job_types or r.job_type in job_types]
        problems += [f"{name}: no logged run of job_type {job_types}"] if not chosen else []
        for kind, key in sorted(refs - {("job_type", j) for j in job_types}):
            if kind not in ("history", "summary", "config"):
                problems.append(f"{name}: {kind}:{key} cannot be checked against a logged run")
            elif chosen and any(key not in getattr(run, kind) for run in chosen):
                problems.append(f"{name}: {kind} key {key!r} is not logged by its {job_types} runs")
    return problems
