"""Paired gains of a table's cells: the proposed optimizer minus its baseline, with the seed-noise test, its
95% interval and power (``stats``), set beside the gain the paper prints for the same pair. A gain is always
proposed minus baseline in the metric's unit; whether a negative gain is the better one (a perplexity) is the
metric's direction (``tracking.schema.metric_direction``), the expected sign of an own table's gain.

The pairs, and what each gain is set beside, come from the catalogue (``configs/tables.yaml``). The target of the
seeds-needed figure: a paper table's own printed gain; a proxy table's (``proxy_of``) printed gain of the paper
row it stands in for; any other own table's ``reference_gain`` (P1's ResNet18 row of the same pair). Our AdamW stands for the paper's ImageNet "Adam" column; in P4a the paper's Adam is torch Adam
(coupled L2), so the P4a proxy pairs our ``adam`` with AdamP, and its AdamW control arm has no paper column.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd

from adamp_repro import catalogue
from adamp_repro.catalogue import DEFAULT_PAIRS, DEFAULT_REFERENCE, Table
from adamp_repro.results.stats import detectable_gain, seeds_needed, welch_test
from adamp_repro.tracking.schema import metric_direction

# Our labels -> the paper's ImageNet columns (the ICLR version labels its ImageNet Adam baseline AdamW).
AS_PAPER = {"AdamW": "Adam"}
GAIN_COLUMNS = (
    "table",
    "scale",
    "dataset_label",
    "row_id",
    "block",
    "model",
    "dataset",
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
    "ci_low",
    "ci_high",
    "detectable_gain",
    "target_gain",
    "target_source",
    "seeds_needed",
)


def paired_gains(table_id: str, cells: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """One row per (scale, row, metric) and compared pair of ``cells`` (``compare.CELL_COLUMNS`` with
    the per-seed ``_values``), columns ``GAIN_COLUMNS``."""
    rows = []
    entry = catalogue.table(table_id)
    is_paper = entry is not None and entry.is_paper
    proxy = entry.proxy if entry is not None else None
    for (scale, row_id, block, model, dataset, metric), group in cells.groupby(
        ["scale", "row_id", "block", "model", "dataset", "metric"], sort=False, dropna=False
    ):
        by_label = {r["optimizer"]: r for r in group.to_dict("records")}
        for baseline, proposed in pairs_for(entry, by_label):
            a, b = by_label[baseline], by_label[proposed]
            result = welch_test(a["_values"], b["_values"])
            # Printed values carry at most 2 decimals: drop the float noise of their difference (0.57, not 0.5700..074).
            paper_gain = (
                _proxy_gain(proxy, row_id, metric, baseline, proposed, paper)
                if proxy is not None
                else round(b["paper"] - a["paper"], 10)
            )
            # Own tables: the paper puts the projected optimizer ahead in every row, i.e. a gain of the sign
            # that is better for the metric (negative for a perplexity: tracking.schema.metric_direction).
            own_sign = float(metric_direction(metric))
            expected = float(np.sign(paper_gain)) if not math.isnan(paper_gain) else own_sign
            if (is_paper or proxy is not None) and math.isnan(paper_gain):
                expected = math.nan  # no printed counterpart: no sign to agree with
            agrees = (
                pd.NA
                if math.isnan(result.gain) or math.isnan(expected)
                else bool(np.sign(result.gain) == expected)
            )
            beyond = result.beyond_noise
            target, source = _target_gain(entry, table_id, baseline, proposed, paper_gain, paper)
            rows.append(
                {
                    "table": table_id,
                    "scale": scale,
                    "dataset_label": _first_text(b["dataset_label"], a["dataset_label"]),
                    "row_id": row_id,
                    "block": block,
                    "model": model,
                    "dataset": dataset,
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
                    "ci_low": result.ci_low,
                    "ci_high": result.ci_high,
                    "detectable_gain": detectable_gain(result),
                    "target_gain": target,
                    "target_source": source,
                    "seeds_needed": seeds_needed(result, target),
                }
            )
    return pd.DataFrame(rows, columns=list(GAIN_COLUMNS))


def _target_gain(
    entry: Table | None, table_id: str, baseline: str, proposed: str, paper_gain: float, paper: pd.DataFrame
) -> tuple[float, str | None]:
    """The printed gain the seeds-needed figure aims at, and where it is printed.

    A paper table or a proxy aims at its own paper gain; any other own table at its reference gain's row."""
    if entry is not None and (entry.is_paper or entry.proxy is not None):
        where = table_id if entry.is_paper else entry.proxy.label
        return paper_gain, (None if math.isnan(paper_gain) else where)
    ref_table, ref_row = entry.reference_gain if entry is not None else DEFAULT_REFERENCE
    gain = _printed_gain(paper, ref_table, ref_row, baseline, proposed)
    return gain, (None if math.isnan(gain) else f"{ref_table} {catalogue.row_labels(ref_table, ref_row)[1]}")


