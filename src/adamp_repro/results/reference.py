"""The paper's printed numbers: one CSV per table under ``results/paper/``.

The CSVs are generated from the project's transcription of the paper (``results/paper/reference.csv``, 84 cells
read from the project page's table LaTeX; arXiv 2006.08217) by ``write_paper_csvs``; no number is retyped. Each
printed row has an id (``row_id``, one per block, model and dataset of a table): the tables join our runs to the
paper's rows by it (the catalogue's ``rows`` map the labels a run carries to the id), never by display label.
Which tables exist, their titles, sources and test sets are the catalogue's (``configs/tables.yaml``, entries
of kind ``paper``). Tables are named P1..P7 after the project page (clovaai.github.io/AdamP): the ICLR version (v3) numbers
its tables differently and that mapping has not been read, so no "paper Table N" label is claimed here.

Regenerate with ``python -m adamp_repro.results.reference`` (``make paper-numbers``).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd

from adamp_repro import catalogue, paths
from adamp_repro.catalogue import Table
from adamp_repro.tracking.records import atomic_write_text

REFERENCE_COLUMNS = ("table", "row_id", "block", "model", "dataset", "optimizer", "metric", "value")
ROW_COLUMNS = ("block", "model", "dataset")  # what one row id stands for, within a table
PAPER_COLUMNS = (
    "table",
    "source",
    "row_id",
    "block",
    "model",
    "dataset",
    "optimizer",
    "metric",
    "value",
    "value_printed",
    "tolerance",
    "tolerance_basis",
)
STRING_COLUMNS = tuple(c for c in PAPER_COLUMNS if c not in ("value", "tolerance"))


def paper_tables() -> dict[str, Table]:
    """The paper's printed tables, from the catalogue (``configs/tables.yaml``, entries of kind ``paper``)."""
    return catalogue.load().paper_tables()


def tolerance_band(value: float, table: Table) -> tuple[float, str]:
    """Half-width (in accuracy points) of the band in which a paper-scale reproduction counts as matching.

    The paper prints one number per cell with no seed spread, so the band is the suite's own choice: twice
    the binomial sampling standard error of an accuracy of ``value`` percent on the table's test set,
    ``2 * 100 * sqrt(p (1 - p) / N)``. Returns ``(nan, reason)`` for tables the suite does not run.
    """
    if table.test_set_size is None:
        return math.nan, "none: not run by this suite"
    p = value / 100.0
    if not 0.0 <= p <= 1.0:
        raise ValueError(
            f"Invalid accuracy for a tolerance band: {value!r} (expected 0..100) in {table.table_id}"
        )
    band = round(2.0 * 100.0 * math.sqrt(p * (1.0 - p) / table.test_set_size), 2)
    basis = (
        f"suite's choice: 2 x binomial SE of this accuracy on the {table.test_set_size:,}-image "
        f"{table.test_set_name} (the paper gives no seed spread)"
    )
    return band, basis


