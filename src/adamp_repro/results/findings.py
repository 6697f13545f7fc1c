"""A table's findings in words: each measured gap against seed noise and the power of its seeds, the
weight-norm mechanism, AutoAttack against PGD-10, the notes.

Kept apart from the grids (``tables``) because these sentences are what a reader of a small run needs most:
a gap that is not beyond seed noise is said to be so, and never printed as a bare winner.
"""

from __future__ import annotations

import math

import pandas as pd

from adamp_repro import catalogue
from adamp_repro.catalogue import DEFAULT_REFERENCE
from adamp_repro.results.compare import AUTOATTACK_GAP_POINTS, AUTOATTACK_KEY, AUTOATTACK_PGD_KEY
from adamp_repro.results.gains import pairs_for, paper_gain_range
from adamp_repro.results.stats import (
    ALPHA,
    MAX_SEEDS,
    NOT_APPLICABLE_ONE_SEED,
    POWER,
    POWER_DESCRIPTION,
    TEST_DESCRIPTION,
)
from adamp_repro.results.text import MISSING
from adamp_repro.tracking.schema import metric_direction

METRIC_LABELS = {
    "top1_acc": "top-1 (%)",
    "standard_acc": "standard acc (%)",
    "attacked_acc": "attacked acc, PGD-10 (%)",
    "perplexity": "test perplexity (lower is better)",
    "bits_per_char": "bits per character (lower is better)",
}
AUTOATTACK_LABEL = "AutoAttack (ours; not in the paper)"
BAR_LABELS = {
    "standard_acc": "clean",
    "attacked_acc": "PGD-10",
    "top1_acc": "top-1",
    "perplexity": "perplexity",
}
# A gap's unit: accuracies are percentages, so their differences are points; a perplexity or a bits-per-character
# difference is in the metric's own units.
METRIC_UNITS = {"perplexity": " in perplexity", "bits_per_char": " bits per character"}
METRIC_NOUNS = {"perplexity": "test perplexity", "bits_per_char": "bits per character"}
CODE_CHANGED_MARK = "†"
FORMS_MIXED_MARK = "‡"


def gap_unit(metric: str) -> str:
    """What a gap of ``metric`` is counted in, as text to follow the number: " points" for accuracies."""
    return METRIC_UNITS.get(metric, " points")


def gap_sentences(gains: pd.DataFrame, is_paper: bool, paper: pd.DataFrame, table_id: str = "") -> list[str]:
    """Each measured gap in words, saying plainly when it is not beyond seed noise; a proxy's gap is set beside
    the paper's printed gain of the row it stands in for."""
    sentences = []
    entry = catalogue.table(table_id)
    proxy = entry.proxy if entry is not None else None
    for r in gains.to_dict("records"):
        if math.isnan(r["ours_gain"]):
            continue
        where = " / ".join(str(r[c]) for c in ("model", "block") if r[c] not in ("-", ""))
        lead = (
            f"{r['proposed']} vs {r['baseline']} ({where}, {METRIC_LABELS.get(r['metric'], r['metric'])}): "
            f"{r['ours_gain']:+.2f}{gap_unit(r['metric'])}"
        )
        if proxy is not None:
            lead += f" ({_beside_paper(r, entry)})"
        if r["test"] == NOT_APPLICABLE_ONE_SEED:
            sentences.append(
                f"{lead} from a single seed on at least one side: no noise estimate, so the gap "
                "cannot be called either way."
            )
        elif r["beyond_noise"] is not pd.NA and bool(r["beyond_noise"]):
            sentences.append(f"{lead}, beyond seed noise (Welch p = {r['p_value']:.3f} < {ALPHA}).")
        else:
            sentences.append(
                f"{lead} is not beyond seed noise (Welch p = {r['p_value']:.3f} ≥ {ALPHA}, "
                f"{r['n_proposed']} vs {r['n_baseline']} seeds): this run cannot tell "
                f"{r['proposed']} and {r['baseline']} apart on {METRIC_NOUNS.get(r['metric'], 'accuracy')}."
            )
        if r["test"] != NOT_APPLICABLE_ONE_SEED:
            sentences.append(power_sentence(r))
    if sentences and not is_paper:
        scale_table = proxy.table if proxy is not None else "P1"
        low, high = paper_gain_range(paper, scale_table)
        what = "ImageNet gains (P1)" if scale_table == "P1" else f"gains in {scale_table}"
        metrics = set(gains["metric"])
        unit = " points" if all(metric_direction(m) > 0 for m in metrics) else " (in the paper's own metric)"
        sentences.append(
            f"For scale: the paper's {what} are {low:+.2f} to {high:+.2f}{unit}. A gap is called "
            "here only when the test finds it beyond seed noise; otherwise no winner is read from it."
        )
    return sentences


