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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from adamp_repro.tracking.records import atomic_write_text

CONFIG_DIR = Path(__file__).resolve().parents[3] / "configs"
OFFLINE_ENTITY = "<entity>"  # placeholder: the library's objects need an entity; offline there is none
EPOCH = "epoch"  # the x axis of per-epoch rows (wandb_mirror.define_metric); per-step rows use train/step
CLS, ADV = "classification", "adversarial"
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
# a: adversarial). Columns: section | tasks | x axis | metric | title | report.
_PANEL_ROWS = """
Accuracy      | c  | epoch      | eval_top1           | Test top-1 (%)                             | report
Accuracy      | c  | epoch      | eval_top5           | Test top-5 (%)                             |
Accuracy      | a  | epoch      | eval_clean_top1     | Standard Acc: clean test top-1 (%)         | report
Accuracy      | a  | epoch      | eval_robust_top1    | Attacked Acc: test top-1 under PGD (%)     | report
Accuracy      | ca | epoch      | train_top1          | Train top-1 (%)                            |
Loss          | ca | epoch      | train_loss          | Train loss (epoch mean)                    |
Loss          | ca | epoch      | eval_loss           | Test loss (clean)                          |
Loss          | a  | epoch      | eval_robust_loss    | Test loss under PGD                        |
Loss          | ca | train/step | step/loss           | Train loss per logged step                 |
Learning rate | ca | epoch      | lr                  | Learning rate (last step of the epoch)     |
Learning rate | ca | train/step | step/lr             | Learning rate per logged step              |
Diagnostics   | ca | epoch      | mean_weight_norm    | Mean norm of scale-invariant weights       | report
Diagnostics   | ca | epoch      | effective_step_size | Effective step size lr / norm(w)^2         |
Diagnostics   | ca | epoch      | detected_share      | Share of weights detected scale-invariant  |
Diagnostics   | ca | epoch      | mean_abs_cos        | Mean max-channel abs cos(grad, w)          |
"""
_TASKS = {"c": CLS, "a": ADV}
PANELS = tuple(
    PanelDef(sec, tuple(_TASKS[t] for t in tasks), x, metric, title, bool(report))
    for sec, tasks, x, metric, title, report in (
        [cell.strip() for cell in row.split("|")] for row in _PANEL_ROWS.strip().splitlines()
    )
)


@dataclass(frozen=True)
class TableSection:
    table_id: str
    title: str
    experiments: tuple[str, ...]  # experiment_name values the section filters on
    tasks: tuple[str, ...]  # task names of those experiments

    def panels(self, report: bool = False) -> list[PanelDef]:
        return [p for p in PANELS if set(p.tasks) & set(self.tasks) and (p.in_report or not report)]


# ------------------------------------------------------------------------------------------ discovery
def _read_defaults_chain(path: Path, exp_dir: Path) -> dict[str, Any]:
    """experiment_name, table id and task of one config file, following plain parent entries of its defaults."""
    data = yaml.safe_load(path.read_text()) or {}
    info: dict[str, Any] = {}
    for entry in data.get("defaults") or []:
        if isinstance(entry, str) and entry != "_self_" and (exp_dir / f"{entry}.yaml").exists():
            info.update(_read_defaults_chain(exp_dir / f"{entry}.yaml", exp_dir))
        elif isinstance(entry, Mapping):
            for key, value in entry.items():
                if str(key).split()[-1].strip("/") == "task":
                    info["task"] = value
    if "experiment_name" in data:
        info["experiment_name"] = data["experiment_name"]
    if "id" in (data.get("table") or {}):
        info["table_id"] = data["table"]["id"]
    return info


def discover_tables(config_dir: str | os.PathLike = CONFIG_DIR) -> list[TableSection]:
    """One section per table: the entries of ``tables.yaml`` in order, then every other ``table.id`` of the
    experiment files. An entry is named by its runs' table id (``default`` -> ``mini``); ``P2`` keeps the P1
    ResNet18 runs it compares against."""
    config_dir = Path(config_dir)
    exp_dir = config_dir / "experiment"
    base = _read_defaults_chain(config_dir / "train.yaml", exp_dir)
    exps = {p.stem: base | _read_defaults_chain(p, exp_dir) for p in sorted(exp_dir.glob("*.yaml"))}
    entries = yaml.safe_load((config_dir / "tables.yaml").read_text()) or {}
    tables: list[TableSection] = []
    for key, entry in entries.items():
        infos = [
            exps.get(e, base | {"experiment_name": e, "table_id": key}) for e in entry.get("experiments", [])
        ]
        ids = {i["table_id"] for i in infos}
        table_id = str(key) if key in ids or len(ids) != 1 else ids.pop()
        tables.append(_section(table_id, entry.get("description", ""), infos))
    covered = {t.table_id for t in tables}
    for table_id in dict.fromkeys(i["table_id"] for i in exps.values()):
        if table_id not in covered:
            tables.append(_section(table_id, "", [i for i in exps.values() if i["table_id"] == table_id]))
    return tables


