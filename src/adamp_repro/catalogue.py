"""The table catalogue: every table of the suite, read from ``configs/tables.yaml`` (its top comment documents the
entries) into one ``Table`` per table.

What a table is (title, source, kind), what it runs (experiments, optimizers, seeds), what it shows (its rows: the
id of each and the ``table.block`` / ``table.model`` labels its runs carry; metrics and the summary keys they read;
the columns and which of our optimizers fill them; the pairs compared) and what its gains are set beside (the
paper's printed table, the row a proxy stands in for, the reference gain of an own table) live in that one file.
Rows are named by id everywhere (``results/paper/*.csv`` carry the same ``row_id``), never by display label, and
every experiment a table runs must land in a row of the table its runs are tagged with: both checked at load; the results build, the figures, the dashboards and ``make reproduce-table`` read
them from here. A low module: it imports only the errors and the YAML reader, never results or training code.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from adamp_repro import paths
from adamp_repro.errors import ConfigError

TABLES_FILE = paths.config_dir() / "tables.yaml"
KINDS = ("paper", "proxy", "own")
# The pairs a table compares when its entry names none (baseline, proposed).
DEFAULT_PAIRS = (("SGD", "SGDP"), ("AdamW", "AdamP"), ("Adam", "AdamP"))
# The suite's optimizers in the order a table shows them, each under its column label; an optimizer outside it (a
# user's own, a timm one) comes after them, in name order, under its config name (``display_order``,
# ``display_label``).
SUITE_LABELS = {"sgd": "SGD", "sgdp": "SGDP", "adam": "Adam", "adamw": "AdamW", "adamp": "AdamP"}
# The printed gain an own table outside the catalogue is powered against: P1's ResNet18 row of the same pair.
DEFAULT_REFERENCE = ("P1", "resnet18")
# What an own table shows when it is not in the catalogue (runs tagged with an unknown table id).
DEFAULT_METRICS = {"top1_acc": "final_eval_top1", "attacked_acc": "final_eval_robust_top1"}
# Keys of an entry (what `make reproduce-table` reads, then what the tables read).
RUN_KEYS = ("description", "experiments", "optimizers", "optimizers_for", "seeds", "seeds_for", "overrides")
TABLE_KEYS = (
    "id",
    "kind",
    "title",
    "runs",
    "source",
    "test_set",
    "rows",
    "metrics",
    "columns",
    "pairs",
    "borrow",
    "proxy_of",
    "reference_gain",
    "trained_bar",
    "norms",
    "analysis",
)


@dataclass(frozen=True)
class Row:
    """One row of a table that runs: its id (``row_id`` of ``results/paper/<table>.csv`` for a paper table) and
    the ``table.block`` / ``table.model`` labels its runs carry (their experiments' ``table:`` block)."""

    row_id: str
    block: str
    model: str


@dataclass(frozen=True)
class Proxy:
    """The paper row a proxy table stands in for: its printed gains are set beside ours.

    ``row``: the paper row's id in ``table``. ``as_paper``: our column label -> the paper's column it stands for
    (P1's "Adam" column is our AdamW; P4a's Adam is torch Adam, so there AdamW has no paper column). ``label``:
    where the printed gain is, as the tables say it. ``rows``: for a proxy of several paper rows, our row id ->
    the paper row's id (P7's plain and weight-normalised Transformer-XL rows); a row it does not name stands for
    ``row``."""

    table: str
    row: str
    as_paper: Mapping[str, str]
    label: str
    rows: Mapping[str, str] = field(default_factory=dict)  # our row id -> the paper row it stands for

    def paper_row(self, row_id: str) -> str:
        """The paper row one of our rows stands in for: its ``rows`` entry, else ``row``."""
        return self.rows.get(row_id, self.row)


@dataclass(frozen=True)
class Table:
    """One entry of the catalogue (``configs/tables.yaml``)."""

    name: str  # the entry's name (``make reproduce-table TABLE=<name>``)
    table_id: str  # the id the runs carry (``table.id`` of its experiments)
    kind: str
    title: str
    runs: bool
    source: str = ""
    test_set_size: int | None = None
    test_set_name: str = ""
    rows: Mapping[str, Row] = field(default_factory=dict)  # row id -> the labels its runs carry
    metrics: Mapping[str, str] = field(default_factory=dict)  # metric id -> summary key
    columns: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # column label -> our optimizers
    pairs: tuple[tuple[str, str], ...] = DEFAULT_PAIRS
    pair_labels: Mapping[tuple[str, str], str] = field(default_factory=dict)
    borrow: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # row id -> (table, row id)
    proxy: Proxy | None = None
    reference_gain: tuple[str, str] = DEFAULT_REFERENCE  # (table, row id)
    trained_bar: Mapping[str, float] = field(default_factory=dict)
    norms: bool = False
    analysis: bool = False
    spec: Mapping[str, Any] = field(default_factory=dict)  # what `make reproduce-table` runs (RUN_KEYS)

    @property
    def is_paper(self) -> bool:
        return self.kind == "paper"

    def optimizers_for_column(self, label: str) -> tuple[str, ...]:
        """Our optimizers that may fill a column, the first with runs in the row wins."""
        return self.columns.get(label, (label.lower(),))

    def column_labels(self) -> tuple[str, ...]:
        """Every column label the entry names, in order: its pairs' (baseline, proposed), then its
        columns'."""
        return tuple(dict.fromkeys([*(label for pair in self.pairs for label in pair), *self.columns]))

    def label_of(self, optimizer: str) -> str | None:
        """The column label one of our optimizers is shown under: the label that is its name (``AdamW`` for
        adamw, though P1's ``Adam`` column lists adamw first), else the first column that lists it; None where
        the entry names it in no column."""
        labels = self.column_labels()
        own = [label for label in labels if label.lower() == optimizer]
        listing = [label for label in labels if optimizer in self.optimizers_for_column(label)]
        return next(iter(own + listing), None)

    def row_of(self, block: str, model: str) -> str | None:
        """The id of the row whose runs carry these ``table.block`` / ``table.model`` labels (None: no row)."""
        return next((r.row_id for r in self.rows.values() if (r.block, r.model) == (block, model)), None)


@dataclass(frozen=True)
class Catalogue:
    path: Path
    tables: tuple[Table, ...]

    def by_id(self) -> dict[str, Table]:
        return {t.table_id: t for t in self.tables}

    def get(self, table_id: str) -> Table | None:
        return self.by_id().get(table_id)

    def paper_tables(self) -> dict[str, Table]:
        """The paper's printed tables, in id order (P1, P2, P3, P4a, ...)."""
        return {t.table_id: t for t in sorted(self.tables, key=lambda t: t.table_id) if t.is_paper}

    def own_tables(self) -> dict[str, Table]:
        """Our own tables (own and proxy), in file order."""
        return {t.table_id: t for t in self.tables if not t.is_paper}

    def table_ids(self) -> list[str]:
        """Every table: the paper's, then ours."""
        return [*self.paper_tables(), *self.own_tables()]

    def runnable(self) -> dict[str, dict[str, Any]]:
        """Entry name -> what `make reproduce-table` runs, for every table that runs."""
        return {t.name: dict(t.spec) for t in self.tables if t.runs}

    def row(self, table_id: str, row_id: str) -> Row | None:
        """A row of a table that runs, by id (None: no such table or row)."""
        entry = self.get(table_id)
        return None if entry is None else entry.rows.get(row_id)


def load(path: str | os.PathLike = TABLES_FILE) -> Catalogue:
    """The catalogue in ``path`` (read once per file version); a bad entry is a ``ConfigError`` naming it."""
    path = Path(path)
    stat = path.stat()
    return _load(path, stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=8)
def _load(path: Path, _mtime: int, _size: int) -> Catalogue:
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of table entries, got {type(raw).__name__}")
    tables = [_table(path, str(name), entry) for name, entry in raw.items()]
    ids = [t.table_id for t in tables]
    doubled = sorted({i for i in ids if ids.count(i) > 1})
    if doubled:
        raise ConfigError(
            f"{path}: table id(s) {doubled} named by more than one entry; each table is one entry"
        )
    known = Catalogue(path, tuple(tables))
    for t in tables:
        _check_references(path, t, known)
        _check_experiment_rows(path, t, known)
    return known


def _check_references(path: Path, entry: Table, known: Catalogue) -> None:
    """Every row a borrow, proxy or reference gain names exists where the catalogue lists that table's rows."""
    named = [*entry.borrow.values()]
    if entry.reference_gain != DEFAULT_REFERENCE or known.get(DEFAULT_REFERENCE[0]) is not None:
        named.append(entry.reference_gain)  # the default is checked where the catalogue lists its table
    if entry.proxy is not None:
        named.append((entry.proxy.table, entry.proxy.row))
        named += [(entry.proxy.table, paper_row) for paper_row in entry.proxy.rows.values()]
    for table_id, row_id in named:
        target = known.get(table_id)
        if target is None or (target.runs and row_id not in target.rows):
            rows = ", ".join(target.rows) if target is not None else "no such table"
            raise ConfigError(
                f"{path}: table {entry.name!r}: names row {row_id!r} of table {table_id!r}; its rows: {rows}"
            )


def _check_experiment_rows(path: Path, entry: Table, known: Catalogue) -> None:
    """Each experiment the entry runs tags its runs with a table and labels that name one of its rows."""
    for experiment in entry.spec.get("experiments", ()):
        tag = _experiment_tag(path, experiment)
        if tag is None:
            continue  # an unknown experiment is `make reproduce-table`'s error (reproduce.load_tables)
        table_id, block, model = (str(tag.get(k, "")) for k in ("id", "block", "model"))
        target = known.get(table_id)
        if target is None or target.row_of(block, model) is None:
            rows = ", ".join(target.rows) if target is not None else "no such table"
            raise ConfigError(
                f"{path}: table {entry.name!r}: runs experiment {experiment!r}, whose table.id/block/model "
                f"{table_id!r}/{block!r}/{model!r} no `rows` entry of table {table_id!r} names; its rows: {rows}"
            )


def _table(path: Path, name: str, entry: Any) -> Table:
    where = f"{path}: table {name!r}"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected a mapping, got {entry!r}")
    unknown = sorted(set(entry) - set(RUN_KEYS) - set(TABLE_KEYS))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {unknown}; allowed: {', '.join((*TABLE_KEYS, *RUN_KEYS))}"
        )
    kind = entry.get("kind", "own")
    if kind not in KINDS:
        raise ConfigError(f"{where}: kind {kind!r}; allowed: {', '.join(KINDS)}")
    runs = entry.get("runs", True)
    if not isinstance(runs, bool):
        raise ConfigError(f"{where}: runs {runs!r}; allowed: true, false")
    needed = ("experiments", "optimizers", "seeds") + (("rows",) if kind != "own" else ())
    missing = [k for k in needed if runs and k not in entry]
    if missing:
        raise ConfigError(f"{where}: a table that runs needs {missing} (or `runs: false`)")
    pairs, labels = [], {}
    for pair in entry.get("pairs", DEFAULT_PAIRS):
        if not isinstance(pair, (list, tuple)) or len(pair) not in (2, 3):
            raise ConfigError(
                f"{where}: pair {pair!r}; expected [baseline, proposed] or [baseline, proposed, what]"
            )
        pairs.append((str(pair[0]), str(pair[1])))
        if len(pair) == 3:
            labels[pairs[-1]] = str(pair[2])
    test_set = entry.get("test_set") or {}
    proxy = entry.get("proxy_of")
    if (proxy is None) == (kind == "proxy"):
        raise ConfigError(f"{where}: `proxy_of` goes with kind proxy, and a proxy needs it")
    return Table(
        name=name,
        table_id=str(entry.get("id", name)),
        kind=kind,
        title=str(entry.get("title") or entry.get("description") or name),
        runs=runs,
        source=str(entry.get("source", "")),
        test_set_size=int(test_set["size"]) if "size" in test_set else None,
        test_set_name=str(test_set.get("name", "")),
        metrics=dict(entry.get("metrics") or {}),
        columns={k: tuple(v) for k, v in (entry.get("columns") or {}).items()},
        pairs=tuple(pairs),
        pair_labels=labels,
        rows=_rows(where, entry["rows"])
        if "rows" in entry
        else _own_rows(path, str(entry.get("id", name)), entry.get("experiments", ())),
        borrow={str(b): _row_ref(where, r) for b, r in (entry.get("borrow") or {}).items()},
        proxy=None
        if proxy is None
        else Proxy(
            *_row_ref(where, {k: proxy.get(k) for k in ("table", "row")}),
            dict(proxy.get("as_paper") or {}),
            str(proxy.get("label", proxy.get("table"))),
            {str(k): str(v) for k, v in (proxy.get("rows") or {}).items()},
        ),
        reference_gain=_row_ref(where, entry["reference_gain"])
        if "reference_gain" in entry
        else DEFAULT_REFERENCE,
        trained_bar={k: float(v) for k, v in (entry.get("trained_bar") or {}).items()},
        norms=bool(entry.get("norms", False)),
        analysis=bool(entry.get("analysis", False)),
        spec={k: entry[k] for k in RUN_KEYS if k in entry} if runs else {},
    )


