"""Join run records with the paper's numbers: per-cell statistics over seeds and paired gains.

Everything here is numeric (pandas frames of floats); rounding happens only when ``tables`` renders.

A *cell* is (table, scale, row, optimizer, metric). Our value for a cell is the mean and sample
standard deviation over seeds of one summary key of the completed runs placed in it:

- placement: ``summary.table_id`` == table, the run's row id == the row's id (``collect.row_of``: the
  catalogue's ``rows`` map the exact ``table_block`` / ``table_model`` labels a run carries to the id of a row,
  the ``row_id`` of ``results/paper/<table>.csv`` for a paper table; labels are never compared with the paper's),
  ``scale`` == scale;
- metric: the catalogue's ``metrics`` of the table (``configs/tables.yaml``), e.g. ``top1_acc`` <-
  ``final_eval_top1`` (final epoch, not the best), ``standard_acc`` <- ``final_eval_clean_top1``,
  ``attacked_acc`` <- ``final_eval_robust_top1`` (the paper's PGD-10); beside the attacked cell, our AutoAttack
  robust accuracy (``final_eval_autoattack_top1``, not in the paper);
- optimizer: the catalogue's ``columns`` say which of our optimizers fill a paper column: P1/P2's "Adam" is our
  ``adamw`` where a row has adamw runs, else ``adam`` (the ICLR version labels its ImageNet baseline AdamW,
  clovaai/AdamP#10); P4a's Adam is torch Adam, our ``adam``.

A cell whose runs stepped with different optimizer forms (``optimizer_forms``: the fused C++ kernels, the
multi-tensor or the reference form differ by a few ulp per step), across its seeds or across the segments of one
run, is ``forms_mixed``; runs whose record does not name its forms are left out of that judgement.

Records the collector left out (duplicate seed, short run, scale mismatch) are counted per cell
(``n_left_out``), never averaged. Each gain carries its Welch 95% interval, the smallest gain its seeds could
detect and the seeds per arm needed to detect the paper's printed gain (``stats``); own tables take their
catalogue ``reference_gain`` (P1's ResNet18 gain of the same pair) as that target.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from adamp_repro import catalogue
from adamp_repro.catalogue import DEFAULT_METRICS
from adamp_repro.config import SCALES
from adamp_repro.results.collect import LEFT_OUT_COLUMNS, RUN_COLUMNS
from adamp_repro.results.gains import GAIN_COLUMNS, paired_gains, paper_gain_range
from adamp_repro.tracking.schema import STUDY

# Gains live in ``gains``; their names stay importable from here, where a table's numbers are assembled.
__all__ = ["GAIN_COLUMNS", "Comparison", "compare_table", "paper_gain_range"]

# The summary key of the paper's PGD-10 accuracy (``attacked_acc``), which our AutoAttack is set beside.
ROBUST_KEY = "final_eval_robust_top1"
# ``epoch1_*``: the norm after the first epoch (``at_init_*``: before the first step).
MECHANISM_KEYS = ("epoch1_mean_weight_norm", "final_mean_weight_norm", "final_effective_step_size")
# Our AutoAttack robust accuracy, set beside the PGD-10 ("attacked_acc") cell; the paper has no such number.
AUTOATTACK_KEY = "final_eval_autoattack_top1"
# PGD-10 accuracy on the samples AutoAttack attacked (it may run on a subset of the test set).
AUTOATTACK_PGD_KEY = "final_eval_autoattack_subset_robust_top1"
# PGD-10 minus AutoAttack (accuracy points, mean over the runs that report both) above which a table says the
# paper's PGD-10 (sign steps, no random start at evaluation) overstates robustness there.
AUTOATTACK_GAP_POINTS = 5.0
# Own tables of the paper's ResNet-18 analysis (``analysis: true`` in the catalogue): their curves and the
# paper's readings are drawn by results/analysis.py (results/figures/analysis_<table>_<scale>.*).
ANALYSIS_TABLES = tuple(t.table_id for t in catalogue.load().tables if t.analysis)

CELL_COLUMNS = (
    "table",
    "scale",
    "dataset_label",
    "row_id",
    "block",
    "model",
    "dataset",
    "optimizer",
    "our_optimizer",
    "metric",
    "summary_key",
    "paper",
    "paper_printed",
    "tolerance",
    "n_seeds",
    "ours_mean",
    "ours_std",
    "ours_min",
    "ours_max",
    "diff",
    "within_tolerance",
    "epoch1_mean_weight_norm",
    "final_mean_weight_norm",
    "final_effective_step_size",
    "seeds",
    "values",
    "run_dirs",
    "n_code_changed",
    "code_changed_runs",
    "optimizer_forms",
    "forms_mixed",
    "n_left_out",
    "left_out_runs",
    "autoattack_mean",
    "autoattack_std",
    "autoattack_n",
    "pgd_minus_autoattack",
)


# A table's rows before our runs fill them: the printed row (label columns), or the runs' own labels.
TEMPLATE_COLUMNS = ("row_id", "block", "model", "dataset", "optimizer", "metric")
TEMPLATE_COLUMNS += ("paper", "paper_printed", "tolerance")


@dataclass
class Comparison:
    """The numeric content of one table: cells, paired gains, and notes about the runs placed in it."""

    table_id: str
    cells: pd.DataFrame
    gains: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    # The table's completed records left out of the means (``collect.LEFT_OUT_COLUMNS``).
    left_out: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(LEFT_OUT_COLUMNS)))


def ordered_scales(scales: Sequence[str]) -> list[str]:
    known = [s for s in SCALES if s in scales]
    return known + sorted(set(scales) - set(SCALES))


def compare_table(
    table_id: str, runs: pd.DataFrame, paper: pd.DataFrame, left_out: pd.DataFrame | None = None
) -> Comparison:
    """Cells and gains of one table (a paper table id such as ``P1`` or an own one such as ``mini``).

    ``left_out``: the completed records the collector did not count (``collect.read_records``); the table
    counts and lists its own among them, and never averages them.
    """
    notes: list[str] = []
    if left_out is None:
        left_out = pd.DataFrame(columns=list(LEFT_OUT_COLUMNS))
    tagged = pd.concat([runs[["table_id", "row_id"]], left_out[["table_id", "row_id"]]])
    table_runs = _runs_of_table(table_id, runs, notes, tagged)
    every_left_out = _runs_of_table(table_id, left_out, [], tagged)
    # A tuning study's records are not doubtful records of a cell: one note names them, no cell counts them.
    study_runs = every_left_out[every_left_out["left_out_kind"] == "study"]
    table_left_out = every_left_out[every_left_out["left_out_kind"] != "study"]
    template = _row_template(table_id, pd.concat([table_runs, table_left_out[list(RUN_COLUMNS)]]), paper)
    present = [*table_runs["scale"].unique(), *table_left_out["scale"].unique()]
    scales = ordered_scales(sorted(set(present))) or [None]
    cells, used = [], set()
    for scale in scales:
        scale_runs = table_runs[table_runs["scale"] == scale]
        scale_left_out = table_left_out[table_left_out["scale"] == scale]
        for row_id, group in template.groupby("row_id", sort=False):
            group_runs = scale_runs[scale_runs["row_id"] == row_id]
            group_left_out = scale_left_out[scale_left_out["row_id"] == row_id]
            for row in group.to_dict("records"):
                cells.append(_cell(table_id, scale, row, group_runs, group_left_out, used, notes))
    cells_frame = pd.DataFrame(cells, columns=[*CELL_COLUMNS, "_values"])
    unplaced = sorted(set(table_runs["run_dir"]) - used)
    if unplaced:
        notes.append(
            f"{len(unplaced)} completed run(s) of this table are not shown (no row of the catalogue's `rows` "
            "names their table_block/table_model, or another optimizer fills their column, e.g. adamw before "
            f"adam): {', '.join(unplaced)}"
        )
    if len(table_left_out):
        notes.append(
            f"{len(table_left_out)} completed record(s) of this table left out of the means (a table does not "
            "guess which of two records of a seed is right, nor count a short or misfiled run): "
            + "; ".join(f"`{r.run_dir}`: {r.left_out_detail}" for r in table_left_out.itertuples())
        )
    for name, group in study_runs.groupby(STUDY, sort=True):
        notes.append(
            f"{len(group)} record(s) of tuning study `{name}` trained this table's experiment; they are its "
            f"trials and confirmation runs, reported on the study's own page (`study_{name}.md`), never in "
            "these cells."
        )
    changed = sorted(set(table_runs.loc[table_runs["code_changed_on_resume"], "run_dir"]) & used)
    if changed:
        notes.append(
            f"† {len(changed)} counted record(s) resumed after a change to `src/` (summary "
            f"`code_changed_on_resume`: their epochs come from more than one version of the code): "
            + ", ".join(f"`{d}`" for d in changed)
        )
    mixed = [c for c in cells if c["forms_mixed"]]
    if mixed:
        notes.append(
            f"‡ {len(mixed)} cell(s) average runs that stepped with different optimizer forms (summary "
            "`optimizer_forms`: the forms differ by a few ulp per step, which a run can turn into points): "
            + "; ".join(
                f"{c['block']}/{c['model']}/{c['optimizer']} at scale {c['scale']}: {c['optimizer_forms']}"
                for c in mixed
            )
        )
    gains = paired_gains(table_id, cells_frame, paper)
    return Comparison(table_id, cells_frame, gains, notes, table_left_out.reset_index(drop=True))


def _runs_of_table(table_id: str, runs: pd.DataFrame, notes: list[str], tagged: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``runs`` placed in ``table_id``, with borrowed rows that no record of ``tagged`` claims."""
    own = runs[runs["table_id"] == table_id].copy()
    claimed = set(tagged.loc[tagged["table_id"] == table_id, "row_id"])
    entry = catalogue.table(table_id)
    for row_id, (src_table, src_row) in (entry.borrow if entry is not None else {}).items():
        if row_id in claimed:
            continue
        borrowed = runs[(runs["table_id"] == src_table) & (runs["row_id"] == src_row)].copy()
        if len(borrowed):
            borrowed["row_id"] = row_id
            block, model = catalogue.row_labels(src_table, src_row)
            notes.append(
                f"Row {row_id!r} is filled from {src_table} {model} runs (row {src_row!r}; no run of "
                f"{table_id} is placed in it; the paper prints identical values for both)."
            )
            own = pd.concat([own, borrowed], ignore_index=True)
    return own