def _section(table_id: str, title: str, infos: Sequence[Mapping[str, Any]]) -> TableSection:
    if not title:
        from adamp_repro.results.compare import OWN_TABLES
        from adamp_repro.results.reference import PAPER_TABLES

        paper = PAPER_TABLES.get(table_id)
        title = paper.title if paper else OWN_TABLES.get(table_id, f"Runs with table.id={table_id}")
    return TableSection(
        str(table_id),
        title,
        tuple(dict.fromkeys(str(i["experiment_name"]) for i in infos)),
        tuple(dict.fromkeys(str(i["task"]) for i in infos)),
    )


# --------------------------------------------------------------------------------------------- builders
def _stable_id(*parts: str) -> str:
    """A W&B-style base-36 id derived from the panel's place in the spec, so the same input gives the same bytes."""
    number, digits = int(hashlib.sha256("/".join(parts).encode()).hexdigest()[:15], 16), ""
    while number:
        number, rest = divmod(number, 36)
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"[rest] + digits
    return digits


def _config_column(key: str) -> str:
    from wandb_workspaces import expr

    return f"config:{expr.groupby_str_to_key(f'config.{key}').name}"


def _train_filter(experiments: Sequence[str]):
    from wandb_workspaces import expr

    return expr.And(expr.Config("experiment_name").isin(list(experiments)), expr.Metric("JobType") == "train")


def _line_plot(panel: PanelDef, group: bool, id_parts: Sequence[str], layout: Any = None):
    import wandb_workspaces.reports.v2 as wr

    plot = wr.LinePlot(
        title=panel.title,
        x=panel.x,
        y=[panel.metric],
        title_x=panel.x,
        groupby=wr.Config(GROUP_KEY) if group else None,
        aggregate=True,
        groupby_aggfunc="mean",
        groupby_rangefunc="minmax",
        **({"layout": layout} if layout else {}),
    )
    plot._id = _stable_id(*id_parts, panel.title)
    return plot


def build_workspace(table: TableSection, *, project: str, entity: str = OFFLINE_ENTITY):
    """The view of one table: runs of its experiments, grouped by optimizer (by experiment first when the table
    has several), mean line and min/max band over seeds, one section per metric group."""
    import wandb_workspaces.workspaces as ws
    from wandb_workspaces import expr

    single = len(table.experiments) == 1
    sections: dict[str, list] = {}
    for panel in table.panels():
        sections.setdefault(panel.section, []).append(
            _line_plot(panel, single, (table.table_id, panel.section))
        )
    groupby = [expr.Config(GROUP_KEY)] if single else [expr.Config("experiment_name"), expr.Config(GROUP_KEY)]
    return ws.Workspace(
        entity=entity,
        project=project,
        name=f"adamp-repro {table.table_id}: {table.title}"[:120],
        sections=[
            ws.Section(
                name=name, panels=panels, is_open=True, panel_settings=ws.SectionPanelSettings(x_axis=EPOCH)
            )
            for name, panels in sections.items()
        ],
        settings=ws.WorkspaceSettings(x_axis=EPOCH, max_runs=100),
        runset_settings=ws.RunsetSettings(
            filters=_train_filter(table.experiments),
            groupby=groupby,
            pinned_columns=[_config_column(k) for k in COLUMN_KEYS],
        ),
    )