def _experiment_tag(path: Path, experiment: str) -> Any:
    """The ``table:`` block of an experiment file beside the catalogue (``{}`` when it has none), or None when
    the file does not exist."""
    file = path.parent / "experiment" / f"{experiment}.yaml"
    return (OmegaConf.load(file).get("table") or {}) if file.is_file() else None


def _own_rows(path: Path, table_id: str, experiments: Any) -> dict[str, Row]:
    """An own table may leave out ``rows``: each of its experiments tagged with its id is one row, named after
    the experiment, with the labels the experiment file gives (a paper or proxy table must list its rows, whose
    ids join the paper's numbers)."""
    rows = {}
    for experiment in experiments or ():
        tag = _experiment_tag(path, experiment)
        if tag is not None and str(tag.get("id", "")) == table_id:
            rows[str(experiment)] = {"block": tag.get("block"), "model": tag.get("model")}
    return _rows(f"{path}: table {table_id!r}", rows)


def _rows(where: str, rows: Any) -> dict[str, Row]:
    """``rows: {<row id>: {block, model}}``: the labels each row's runs carry, one row per pair of labels."""
    if not isinstance(rows, dict):
        raise ConfigError(f"{where}: rows {rows!r}; expected {{<row id>: {{block, model}}}}")
    found: dict[str, Row] = {}
    for row_id, labels in rows.items():
        if not isinstance(labels, dict) or set(labels) != {"block", "model"}:
            raise ConfigError(f"{where}: row {row_id!r}: {labels!r}; expected {{block, model}}")
        row = Row(str(row_id), str(labels["block"]), str(labels["model"]))
        same = [r.row_id for r in found.values() if (r.block, r.model) == (row.block, row.model)]
        if same:
            raise ConfigError(f"{where}: rows {same[0]!r} and {row.row_id!r} name the same block/model")
        found[row.row_id] = row
    return found


