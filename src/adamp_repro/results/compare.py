"""Join run records with the paper's numbers: per-cell statistics over seeds and paired gains.

Everything here is numeric (pandas frames of floats); rounding happens only when ``tables`` renders.

A *cell* is (table, scale, block, model, optimizer, metric). Our value for a cell is the mean and sample
standard deviation over seeds of one summary key of the completed runs placed in it:

- placement: ``summary.table_id`` == table, ``table_block`` / ``table_model`` equal to the paper's block /
  model (case-insensitive, a parenthesised remark such as "(inferred)" ignored), ``scale`` == scale;
- metric: ``top1_acc`` <- ``final_eval_top1`` (final epoch, not the best), ``standard_acc`` <-
  ``final_eval_clean_top1``, ``attacked_acc`` <- ``final_eval_robust_top1``;
- optimizer: the paper's "Adam" baseline is our ``adamw`` where a row has adamw runs, else ``adam`` (the ICLR
  version labels its ImageNet baseline AdamW, clovaai/AdamP#10).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from adamp_repro.results.reference import PAPER_TABLES
from adamp_repro.results.stats import welch_test

SCALE_ORDER = ("smoke", "mini", "paper")
OPTIMIZER_ORDER = ("sgd", "sgdp", "adam", "adamw", "adamp")
OPTIMIZER_LABELS = {"sgd": "SGD", "sgdp": "SGDP", "adam": "Adam", "adamw": "AdamW", "adamp": "AdamP"}
# Paper column label -> our optimizers that may fill it, the first one with runs in the row wins.
PAPER_OPTIMIZERS = {
    "SGD": ("sgd",),
    "SGDP": ("sgdp",),
    "Adam": ("adamw", "adam"),
    "AdamW": ("adamw",),
    "AdamP": ("adamp",),
}
# (baseline, proposed) pairs the paper compares; an own table's "Adam" pair uses AdamW when it has it.
PAIRS = (("SGD", "SGDP"), ("AdamW", "AdamP"), ("Adam", "AdamP"))
METRIC_KEYS = {
    "top1_acc": "final_eval_top1",
    "standard_acc": "final_eval_clean_top1",
    "attacked_acc": "final_eval_robust_top1",
}
MECHANISM_KEYS = ("initial_mean_weight_norm", "final_mean_weight_norm", "final_effective_step_size")
# Our own tables: no printed counterpart. Title and the dataset they are about.
OWN_TABLES = {
    "mini": "Quick run on the embedded CIFAR-10 subset (our own table; the default `make reproduce-table`)",
    "cifar": "CIFAR classification (our own table: no printed CIFAR classification table could be read)",
    "imagenette": "Imagenette (96 px), not ImageNet: classification with P1's recipe (our own table; a proxy "
    "of P1's ResNet18 row)",
    "imagenette_analysis": "Imagenette ResNet-18 analysis: vanilla SGD, momentum SGD and SGDP under step decay "
    "(our own table; proxy of the paper's ImageNet analysis figures, not ImageNet)",
}
# Own tables of the paper's ResNet-18 analysis: their curves and the paper's readings are drawn by
# results/analysis.py (results/figures/analysis_<table>_<scale>.*).
ANALYSIS_TABLES = ("imagenette_analysis",)
# Own tables that stand in for a paper table on other data: their paired gains are set beside the paper's
# printed gains of the same model in that table (and signs are judged against them). Own table -> (paper
# table, block). The paper's "Adam" column stands for our AdamW (PAPER_OPTIMIZERS), so AdamP − AdamW is
# compared with the paper's AdamP − Adam.
PROXY_TABLES = {"imagenette": ("P1", "imagenet")}
# P2's "with weight decay" column is P1's ResNet18 row (identical printed values), so P1 ResNet18 runs
# fill it when no run is tagged P2/with_wd: (table, block) -> (table, block, model) to borrow from.
BORROWED_ROWS = {("P2", "with_wd"): ("P1", "imagenet", "resnet18")}

CELL_COLUMNS = (
    "table",
    "scale",
    "dataset_label",
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
    "initial_mean_weight_norm",
    "final_mean_weight_norm",
    "final_effective_step_size",
    "seeds",
    "values",
    "run_dirs",
)
GAIN_COLUMNS = (
    "table",
    "scale",
    "dataset_label",
    "block",
    "model",
    "metric",
    "baseline",
    "proposed",
    "our_baseline",
    "our_proposed",
    "paper_gain",
    "expected_sign",
    "ours_gain",
    "n_baseline",
    "n_proposed",
    "sign_agrees",
    "test",
    "t_stat",
    "dof",
    "p_value",
    "beyond_noise",
)


@dataclass
class Comparison:
    """The numeric content of one table: cells, paired gains, and notes about the runs placed in it."""

    table_id: str
    cells: pd.DataFrame
    gains: pd.DataFrame
    notes: list[str] = field(default_factory=list)


def normalise(label: object) -> str:
    """Key for matching a run's ``table_block`` / ``table_model`` to the paper's row labels."""
    text = re.sub(r"\([^)]*\)", " ", str(label)).lower()
    return " ".join(text.split())


def ordered_scales(scales: Sequence[str]) -> list[str]:
    known = [s for s in SCALE_ORDER if s in scales]
    return known + sorted(set(scales) - set(SCALE_ORDER))


def compare_table(table_id: str, runs: pd.DataFrame, paper: pd.DataFrame) -> Comparison:
    """Cells and gains of one table (a paper table id such as ``P1`` or an own one such as ``mini``)."""
    notes: list[str] = []
    table_runs = _runs_of_table(table_id, runs, notes)
    template = _row_template(table_id, table_runs, paper)
    scales = ordered_scales(sorted(table_runs["scale"].unique())) or [None]
    cells, used = [], set()
    for scale in scales:
        scale_runs = table_runs[table_runs["scale"] == scale]
        for group_key, group in template.groupby(["block", "model"], sort=False):
            group_runs = _match(scale_runs, *group_key)
            for row in group.to_dict("records"):
                cells.append(_cell(table_id, scale, row, group_runs, used, notes))
    cells_frame = pd.DataFrame(cells, columns=[*CELL_COLUMNS, "_values"])
    unplaced = sorted(set(table_runs["run_dir"]) - used)
    if unplaced:
        notes.append(
            f"{len(unplaced)} completed run(s) of this table are not shown (no row matches their block/model, "
            f"or another optimizer fills their column, e.g. adamw before adam): {', '.join(unplaced)}"
        )
    gains = _gains(table_id, cells_frame, paper)
    return Comparison(table_id, cells_frame, gains, notes)


def _runs_of_table(table_id: str, runs: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    own = runs[runs["table_id"] == table_id].copy()
    for (table, block), (src_table, src_block, src_model) in BORROWED_ROWS.items():
        if table != table_id or (own["table_block"].map(normalise) == normalise(block)).any():
            continue
        borrowed = _match(runs[runs["table_id"] == src_table], src_block, src_model).copy()
        if len(borrowed):
            borrowed["table_block"] = block
            notes.append(
                f"Block {block!r} is filled from {src_table} {src_model} runs (no run is tagged "
                f"{table}/{block}; the paper prints identical values for both)."
            )
            own = pd.concat([own, borrowed], ignore_index=True)
    return own


def _match(runs: pd.DataFrame, block: str, model: str) -> pd.DataFrame:
    keep = (runs["table_block"].map(normalise) == normalise(block)) & (
        runs["table_model"].map(normalise) == normalise(model)
    )
    return runs[keep]


def _row_template(table_id: str, table_runs: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """The rows a table shows, in display order, with the paper's value (NaN for own tables)."""
    if table_id in PAPER_TABLES:
        rows = paper[paper["table"] == table_id]
        return pd.DataFrame(
            {
                "block": rows["block"],
                "model": rows["model"],
                "dataset": rows["dataset"],
                "optimizer": rows["optimizer"],
                "metric": rows["metric"],
                "paper": rows["value"],
                "paper_printed": rows["value_printed"],
                "tolerance": rows["tolerance"],
            }
        ).reset_index(drop=True)
    metrics = [m for m in ("top1_acc", "attacked_acc") if table_runs[METRIC_KEYS[m]].notna().any()]
    present = set(table_runs["optimizer"])
    optimizers = [o for o in OPTIMIZER_ORDER if o in present] + sorted(present - set(OPTIMIZER_ORDER))
    groups = table_runs[["table_block", "table_model", "dataset"]].drop_duplicates(
        ["table_block", "table_model"]
    )
    # A row shows the optimizers that have runs in it (the analysis table runs SGDP only with momentum).
    ran = table_runs.groupby(["table_block", "table_model"])["optimizer"].agg(set)
    rows = [
        {
            "block": g.table_block,
            "model": g.table_model,
            "dataset": g.dataset,
            "optimizer": OPTIMIZER_LABELS.get(o, o),
            "metric": m,
            "paper": math.nan,
            "paper_printed": "",
            "tolerance": math.nan,
        }
        for g in groups.sort_values(["table_block", "table_model"]).itertuples()
        for m in metrics or ["top1_acc"]
        for o in optimizers
        if o in ran[(g.table_block, g.table_model)]
    ]
    columns = ["block", "model", "dataset", "optimizer", "metric", "paper", "paper_printed", "tolerance"]
    return pd.DataFrame(rows, columns=columns)


