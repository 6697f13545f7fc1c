"""Run records on disk: the source of truth for every reproduced number.

One folder per run (``results/runs/<experiment>/<scale>/<run_name>-<hash>/``, the hash being eight hex digits of
the run's config, ``train.runner.config_hash``) with a fixed contract:

- ``config.yaml``      the resolved Hydra config of the run
- ``provenance.json``  ``{"segments": [...]}``, one entry per segment of the run (the first start and every
                       resume): git commit and dirty flag, a hash of the package's source files, package
                       versions, device, seed, torch determinism settings, start time; when the segment's
                       training ends, the code that ran (``optimizer_forms``, ``fused_cpu_build``: names in
                       ``tracking.schema``). Older records hold a single dict, read as one segment
                       (``read_provenance_segments``).
- ``metrics.csv``      one row per epoch, prefixed columns (``train_loss``, ``eval_top1``, ``lr``, ...)
- ``diagnostics.csv``  optional: per-epoch weight-norm diagnostics of the scale-invariant weights
- ``summary.json``     the final state: ``schema_version`` (``tracking.schema``; absent = 1), ``status``
                       (running / completed / failed / diverged / interrupted), final and best metrics, wall
                       time, images/s, and identifying keys; read through ``read_summary``, which gives an
                       older version's keys their current names

Every file is written to a temporary name in the same folder and renamed, so a crash never leaves a
half-written file behind.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from adamp_repro.tracking.schema import SCHEMA_VERSION, SCHEMA_VERSION_KEY, upgrade_summary

STATUSES = ("running", "completed", "failed", "diverged", "interrupted")
CONFIG_FILE = "config.yaml"
PROVENANCE_FILE = "provenance.json"
METRICS_FILE = "metrics.csv"
DIAGNOSTICS_FILE = "diagnostics.csv"
SUMMARY_FILE = "summary.json"


def atomic_write_bytes(path: str | os.PathLike, data: bytes, backup: str | os.PathLike | None = None) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and an atomic rename.

    ``backup``: the file being replaced is first renamed to this name (a crash in between leaves the backup
    and no ``path``, never a torn file).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp creates 0600; records are meant to be read by others
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if backup is not None and path.exists():
            os.replace(path, backup)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def rows_to_csv(rows: Iterable[Mapping[str, Any]]) -> str:
    """Render rows as CSV; the header is the union of keys in first-seen order."""
    rows = list(rows)
    header: list[str] = []
    for row in rows:
        header.extend(k for k in row if k not in header)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def read_csv_rows(path: str | os.PathLike) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


class RunRecord:
    """Writer for one run folder. Only rank 0 of a distributed job creates one.

    Per-epoch rows are kept in memory and the whole CSV is rewritten atomically on each append: a few
    hundred rows at most, and a reader never sees a torn line.
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.segments: list[dict[str, Any]] = []
        self.metrics: list[dict[str, Any]] = []
        self.diagnostics: list[dict[str, Any]] = []

    def start(
        self,
        config_yaml: str,
        provenance: Mapping[str, Any],
        summary: Mapping[str, Any],
        earlier_segments: Iterable[Mapping[str, Any]] = (),
    ) -> list[dict[str, Any]]:
        """Write config and provenance, mark the run ``running`` (kept rows survive a resume).

        ``provenance`` describes this segment; a resumed run passes the segments already recorded
        (``read_provenance_segments``) as ``earlier_segments``. Returns all segments, oldest first.
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        segments = [*map(dict, earlier_segments), dict(provenance)]
        atomic_write_text(self.run_dir / CONFIG_FILE, config_yaml)
        atomic_write_json(self.run_dir / PROVENANCE_FILE, {"segments": segments})
        self.write_summary({**summary, "status": "running"})
        self.segments = segments
        return [dict(segment) for segment in segments]

    def end_segment(self, keys: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Add ``keys`` (what is known only when the training ends) to this segment's provenance entry, the
        last one, and rewrite ``provenance.json``; returns all segments, oldest first ([] before ``start``)."""
        if not self.segments:
            return []
        self.segments[-1].update(keys)
        atomic_write_json(self.run_dir / PROVENANCE_FILE, {"segments": self.segments})
        return [dict(segment) for segment in self.segments]

    def restore_rows(
        self,
        up_to_epoch: int,
        metrics: Iterable[Mapping[str, Any]] | None = None,
        diagnostics: Iterable[Mapping[str, Any]] | None = None,
    ) -> list[str]:
        """On resume: keep the rows of epochs ``< up_to_epoch``, drop later ones.

        ``metrics`` / ``diagnostics``: the rows the checkpoint holds. A file that is missing or lacks some of
        those epochs is rebuilt from them. Returns the names of the files rebuilt.
        """
        rebuilt = []
        for name, rows, kept in (
            (METRICS_FILE, self.metrics, metrics),
            (DIAGNOSTICS_FILE, self.diagnostics, diagnostics),
        ):
            rows.clear()
            rows.extend(_rows_before(self.run_dir / name, up_to_epoch))
            kept = [dict(r) for r in kept or () if int(r["epoch"]) < up_to_epoch]
            if kept and (len(rows) != len(kept) or {_epoch(r) for r in rows} != {_epoch(r) for r in kept}):
                rows[:] = kept
                atomic_write_text(self.run_dir / name, rows_to_csv(rows))
                rebuilt.append(name)
        return rebuilt

    def log_epoch(self, row: Mapping[str, Any], diagnostics: Iterable[Mapping[str, Any]] = ()) -> None:
        self.metrics.append(dict(row))
        atomic_write_text(self.run_dir / METRICS_FILE, rows_to_csv(self.metrics))
        diagnostics = list(diagnostics)
        if diagnostics:
            self.diagnostics.extend(dict(d) for d in diagnostics)
            atomic_write_text(self.run_dir / DIAGNOSTICS_FILE, rows_to_csv(self.diagnostics))

    def write_summary(self, summary: Mapping[str, Any]) -> dict[str, Any]:
        """Write ``summary.json`` with the schema version; returns what was written."""
        status = summary.get("status")
        if status not in STATUSES:
            raise ValueError(f"Invalid run status: {status!r}; expected one of {STATUSES}")
        written = {**summary, SCHEMA_VERSION_KEY: SCHEMA_VERSION}
        atomic_write_json(self.run_dir / SUMMARY_FILE, written)
        return written