def build_report(
    tables: Sequence[TableSection], *, project: str, entity: str = OFFLINE_ENTITY, online: bool = False
):
    """One section per table: the rebuilt table (``<table>/cells``: the paper's number beside ours, and
    ``<table>/gains``) from the ``job_type="tables"`` run, then each experiment's curves grouped by optimizer.
    ``online`` names entity/project in every run set (the library looks them up over the network)."""
    import wandb_workspaces.reports.v2 as wr
    from wandb_workspaces import expr

    where = {"entity": entity, "project": project} if online else {}

    def runset(name: str, filters: Any, **kwargs: Any):
        rs = wr.Runset(name=name, filters=filters, **where, **kwargs)
        rs._id = _stable_id("runset", name)
        return rs

    def summary_table(key: str, y: int, h: int):
        panel = wr.WeavePanelSummaryTable(table_name=key, layout=wr.Layout(x=0, y=y, w=24, h=h))
        panel._id = _stable_id("table", key)
        return panel

    blocks: list[Any] = [
        wr.TableOfContents(),
        wr.P(
            "Each section shows one rebuilt table as logged by `python scripts/build_tables.py --wandb` "
            '(a run with job_type "tables"): the cells table puts the paper\'s printed number (paper) beside '
            "our mean over seeds (ours_mean, ours_std, n_seeds) and their difference; the gains table compares "
            "each baseline with its projected optimizer (SGD vs SGDP, AdamW/Adam vs AdamP). Below it, the "
            "training curves of each experiment of the table, grouped by optimizer: mean over seeds with a "
            "min/max band. The run records on disk stay the source of truth (results/tables)."
        ),
    ]
    for table in tables:
        blocks += [
            wr.H1(f"{table.table_id}: {table.title}"),
            wr.P(
                f"Experiments: {', '.join(table.experiments)}. Tables logged as "
                f"{table.table_id}/cells and {table.table_id}/gains."
            ),
        ]
        tables_filter = expr.And(expr.Metric("JobType") == "tables")
        blocks.append(
            wr.PanelGrid(
                runsets=[runset(f"tables {table.table_id}", tables_filter)],
                panels=[
                    summary_table(f"{table.table_id}/cells", 0, 12),
                    summary_table(f"{table.table_id}/gains", 12, 8),
                ],
            )
        )
        for exp in table.experiments:
            panels = [
                _line_plot(p, True, ("report", exp), wr.Layout(x=8 * (i % 3), y=6 * (i // 3), w=8, h=6))
                for i, p in enumerate(table.panels(report=True))
            ]
            rs = runset(
                exp,
                _train_filter([exp]),
                groupby=[f"config.{GROUP_KEY}"],
                pinned_columns=[_config_column(k) for k in COLUMN_KEYS],
            )
            blocks += [wr.H2(f"{table.table_id} / {exp}"), wr.PanelGrid(runsets=[rs], panels=panels)]
    return wr.Report(
        project=project,
        entity=entity,
        title="AdamP replication: the paper's tables beside ours",
        description="Rebuilt tables of arXiv 2006.08217 with the training curves behind them.",
        blocks=blocks,
        width="fluid",
    )


def to_spec(obj: Any) -> dict[str, Any]:
    """The JSON the library would save for a Workspace or Report (no network)."""
    return obj._to_model().model_dump(by_alias=True, exclude_none=True, mode="json")


def write_specs(
    out_dir: str | os.PathLike,
    *,
    project: str,
    entity: str | None = None,
    tables: Sequence[TableSection] | None = None,
) -> list[Path]:
    """``workspace_<table>.json`` per table and ``report.json``; unchanged files are not rewritten and stale
    ``workspace_*.json`` files are removed. Returns the paths of the specs."""
    tables = discover_tables() if tables is None else tables
    entity = entity or OFFLINE_ENTITY
    out_dir = Path(out_dir)
    specs = {
        f"workspace_{t.table_id}.json": to_spec(build_workspace(t, project=project, entity=entity))
        for t in tables
    }
    specs["report.json"] = to_spec(build_report(tables, project=project, entity=entity))
    for stale in set(p.name for p in out_dir.glob("workspace_*.json")) - set(specs):
        (out_dir / stale).unlink()
    paths = []
    for name, spec in specs.items():
        path, text = out_dir / name, json.dumps(spec, indent=2, sort_keys=True) + "\n"
        if not path.exists() or path.read_text() != text:
            atomic_write_text(path, text)
        paths.append(path)
    return paths


class PublishError(RuntimeError):
    """Publishing needs a W&B API key; nothing was sent."""


def publish(
    *, project: str, entity: str | None = None, tables: Sequence[TableSection] | None = None
) -> list[str]:
    """Save every table view and the report to W&B; return their URLs (views first, report last)."""
    if not os.environ.get("WANDB_API_KEY"):
        raise PublishError(
            "--publish needs WANDB_API_KEY in the environment (nothing was sent; the offline "
            "specs under results/dashboards/ need no key)"
        )
    import wandb

    tables = discover_tables() if tables is None else tables
    entity = entity or wandb.Api().default_entity
    urls = []
    for table in tables:
        urls.append(build_workspace(table, project=project, entity=entity).save().url)
    urls.append(build_report(tables, project=project, entity=entity, online=True).save().url)
    return urls


# --------------------------------------------------------------------------------- checking against runs
@dataclass(frozen=True)
class LoggedRun:
    """What one W&B run logged, read from its local files."""

    job_type: str
    history: frozenset[str]
    summary: frozenset[str]
    config: frozenset[str]  # dotted paths, every level: "model", "model.name", ...


def _leveldb_records(data: bytes) -> Iterator[bytes]:
    """Records of a ``.wandb`` file (LevelDB log format: 32 KiB blocks, 7-byte chunk headers)."""
    if data[:4] != b":W&B":
        raise ValueError("not a .wandb transaction log")
    block, pos, parts = 32768, 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            pos += block - pos % block
            continue
        parts += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            yield parts
            parts = b""


def _config_paths(key: str, value: Any) -> Iterator[str]:
    yield key
    if isinstance(value, Mapping):
        for sub, inner in value.items():
            yield from _config_paths(f"{key}.{sub}", inner)


def read_offline_run(path: str | os.PathLike) -> LoggedRun:
    """Keys logged by the run under ``path``: a ``.wandb`` file or a folder holding them (a run folder, its
    ``wandb/`` or one ``offline-run-*``); the files of a resumed run are merged."""
    from wandb.proto import wandb_internal_pb2 as pb

    path = Path(path)
    files = [path] if path.is_file() else sorted(path.rglob("*.wandb"))
    if not files:
        raise FileNotFoundError(f"no .wandb file under {path}")
    job_type, history, summary, config = "", set(), set(), set()
    for file in files:
        for raw in _leveldb_records(file.read_bytes()):
            record = pb.Record()
            record.ParseFromString(raw)
            kind = record.WhichOneof("record_type")
            if kind == "run":
                job_type = record.run.job_type or job_type
                updates = record.run.config.update
            elif kind == "config":
                updates = record.config.update
            else:
                updates = ()
            for item in updates:
                if item.key != "_wandb":
                    config.update(_config_paths(item.key, json.loads(item.value_json)))
            if kind == "history":
                history.update(i.key or ".".join(i.nested_key) for i in record.history.item)
            elif kind == "summary":
                summary.update(i.key or i.nested_key[0] for i in record.summary.update)
    return LoggedRun(job_type, frozenset(history), frozenset(summary), frozenset(config))


_BUILTIN_X = {"_step", "_runtime", "_timestamp", "_absolute_runtime"}


def _config_name(backend: str) -> str:
    return ".".join(part for part in backend.split(".") if part != "value")


def _scopes(spec: Mapping[str, Any]) -> Iterator[tuple[str, list, list]]:
    """(name, run sets, panels) of each part of a spec that shares run sets: a workspace, or a report grid."""
    if "section" in spec.get("spec", {}):
        section = spec["spec"]["section"]
        panels = [p for s in section["panelBankConfig"]["sections"] for p in s["panels"]]
        yield spec.get("displayName", "workspace"), section["runSets"], panels
        return
    for i, block in enumerate(spec["spec"]["blocks"]):
        if block.get("type") == "panel-grid":
            meta = block["metadata"]
            yield f"report grid {i}", meta["runSets"], meta["panelBankSectionConfig"]["panels"]


def _pick_keys(node: Any) -> Iterator[str]:
    if isinstance(node, Mapping):
        op = node.get("fromOp")
        if isinstance(op, Mapping) and op.get("name") == "pick":
            yield op["inputs"]["key"]["val"]
        for value in node.values():
            yield from _pick_keys(value)
    elif isinstance(node, list):
        for value in node:
            yield from _pick_keys(value)


def spec_references(runsets: Iterable[Mapping], panels: Iterable[Mapping]) -> set[tuple[str, str]]:
    """Every (kind, key) named: kind is history, summary, config or job_type (a run set's JobType filter)."""
    refs: set[tuple[str, str]] = set()
    for rs in runsets:
        for f in rs["filters"].get("filters", []):
            section, name = f["key"]["section"], f["key"]["name"]
            if section == "run" and name == "jobType":
                refs.add(("job_type", f["value"]))
            elif section in ("config", "summary"):
                refs.add((section, name))
        refs.update(("config", _config_name(k["name"])) for k in rs["grouping"] if k["section"] == "config")
        for column in rs["runFeed"]["columnOrder"]:
            section, _, name = column.partition(":")
            if section in ("config", "summary"):
                refs.add((section, _config_name(name) if section == "config" else name))
    for panel in panels:
        config = panel.get("config", {})
        if panel.get("viewType") == "Run History Line Plot":
            refs.update(("history", m) for m in config.get("metrics", []))
            if config.get("xAxis") not in _BUILTIN_X:
                refs.add(("history", config["xAxis"]))
            if config.get("groupBy") not in (None, "None"):
                refs.add(("config", _config_name(config["groupBy"])))
        refs.update(("summary", key) for key in _pick_keys(config))
    return refs


def check_spec(spec: Mapping[str, Any], runs: Sequence[LoggedRun]) -> list[str]:
    """Problems (empty: none): keys a spec names that the runs its run sets select did not log."""
    problems = []
    for name, runsets, panels in _scopes(spec):
        refs = spec_references(runsets, panels)
        job_types = {key for kind, key in refs if kind == "job_type"}
        chosen = [r for r in runs if not job_types or r.job_type in job_types]
        if not chosen:
            problems.append(f"{name}: no logged run of job_type {sorted(job_types)}")
            continue
        for kind, key in sorted(refs):
            if kind != "job_type" and any(key not in getattr(run, kind) for run in chosen):
                problems.append(f"{name}: {kind} key {key!r} is not logged by its {sorted(job_types)} runs")
    return problems