def read_reference_csv(path: str | Path) -> pd.DataFrame:
    """The transcription ``reference.csv`` with every column as text (``value`` keeps its printed digits)."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if tuple(frame.columns) != REFERENCE_COLUMNS:
        raise ValueError(f"{path}: columns {list(frame.columns)}; expected {list(REFERENCE_COLUMNS)}")
    known = paper_tables()
    unknown = sorted(set(frame["table"]) - set(known))
    if unknown:
        raise ValueError(f"{path}: unknown table ids {unknown}; known: {list(known)}")
    check_row_ids(frame, path)
    return frame


def check_row_ids(frame: pd.DataFrame, path: str | Path) -> None:
    """Each printed row has one id and each id one row (block, model, dataset) of its table, and every row the
    catalogue lists for a paper table is printed there; a ``ValueError`` names the first that is not."""
    missing = frame.loc[frame["row_id"].str.strip() == "", ["table", *ROW_COLUMNS]]
    if len(missing):
        raise ValueError(f"{path}: a printed row has no row_id: {' / '.join(missing.iloc[0])}")
    rows = frame[["table", "row_id", *ROW_COLUMNS]].drop_duplicates()
    for keys in (["table", "row_id"], ["table", *ROW_COLUMNS]):
        doubled = rows[rows.duplicated(keys, keep=False)]
        if len(doubled):
            raise ValueError(
                f"{path}: {' / '.join(keys)} must name one printed row each; "
                f"{' / '.join(doubled.iloc[0][keys])} names more than one"
            )
    for table_id, table in paper_tables().items():
        printed = set(frame.loc[frame["table"] == table_id, "row_id"])
        unprinted = [r for r in (*table.rows, *table.borrow) if r not in printed]
        if unprinted:
            raise ValueError(
                f"{path}: the catalogue's row {unprinted[0]!r} of {table_id} is not printed there; "
                f"printed rows: {', '.join(sorted(printed))}"
            )


def paper_frames(reference: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Split the transcription into one frame per table, adding source, float value and tolerance band."""
    frames: dict[str, pd.DataFrame] = {}
    for table_id, table in paper_tables().items():
        part = reference[reference["table"] == table_id]
        rows = []
        for rec in part.to_dict("records"):
            value = float(rec["value"])
            band, basis = tolerance_band(value, table)
            rows.append(
                {
                    **rec,
                    "source": table.source,
                    "value": value,
                    "value_printed": rec["value"],
                    "tolerance": band,
                    "tolerance_basis": basis,
                }
            )
        frames[table_id] = pd.DataFrame(rows, columns=list(PAPER_COLUMNS))
    return frames


def write_paper_csvs(reference_csv: str | Path, out_dir: str | Path) -> list[Path]:
    """Write ``<out_dir>/<table>.csv`` for P1..P7 from the transcription; returns the written paths."""
    out_dir = Path(out_dir)
    written = []
    for table_id, frame in paper_frames(read_reference_csv(reference_csv)).items():
        path = out_dir / f"{table_id}.csv"
        atomic_write_text(path, frame.to_csv(index=False, lineterminator="\n"))
        written.append(path)
    return written


def load_paper_numbers(paper_dir: str | Path | None = None) -> pd.DataFrame:
    """All printed cells from ``results/paper/P*.csv`` (``paper_dir``, default ``paths.paper_dir()``), in table
    order then file order.

    String columns stay text (a block named ``-`` is not missing); ``value`` and ``tolerance`` are floats,
    an empty tolerance is NaN.
    """
    paper_dir = paths.paper_dir() if paper_dir is None else Path(paper_dir)
    frames = []
    for table_id in paper_tables():
        path = paper_dir / f"{table_id}.csv"
        if not path.exists():
            raise FileNotFoundError(f"Missing paper table {path}; regenerate with `python -m {__name__}`")
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        missing = sorted(set(PAPER_COLUMNS) - set(frame.columns))
        if missing:
            raise ValueError(f"{path}: missing columns {missing}")
        for column in ("value", "tolerance"):
            frame[column] = [_to_float(v, path, column) for v in frame[column]]
        frames.append(frame[list(PAPER_COLUMNS)])
    numbers = pd.concat(frames, ignore_index=True)
    check_row_ids(numbers, paper_dir)
    return numbers


def _to_float(text: str, path: Path, column: str) -> float:
    try:
        return float(text) if text != "" else math.nan
    except ValueError:
        raise ValueError(f"{path}: column {column!r} has a non-number {text!r}") from None


def main(argv: list[str] | None = None) -> None:
    paper = paths.paper_dir()
    parser = argparse.ArgumentParser(description="Write results/paper/P*.csv from the paper transcription.")
    parser.add_argument("--reference", type=Path, default=paper / "reference.csv")
    parser.add_argument("--out", type=Path, default=paper)
    args = parser.parse_args(argv)
    for path in write_paper_csvs(args.reference, args.out):
        print(path)


if __name__ == "__main__":
    main()