def _beside_paper(r: dict, entry: catalogue.Table) -> str:
    """The paper's printed gain of a proxy's pair and whether our sign agrees, or that it has none."""
    proxy = entry.proxy
    what = entry.pair_labels.get((r["baseline"], r["proposed"]))
    if math.isnan(r["paper_gain"]):
        return (f"{what}; " if what else "") + f"no paper counterpart: {proxy.table} prints no such pair"
    agrees = r["sign_agrees"]
    sign = "sign unknown" if agrees is pd.NA else ("sign agrees" if agrees else "sign disagrees")
    return f"the paper's {proxy.label}: {r['paper_gain']:+.2f}; {sign}"


def metric_sentences(table_id: str, part: pd.DataFrame, gains: pd.DataFrame) -> list[str]:
    """Per metric of a table with a trained bar (``trained_bar`` in the catalogue): the first pair's gain beside
    the paper's, whether it is beyond seed noise, and whether the better arm of the pair reached the bar."""
    entry = catalogue.table(table_id)
    bar, proxy = entry.trained_bar, entry.proxy
    baseline, proposed = entry.pairs[0]
    sentences, short = [], []
    for metric, needed in bar.items():
        label = METRIC_LABELS.get(metric, metric)
        arms = part[(part["metric"] == metric) & part["optimizer"].isin([baseline, proposed])]
        arms = arms[arms["n_seeds"] > 0]
        if arms.empty:
            sentences.append(f"{label}: no completed run of {baseline} or {proposed}.")
            short.append(metric)
            continue
        # The better arm by the metric's direction (the lower perplexity, the higher accuracy).
        sign = metric_direction(metric)
        best = arms.loc[(arms["ours_mean"] * sign).idxmax()]
        reached = sign * best["ours_mean"] >= sign * needed
        unit = "%" if sign > 0 else ""  # accuracies are percentages; a perplexity has no unit
        if not reached:
            short.append(metric)
        text = f"{label}: "
        gain = gains[
            (gains["metric"] == metric) & (gains["baseline"] == baseline) & (gains["proposed"] == proposed)
        ]
        if len(gain) and not math.isnan(gain.iloc[0]["ours_gain"]):
            g = gain.iloc[0].to_dict()
            text += f"{proposed} − {baseline} {g['ours_gain']:+.2f}{gap_unit(metric)}"
            text += f" ({_beside_paper(g, entry)})" if proxy is not None else ""
            if g["test"] == NOT_APPLICABLE_ONE_SEED:
                text += ", one seed on a side: no call on seed noise"
            elif g["beyond_noise"] is not pd.NA and bool(g["beyond_noise"]):
                text += f", beyond seed noise (Welch p = {g['p_value']:.3f} < {ALPHA})"
            else:
                text += f", not beyond seed noise (Welch p = {g['p_value']:.3f} ≥ {ALPHA})"
        else:
            text += f"no {proposed} − {baseline} gain (a side has no run)"
        text += (
            f"; the better arm, {best['optimizer']} at {best['ours_mean']:.2f}{unit}, "
            + ("reached" if reached else "did not reach")
            + f" the table's {needed:g}{unit} {BAR_LABELS.get(metric, metric)} bar."
        )
        sentences.append(text)
    bars = " and ".join(
        f"{v:g}{'%' if metric_direction(m) > 0 else ''} {BAR_LABELS.get(m, m)}" for m, v in bar.items()
    )
    if short:
        sentences.append(
            f"Not clearly trained: the better of {baseline} and {proposed} falls short of the table's bar ({bars}, "
            f"fixed in the protocol before any run) on {' and '.join(BAR_LABELS.get(m, m) for m in short)}, so these records do not test the "
            "paper's gain; the bar states a fact of the records and is not tuned to them."
        )
    else:
        sentences.append(
            f"Clearly trained by the table's bar ({bars}, fixed in the protocol before any run): the better of "
            f"{baseline} and {proposed} reached it on every metric."
        )
    return sentences