def _row_ref(where: str, ref: Any) -> tuple[str, str]:
    """A row of another table: ``{table, row}`` (the row's id)."""
    if not isinstance(ref, dict) or set(ref) != {"table", "row"} or None in ref.values():
        raise ConfigError(f"{where}: {ref!r}; expected {{table, row}} (a table id and one of its row ids)")
    return str(ref["table"]), str(ref["row"])


def display_order(optimizers: Iterable[str]) -> list[str]:
    """``optimizers`` in the order the tables show them: the suite's (``SUITE_LABELS``) first, then the rest by
    name."""
    present = set(optimizers)
    return [o for o in SUITE_LABELS if o in present] + sorted(present - set(SUITE_LABELS))


def display_label(optimizer: str) -> str:
    """The column label of one of the suite's optimizers (``SGDP`` for sgdp); any other keeps its config name."""
    return SUITE_LABELS.get(optimizer, optimizer)


def optimizer_of_label(label: str) -> str:
    """The optimizer a column label names (``display_label`` read backwards)."""
    return next((name for name, shown in SUITE_LABELS.items() if shown == label), label)


def table(table_id: str) -> Table | None:
    """The catalogue's entry for a table id (None: runs tagged with a table the catalogue does not list)."""
    return load().get(table_id)


def row_labels(table_id: str, row_id: str) -> tuple[str, str]:
    """A row's ``table.block`` and ``table.model`` labels, for text (the id itself where no row has it)."""
    row = load().row(table_id, row_id)
    return (row.block, row.model) if row is not None else (row_id, row_id)
