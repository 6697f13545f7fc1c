"""Paired gains of a table's cells: the proposed optimizer minus its baseline, with the seed-noise test, its
95% interval and power (``stats``), set beside the gain the paper prints for the same pair.

The target of the seeds-needed figure: a paper table's own printed gain; a proxy table's (``PROXY_TABLES``)
printed gain of the same model in the table it stands in for; any other own table's ``REFERENCE_GAIN`` (P1's
ResNet18 row of the same pair). Our AdamW stands for the paper's "Adam" column throughout.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from adamp_repro.results.collect import placement_key
from adamp_repro.results.reference import PAPER_TABLES
from adamp_repro.results.stats import detectable_gain, seeds_needed, welch_test

# (baseline, proposed) pairs the paper compares; an own table's "Adam" pair uses AdamW when it has it.
PAIRS = (("SGD", "SGDP"), ("AdamW", "AdamP"), ("Adam", "AdamP"))
# The printed gain an own table (no paper counterpart) is powered against: P1's ResNet18 row of the same pair
# (SGDP − SGD +0.45, AdamP − Adam +0.40; AdamW stands for the paper's Adam). (table, block, model).
REFERENCE_GAIN = ("P1", "imagenet", "ResNet18")
# Own tables that stand in for a paper table on other data: their paired gains are set beside the paper's
# printed gains of the same model in that table (and signs are judged against them). Own table -> (paper
# table, block). The paper's "Adam" column stands for our AdamW (PAPER_OPTIMIZERS), so AdamP − AdamW is
# compared with the paper's AdamP − Adam.
PROXY_TABLES = {"imagenette": ("P1", "imagenet")}
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
    "ci_low",
    "ci_high",
    "detectable_gain",
    "target_gain",
    "target_source",
    "seeds_needed",
)


def paired_gains(table_id: str, cells: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """One row per (scale, block, model, metric) and compared pair of ``cells`` (``compare.CELL_COLUMNS`` with
    the per-seed ``_values``), columns ``GAIN_COLUMNS``."""
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
                _proxy_gain(table_id, model, metric, baseline, proposed, paper)
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
            target, source = _target_gain(table_id, model, baseline, proposed, paper_gain, paper)
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
    table_id: str, model: str, baseline: str, proposed: str, paper_gain: float, paper: pd.DataFrame
) -> tuple[float, str | None]:
    """The printed gain the seeds-needed figure aims at, and where it is printed.

    A paper table or a proxy aims at its own paper gain; any other own table at ``REFERENCE_GAIN``'s row."""
    if table_id in PAPER_TABLES or table_id in PROXY_TABLES:
        where = table_id if table_id in PAPER_TABLES else f"{PROXY_TABLES[table_id][0]} {model}"
        return paper_gain, (None if math.isnan(paper_gain) else where)
    ref_table, ref_block, ref_model = REFERENCE_GAIN
    gain = _printed_gain(paper, ref_table, ref_block, ref_model, baseline, proposed)
    return gain, (None if math.isnan(gain) else f"{ref_table} {ref_model}")


def _proxy_gain(
    table_id: str, model: str, metric: str, baseline: str, proposed: str, paper: pd.DataFrame
) -> float:
    """The paper's printed gain of ``proposed`` over ``baseline`` for ``model`` and ``metric`` in the table
    that ``table_id`` stands in for (``PROXY_TABLES``); NaN when the paper has no such row."""
    paper_table, block = PROXY_TABLES[table_id]
    return _printed_gain(paper, paper_table, block, model, baseline, proposed, metric)


def _printed_gain(
    paper: pd.DataFrame,
    paper_table: str,
    block: str,
    model: str,
    baseline: str,
    proposed: str,
    metric: str = "top1_acc",
) -> float:
    """Printed ``proposed`` minus ``baseline`` in one paper row (our AdamW read as the paper's Adam)."""
    rows = paper[
        (paper["table"] == paper_table)
        & (paper["block"].map(placement_key) == placement_key(block))
        & (paper["model"].map(placement_key) == placement_key(model))
        & (paper["metric"] == metric)
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