def power_sentence(r: dict) -> str:
    """The interval and power of one gain in words: inside noise or not, what these seeds could detect, and
    how many seeds the printed gain would take."""
    inside = r["ci_low"] <= 0.0 <= r["ci_high"]
    text = (
        f"{r['proposed']} − {r['baseline']}: 95% CI [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}] "
        + ("includes 0, so the gap is inside seed noise" if inside else "excludes 0")
        + f"; {r['n_proposed']} vs {r['n_baseline']} seeds with this spread detect (power {POWER}) a gain of "
        f"{r['detectable_gain']:.2f}{gap_unit(r['metric'])} or more"
    )
    target, needed = r["target_gain"], r["seeds_needed"]
    if isinstance(target, float) and not math.isnan(target):
        seeds = f"more than {MAX_SEEDS:,}" if math.isinf(needed) else f"{int(needed)}"
        text += (
            f"; detecting the printed {target:+.2f} ({r['target_source']}) would take {seeds} seeds per arm"
        )
    return text + "."


def autoattack_sentences(part: pd.DataFrame) -> list[str]:
    """Where our AutoAttack accuracy is far below our PGD-10 one, say that PGD-10 overstates robustness."""
    sentences = []
    far = part[part["pgd_minus_autoattack"] > AUTOATTACK_GAP_POINTS]
    for r in far.to_dict("records"):
        where = " / ".join(str(r[c]) for c in ("model", "block") if r[c] not in ("-", ""))
        sentences.append(
            f"{r['optimizer']} ({where}): AutoAttack robust accuracy {r['autoattack_mean']:.2f} is "
            f"{r['pgd_minus_autoattack']:.2f} points below PGD-10 (more than {AUTOATTACK_GAP_POINTS:g}; mean over "
            "seeds of each run's gap, on the same samples where recorded): the paper's PGD-10 (sign steps, no "
            "random start at evaluation) overstates robustness here."
        )
    return sentences


def mechanism_sentences(part: pd.DataFrame, pairs: list[tuple[str, str]] | None = None) -> list[str]:
    """The weight-norm effect in words, per row: what a small run shows reliably (paper Sec. 2, norm growth).

    ``pairs``: the (baseline, proposed) pairs to set side by side; default those of a table the catalogue does not
    list (``gains.pairs_for``)."""
    sentences = []
    for (_, block, model), group in part.groupby(["row_id", "block", "model"], sort=False):
        rows = group.drop_duplicates("optimizer")
        rows = rows[rows["epoch1_mean_weight_norm"].notna() & rows["final_mean_weight_norm"].notna()]
        where = " / ".join(str(x) for x in (model, block) if x not in ("-", ""))
        if rows.empty:
            sentences.append(
                f"{where}: no run recorded a norm of scale-invariant weights (older records without the "
                "diagnostics, or a network with no such weight: no weight feeds a normalisation layer), so the "
                f"mechanism columns are {MISSING}."
            )
            continue
        growth = {
            r.optimizer: r.final_mean_weight_norm / r.epoch1_mean_weight_norm - 1.0 for r in rows.itertuples()
        }
        text = (
            f"{where}: mean norm of the scale-invariant weights, end of epoch 1 → final (mean over seeds), changed by "
            + "; ".join(f"{opt} {g:+.1%}" for opt, g in growth.items())
            + "."
        )
        for base, prop in pairs or pairs_for(None, growth):
            if base in growth and prop in growth:
                word = "less" if growth[prop] < growth[base] else "not less"
                text += (
                    f" {prop}'s norm grew {word} than {base}'s ({growth[prop]:+.1%} vs {growth[base]:+.1%})."
                )
        sentences.append(text)
    return sentences