def _our_optimizer(table_id: str, label: str, group_runs: pd.DataFrame) -> str:
    if table_id not in PAPER_TABLES:
        return next((k for k, v in OPTIMIZER_LABELS.items() if v == label), label)
    candidates = PAPER_OPTIMIZERS.get(label, (label.lower(),))
    present = set(group_runs["optimizer"])
    return next((c for c in candidates if c in present), candidates[0])


def _cell(table_id, scale, row, group_runs, used, notes) -> dict:
    our_optimizer = _our_optimizer(table_id, row["optimizer"], group_runs)
    key = METRIC_KEYS.get(row["metric"])
    runs = group_runs[group_runs["optimizer"] == our_optimizer].sort_values("run_dir")
    # A run counts for a metric only if it reports it; a metric we cannot map (P3's AP, ...) has no runs.
    runs = runs[runs[key].notna()] if key is not None else runs.iloc[0:0]
    duplicated = runs["seed"].duplicated(keep="first")
    if duplicated.any():
        notes.append(
            f"Duplicate seed records ignored (first by path kept): {', '.join(runs[duplicated].run_dir)}"
        )
        runs = runs[~duplicated]
    used.update(runs["run_dir"])
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
        "_values": values,
    }


def _gains(table_id: str, cells: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    rows = []
    own_sign = 1.0  # own tables: the paper puts the projected optimizer ahead in every P1 row
    for (scale, block, model, metric), group in cells.groupby(
        ["scale", "block", "model", "metric"], sort=False, dropna=False
    ):
        by_label = {r["optimizer"]: r for r in group.to_dict("records")}
        for baseline, proposed in _pairs_for(table_id, by_label):
            a, b = by_label[baseline], by_label[proposed]
            result = welch_test(a["_values"], b["_values"])
            # Printed values carry at most 2 decimals: drop the float noise of their difference (0.57, not 0.5700..074).
            paper_gain = (
                _proxy_gain(table_id, model, baseline, proposed, paper)
                if table_id in PROXY_TABLES
                else round(b["paper"] - a["paper"], 10)
            )
            expected = float(np.sign(paper_gain)) if not math.isnan(paper_gain) else own_sign
            if table_id in PAPER_TABLES and math.isnan(paper_gain):
                expected = math.nan
            agrees = (
                pd.NA
                if math.isnan(result.gain) or math.isnan(expected)
                else bool(np.sign(result.gain) == expected)
            )
            beyond = result.beyond_noise
            rows.append(
                {
                    "table": table_id,
                    "scale": scale,
                    "dataset_label": _first_text(b["dataset_label"], a["dataset_label"]),
                    "block": block,
                    "model": model,
                    "metric": metric,
                    "baseline": baseline,
                    "proposed": proposed,
                    "our_baseline": a["our_optimizer"],
                    "our_proposed": b["our_optimizer"],
                    "paper_gain": paper_gain,
                    "expected_sign": expected,
                    "ours_gain": result.gain,
                    "n_baseline": a["n_seeds"],
                    "n_proposed": b["n_seeds"],
                    "sign_agrees": agrees,
                    "test": result.test,
                    "t_stat": result.t,
                    "dof": result.dof,
                    "p_value": result.p,
                    "beyond_noise": pd.NA if beyond is None else beyond,
                }
            )
    return pd.DataFrame(rows, columns=list(GAIN_COLUMNS))


def _proxy_gain(table_id: str, model: str, baseline: str, proposed: str, paper: pd.DataFrame) -> float:
    """The paper's printed gain of ``proposed`` over ``baseline`` for ``model`` in the table that
    ``table_id`` stands in for (``PROXY_TABLES``); NaN when the paper has no such row."""
    paper_table, block = PROXY_TABLES[table_id]
    rows = paper[
        (paper["table"] == paper_table)
        & (paper["block"].map(normalise) == normalise(block))
        & (paper["model"].map(normalise) == normalise(model))
        & (paper["metric"] == "top1_acc")
    ]
    values = dict(zip(rows["optimizer"], rows["value"]))
    as_paper = {"AdamW": "Adam"}
    a, b = values.get(as_paper.get(baseline, baseline)), values.get(as_paper.get(proposed, proposed))
    return math.nan if a is None or b is None else round(float(b) - float(a), 10)


def _first_text(*values) -> str | None:
    """The first non-missing label (missing strings come back from pandas as None or NaN)."""
    return next((v for v in values if isinstance(v, str) and v), None)


def _pairs_for(table_id: str, by_label: dict) -> list[tuple[str, str]]:
    pairs = [(a, b) for a, b in PAIRS if a in by_label and b in by_label]
    if table_id not in PAPER_TABLES and ("AdamW", "AdamP") in pairs:
        # An own table compares AdamP with AdamW when it has AdamW runs, as the paper's "Adam" column does.
        pairs = [p for p in pairs if p != ("Adam", "AdamP")]
    return pairs


def paper_gain_range(paper: pd.DataFrame, table_id: str = "P1") -> tuple[float, float]:
    """Smallest and largest printed gain (difference of printed values) of the paper's pairs in a table."""
    rows = paper[paper["table"] == table_id]
    gains = []
    for _, group in rows.groupby(["block", "model", "metric"], sort=False):
        values = dict(zip(group["optimizer"], group["value"]))
        gains += [values[b] - values[a] for a, b in PAIRS if a in values and b in values]
    return (min(gains), max(gains)) if gains else (math.nan, math.nan)