def _proxy_gain(proxy, row_id: str, metric: str, baseline: str, proposed: str, paper: pd.DataFrame) -> float:
    """The paper's printed gain of ``proposed`` over ``baseline`` for ``metric`` in the paper row our row
    ``row_id`` stands in for (``proxy_of`` in the catalogue); NaN when the paper has no such pair."""
    paper_row = proxy.paper_row(row_id)
    return _printed_gain(paper, proxy.table, paper_row, baseline, proposed, metric, proxy.as_paper)


def _printed_gain(
    paper: pd.DataFrame,
    paper_table: str,
    row_id: str,
    baseline: str,
    proposed: str,
    metric: str = "top1_acc",
    as_paper: Mapping[str, str] = AS_PAPER,
) -> float:
    """Printed ``proposed`` minus ``baseline`` in one paper row (by id); ``as_paper`` maps our labels to the paper's
    columns (by default our AdamW read as the paper's Adam). NaN when either has no printed column."""
    rows = paper[(paper["table"] == paper_table) & (paper["row_id"] == row_id) & (paper["metric"] == metric)]
    values = dict(zip(rows["optimizer"], rows["value"]))
    a, b = values.get(as_paper.get(baseline, baseline)), values.get(as_paper.get(proposed, proposed))
    return math.nan if a is None or b is None else round(float(b) - float(a), 10)


def _first_text(*values) -> str | None:
    """The first non-missing label (missing strings come back from pandas as None or NaN)."""
    return next((v for v in values if isinstance(v, str) and v), None)


def pairs_for(entry: Table | None, by_label: Iterable[str]) -> list[tuple[str, str]]:
    """The catalogue's pairs of the table that have both columns (``by_label``: the column labels with runs); a
    table it does not list compares the default pairs, AdamP with AdamW where it has AdamW runs (as the paper's
    ImageNet "Adam" column does)."""
    by_label = set(by_label)
    if entry is not None:
        return [(a, b) for a, b in entry.pairs if a in by_label and b in by_label]
    pairs = [(a, b) for a, b in DEFAULT_PAIRS if a in by_label and b in by_label]
    if ("AdamW", "AdamP") in pairs:
        pairs = [p for p in pairs if p != ("Adam", "AdamP")]
    return pairs


def paper_gain_range(paper: pd.DataFrame, table_id: str = "P1") -> tuple[float, float]:
    """Smallest and largest printed gain (difference of printed values) of the paper's pairs in a table."""
    rows = paper[paper["table"] == table_id]
    entry = catalogue.table(table_id)
    pairs = entry.pairs if entry is not None else DEFAULT_PAIRS
    gains = []
    for _, group in rows.groupby(["row_id", "metric"], sort=False):
        values = dict(zip(group["optimizer"], group["value"]))
        gains += [values[b] - values[a] for a, b in pairs if a in values and b in values]
    return (min(gains), max(gains)) if gains else (math.nan, math.nan)