def table_notes(table_id: str, is_paper: bool, cells: pd.DataFrame) -> list[str]:
    entry = catalogue.table(table_id)
    proxy = entry.proxy if entry is not None else None
    keys = sorted(set(cells["summary_key"].dropna()))
    notes = [
        f"Ours: mean ± sample std (ddof 1) over seeds of {', '.join(f'`{k}`' for k in keys) or 'the final metric'} "
        "from each completed run's summary.json (final epoch, not the best); n = number of seeds; "
        f"{MISSING} = no completed run (never filled in).",
        f"Beyond seed noise: {TEST_DESCRIPTION}; with one seed on a side the test is `{NOT_APPLICABLE_ONE_SEED}`.",
    ]
    if is_paper:
        notes += [
            "Paper = the printed value; Diff = ours − paper; Paper gain = difference of the printed values "
            "(a printed gain may differ by 0.01 by rounding, see docs/paper.md §1).",
            "Band = ± the tolerance in `results/paper`: 2 × the binomial sampling SE of the paper's accuracy on "
            "the table's test set (the suite's choice; the paper gives no seed spread). In band is judged only "
            "for runs at scale `paper`.",
        ]
        used = cells.loc[cells["optimizer"] == "Adam", "our_optimizer"].dropna()
        if len(used):
            notes.append(
                "The paper's Adam column is our `adamw` where a row has adamw runs, else `adam`; used here: "
                + ", ".join(sorted(set(used)))
                + "."
            )
    elif proxy is not None:
        block, model = catalogue.row_labels(proxy.table, proxy.row)
        if proxy.rows:  # each of our rows beside its own paper row, the columns under the paper's own names
            mapped = ", ".join(f"our {ours} → {proxy.table} {theirs}" for ours, theirs in proxy.rows.items())
            notes.append(
                f"Paper gain = difference of the printed values of the paper row each of our rows stands for "
                f"({mapped}; {proxy.label}), the same optimizer columns as ours; where lower is better (a "
                "perplexity) a negative gain is the proposed optimizer's advantage. Sign agrees: our gain has "
                f"that sign. A metric the paper does not print has no paper gain: `none (not in {proxy.table})`."
            )
        elif proxy.as_paper.get("AdamW") == "Adam":
            notes.append(
                f"Paper gain = difference of the printed values of {proxy.table}'s {model} row (the paper's "
                "Adam column against our AdamW); Sign agrees: our gain has that sign."
            )
        else:
            notes.append(
                f"Paper gain = difference of the printed values of {proxy.table}'s {model} row, block "
                f"{block} (its AdamP − Adam; the paper's Adam there is torch Adam with coupled L2, our "
                "`adam`, not AdamW); Sign agrees: our gain has that sign. Pairs the paper does not print "
                f"(here those with AdamW, our control arm) have no paper gain, sign or seeds for it: `none (not in "
                f"{proxy.table})`."
            )
    else:
        notes.append("Sign agrees: compared with +, the sign of every printed SGDP/AdamP gain in P1.")
    if entry is not None and entry.analysis:
        notes.append(
            f"‖w‖ here is the whole-tensor norm after the first epoch. The paper's analysis layout (norm per "
            f"filter from the initial weights, effective step, top-1 per epoch) with the paper's readings beside "
            f"ours: `results/figures/analysis_{table_id}_<scale>.md` and `.png` (`make figures`)."
        )
    reference = entry.reference_gain if entry is not None else DEFAULT_REFERENCE
    return notes + _power_and_robustness_notes(is_paper or proxy is not None, cells, reference)


def _power_and_robustness_notes(has_paper_gain: bool, cells: pd.DataFrame, reference: tuple) -> list[str]:
    target = "the printed gain (Paper gain)"
    if not has_paper_gain:
        ref_table, ref_row = reference
        ref_model = catalogue.row_labels(ref_table, ref_row)[1]
        target = (
            f"{ref_table}'s printed {ref_model} gain of the same pair (SGDP − SGD, AdamP − Adam; our AdamW "
            "stands for the paper's Adam), shown beside the count, as a scale for what a real effect needs"
        )
    notes = [
        "95% CI: Welch's interval of the gain. Detectable gain: the smallest gain these seeds detect; "
        f"Seeds/arm: seeds per optimizer to detect {target} ({POWER_DESCRIPTION}). The spread is itself "
        f"estimated from few seeds, so both are planning figures, not guarantees. `{NOT_APPLICABLE_ONE_SEED}`: "
        "no spread to estimate."
    ]
    if (cells["metric"] == "attacked_acc").any():
        notes.append(
            f"{AUTOATTACK_LABEL}: mean ± std over the same runs of `{AUTOATTACK_KEY}`, AutoAttack (Croce & "
            "Hein, ICML 2020) at the run's threat model and eps; the paper reports PGD-10 only. Where it is "
            f"more than {AUTOATTACK_GAP_POINTS:g} points below our PGD-10 (on the same samples where the record "
            f"has `{AUTOATTACK_PGD_KEY}`) the findings say so."
        )
    return notes