def _row_template(table_id: str, table_runs: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """The rows a table shows, in display order, with the paper's value (NaN for own tables)."""
    entry = catalogue.table(table_id)
    if entry is not None and entry.is_paper:
        rows = paper[paper["table"] == table_id]
        printed = {"value": "paper", "value_printed": "paper_printed"}
        return rows.rename(columns=printed)[list(TEMPLATE_COLUMNS)].reset_index(drop=True)
    fixed = list(entry.metrics) if entry is not None and entry.metrics else None
    metrics = fixed or [m for m, key in DEFAULT_METRICS.items() if table_runs[key].notna().any()]
    present = set(table_runs["optimizer"])
    optimizers = catalogue.display_order(present)
    placed = table_runs[table_runs["row_id"].notna()]
    groups = placed[["row_id", "table_block", "table_model", "dataset"]].drop_duplicates("row_id")
    # A row shows the optimizers that have runs in it (the analysis table runs SGDP only with momentum).
    ran = placed.groupby("row_id")["optimizer"].agg(set)
    rows = []
    for g in groups.sort_values(["table_block", "table_model"]).itertuples():
        pairs = [(m, o) for m in metrics or ["top1_acc"] for o in optimizers]
        if (
            fixed and len(fixed) > 1
        ):  # optimizer by optimizer, each with its metrics, as the paper prints them
            pairs = [(m, o) for o in optimizers for m in metrics]
        rows += [
            {
                "row_id": g.row_id,
                "block": g.table_block,
                "model": g.table_model,
                "dataset": g.dataset,
                "optimizer": catalogue.display_label(o),
                "metric": m,
                "paper": math.nan,
                "paper_printed": "",
                "tolerance": math.nan,
            }
            for m, o in pairs
            if o in ran[g.row_id]
        ]
    columns = list(TEMPLATE_COLUMNS)
    return pd.DataFrame(rows, columns=columns)


def _our_optimizer(table_id: str, label: str, group_runs: pd.DataFrame, group_left_out: pd.DataFrame) -> str:
    entry = catalogue.table(table_id)
    if entry is None or not entry.is_paper:
        return catalogue.optimizer_of_label(label)
    candidates = entry.optimizers_for_column(label)
    # Counted runs choose the column's optimizer; left-out records only name it for a column with none.
    for present in (set(group_runs["optimizer"]), set(group_left_out["optimizer"])):
        chosen = next((c for c in candidates if c in present), None)
        if chosen is not None:
            return chosen
    return candidates[0]


def _cell(table_id, scale, row, group_runs, group_left_out, used, notes) -> dict:
    our_optimizer = _our_optimizer(table_id, row["optimizer"], group_runs, group_left_out)
    key = _summary_key(table_id, row["metric"])
    runs = group_runs[group_runs["optimizer"] == our_optimizer].sort_values("run_dir")
    # A run counts for a metric only if it reports it; a metric we cannot map (P3's AP, ...) has no runs.
    runs = runs[runs[key].notna()] if key is not None else runs.iloc[0:0]
    if runs["seed"].duplicated().any():  # collect leaves duplicates out; a frame built elsewhere may not
        raise ValueError(f"Duplicate seeds in one cell of {table_id}: {', '.join(runs['run_dir'])}")
    left_out = group_left_out[group_left_out["optimizer"] == our_optimizer].sort_values("run_dir")
    used.update(runs["run_dir"])
    changed = runs.loc[runs["code_changed_on_resume"], "run_dir"]
    forms = sorted(set(runs["optimizer_forms"].dropna()))
    values = [float(v) for v in runs[key]] if key is not None else []
    labels = sorted(set(runs["dataset_label"].dropna()))
    if len(labels) > 1:
        notes.append(
            f"Mixed dataset labels in one cell ({row['block']}/{row['model']}/{row['optimizer']}, "
            f"scale {scale}): {labels}"
        )
    mean = float(np.mean(values)) if values else math.nan
    std = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
    diff = mean - row["paper"]
    within = pd.NA
    if scale == "paper" and not (math.isnan(diff) or math.isnan(row["tolerance"])):
        within = bool(abs(diff) <= row["tolerance"])
    mechanism = {k: float(runs[k].mean()) if runs[k].notna().any() else math.nan for k in MECHANISM_KEYS}
    return {
        "table": table_id,
        "scale": scale,
        "dataset_label": "; ".join(labels) or None,
        **row,
        "our_optimizer": our_optimizer if values else None,
        "summary_key": key,
        "n_seeds": len(values),
        "ours_mean": mean,
        "ours_std": std,
        "ours_min": min(values, default=math.nan),
        "ours_max": max(values, default=math.nan),
        "diff": diff,
        "within_tolerance": within,
        **mechanism,
        "seeds": ";".join(str(int(s)) for s in runs["seed"]),
        "values": ";".join(repr(v) for v in values),
        "run_dirs": ";".join(runs["run_dir"]),
        "n_code_changed": len(changed),
        "code_changed_runs": ";".join(changed),
        # Each run's forms (segments joined by "; "), distinct ones joined by " | "; runs that do not say are out.
        "optimizer_forms": " | ".join(forms),
        "forms_mixed": len(forms) > 1 or bool(runs["optimizer_forms_mixed"].any()),
        "n_left_out": len(left_out),
        "left_out_runs": ";".join(left_out["run_dir"]),
        **_autoattack(row["metric"], runs),
        "_values": values,
    }


def _summary_key(table_id: str, metric: str) -> str | None:
    """The summary key a metric of the table reads (the catalogue's ``metrics``); None: not one we measure."""
    entry = catalogue.table(table_id)
    return (entry.metrics if entry is not None else DEFAULT_METRICS).get(metric)


def _autoattack(metric: str, runs: pd.DataFrame) -> dict:
    """Our AutoAttack accuracy beside a PGD-10 cell (same runs), and PGD-10 − AutoAttack per run, averaged:
    sample for sample where the record has PGD-10 on AutoAttack's samples, else against the whole test set."""
    values = runs[AUTOATTACK_KEY].dropna() if metric == "attacked_acc" else runs[AUTOATTACK_KEY].iloc[0:0]
    both = runs.loc[values.index]
    pgd = both[AUTOATTACK_PGD_KEY].fillna(both[ROBUST_KEY])
    gap = pgd - both[AUTOATTACK_KEY]
    return {
        "autoattack_mean": float(values.mean()) if len(values) else math.nan,
        "autoattack_std": float(values.std(ddof=1)) if len(values) > 1 else math.nan,
        "autoattack_n": len(values),
        "pgd_minus_autoattack": float(gap.mean()) if len(gap) else math.nan,
    }