def _rows_before(path: Path, epoch: int) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [r for r in read_csv_rows(path) if r.get("epoch") is None or _epoch(r) < epoch]


def _epoch(row: Mapping[str, Any]) -> int:
    try:
        return int(row["epoch"])
    except (TypeError, ValueError):
        return -1  # a torn or hand-edited line: kept, and the epoch check then rebuilds the file


def read_provenance_segments(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The provenance of each segment of a run, oldest first: ``[]`` without a file, one segment for a record
    written before segments existed (a single dict)."""
    path = Path(run_dir) / PROVENANCE_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable provenance ({exc})") from exc
    if isinstance(data, dict) and isinstance(data.get("segments"), list):
        return [dict(s) for s in data["segments"]]
    if isinstance(data, dict):
        return [data]
    raise ValueError(f"{path}: provenance is neither a dict nor {{'segments': [...]}}")


def read_summary(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The summary of a run folder, with this schema version's key names (``schema.upgrade_summary``: a record
    of an older version reads as if written now); raises FileNotFoundError / ValueError on a missing or broken
    file."""
    path = Path(run_dir) / SUMMARY_FILE
    with open(path) as handle:
        summary = json.load(handle)
    if not isinstance(summary, dict) or summary.get("status") not in STATUSES:
        raise ValueError(f"{path}: not a run summary (missing or unknown 'status')")
    return upgrade_summary(summary)


def is_completed(run_dir: str | os.PathLike) -> bool:
    try:
        return read_summary(run_dir)["status"] == "completed"
    except (OSError, ValueError):
        return False
