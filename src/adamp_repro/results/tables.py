"""Paper-vs-ours tables: one layout (``TableDoc``) and one renderer per format (Markdown, LaTeX booktabs, CSV).

``layout_table`` turns the numbers of ``compare.compare_table`` into display grids; rounding happens only
here and in the sentences of ``findings``. The CSVs carry the unrounded floats (``render_csv``). Output never contains timestamps, so a rebuild
from the same records gives byte-identical files.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import pandas as pd

from adamp_repro import catalogue
from adamp_repro.catalogue import DEFAULT_REFERENCE
from adamp_repro.results.collect import LEFT_OUT_KINDS
from adamp_repro.results.compare import MECHANISM_KEYS, Comparison
from adamp_repro.results.findings import (
    AUTOATTACK_LABEL,
    CODE_CHANGED_MARK,
    FORMS_MIXED_MARK,
    METRIC_LABELS,
    MISSING,
    autoattack_sentences,
    gap_sentences,
    mechanism_sentences,
    metric_sentences,
    table_notes,
)
from adamp_repro.results.stats import MAX_SEEDS, NOT_APPLICABLE_ONE_SEED, POWER
from adamp_repro.results.text import markdown_table
from adamp_repro.tracking.schema import metric_direction


@dataclass
class Grid:
    """One displayed table: header, rows of already-formatted text, per-column alignment (l / r), and lines
    that belong right under it (Markdown) or in its caption (LaTeX)."""

    caption: str
    header: list[str]
    rows: list[list[str]]
    align: str
    footer: list[str] = field(default_factory=list)


@dataclass
class Section:
    """The part of a table for one scale of our runs (a ``mini`` number is never mixed with a ``paper`` one)."""

    heading: str
    grids: list[Grid]
    sentences: list[str] = field(default_factory=list)
    # The few sentences ``make reproduce-table`` prints at its end (``reproduce.findings_lines``).
    headlines: list[str] = field(default_factory=list)


@dataclass
class TableDoc:
    table_id: str
    title: str
    intro: list[str]
    sections: list[Section]
    notes: list[str]
    cells: pd.DataFrame
    gains: pd.DataFrame
    one_line: str  # for the summary page


def layout_table(comparison: Comparison, paper: pd.DataFrame) -> TableDoc:
    table_id, cells, gains = comparison.table_id, comparison.cells, comparison.gains
    entry = catalogue.table(table_id)
    is_paper = entry is not None and entry.is_paper
    if is_paper:
        title = entry.title
        intro = [f"Paper's numbers: {entry.source} (`results/paper/{table_id}.csv`)."]
        if not entry.runs:
            intro.append("Not run by this suite: listed with the paper's numbers only.")
    else:
        title = entry.title if entry is not None else f"Runs tagged table_id={table_id!r} (our own table)"
        intro = ["Our own table: no printed counterpart, so there is no paper value, band or diff."]
        if entry is not None and entry.proxy is not None:
            proxy = entry.proxy
            block, model = catalogue.row_labels(proxy.table, proxy.row)
            row = f"{proxy.table}'s {model} row (block {block})"
            # accuracies, or the table's own lower-is-better numbers (a perplexity)
            metrics = entry.metrics or {}
            values = "accuracies" if all(metric_direction(m) > 0 for m in metrics) else "numbers"
            if proxy.rows:  # several paper rows: each of ours beside its own
                block = proxy.label
                row = (
                    "the paper row each of our rows stands for ("
                    + ", ".join(f"{ours} → {theirs}" for ours, theirs in proxy.rows.items())
                    + ")"
                )
            intro = [
                f"Our own table on other data, standing in for {proxy.table} ({block}): its {values} are "
                f"not comparable with the paper's, so only the paper's printed gains of {row} are set beside our "
                "gains (`Paper gain`), and each sign is judged against them."
            ]
    left_out = comparison.left_out
    sections = [
        _section(entry, table_id, is_paper, scale, cells, gains, paper, left_out) for scale in _scales(cells)
    ]
    if not sections:
        sections = [Section(f"No completed runs tagged table_id={table_id!r} yet", [])]
    notes = table_notes(table_id, is_paper, cells) + comparison.notes
    return TableDoc(table_id, title, intro, sections, notes, cells, gains, _one_line(entry, is_paper, cells))


def _scales(cells: pd.DataFrame) -> list:
    return list(dict.fromkeys(cells["scale"].tolist()))


def _section(entry, table_id, is_paper, scale, cells, gains, paper, left_out) -> Section:
    part = cells[_same(cells["scale"], scale)]
    gain_part = gains[_same(gains["scale"], scale)]
    left_out_part = left_out[_same(left_out["scale"], scale)]
    if scale is None or (isinstance(scale, float) and math.isnan(scale)):
        heading = "No completed runs of this table: ours shown as " + MISSING
    else:
        labels = sorted(set(part["dataset_label"].dropna()))
        heading = f"Ours at scale `{scale}`; data: {'; '.join(labels) or MISSING}"
        if is_paper and scale != "paper":
            heading += f" (not the paper's protocol: a `{scale}` number is not a `paper` number)"
    # Show a label column only where it varies; an own table's rows are its models, so Model always shows.
    varying = [
        c
        for c in ("block", "model", "dataset", "metric")
        if part[c].nunique() > 1 or (not is_paper and c == "model")
    ]
    norms = entry is not None and entry.norms
    mechanism = not is_paper and (norms or part[list(MECHANISM_KEYS)].notna().any().any())
    grids = [_cell_grid(part, varying, is_paper, scale, mechanism)]
    grids[0].footer = [_left_out_line(left_out_part)]
    if part["n_code_changed"].sum():
        grids[0].footer.append(
            f"{CODE_CHANGED_MARK} Some seeds of the marked cells were resumed after a change to `src/` "
            "(summary `code_changed_on_resume`); they are counted, and the notes list them."
        )
    if part["forms_mixed"].any():
        grids[0].footer.append(
            f"{FORMS_MIXED_MARK} The seeds of the marked cells stepped with different optimizer forms (summary "
            "`optimizer_forms`: fused C++ kernels, multi-tensor or reference form, a few ulp apart per step); the "
            "notes list them."
        )
    if len(gain_part):
        proxy = entry.proxy if entry is not None else None
        reference = entry.reference_gain if entry is not None else DEFAULT_REFERENCE
        grids.append(_gain_grid(gain_part, varying, is_paper or proxy is not None, proxy, entry, reference))
    sentences, headlines = [], []
    if not (scale is None or part["n_seeds"].sum() == 0):
        sentences = gap_sentences(gain_part, is_paper, paper, table_id)
        headlines = [s for s in sentences if "seed noise" in s][:4]
        bar = entry is not None and bool(entry.trained_bar)
        if bar:
            verdict = metric_sentences(table_id, part, gain_part)
            sentences = verdict + sentences
            headlines = verdict
        if mechanism:
            sentences += mechanism_sentences(part, _pairs_shown(gain_part))
        robust = autoattack_sentences(part)
        sentences += robust
        headlines += robust if bar else []
    return Section(heading, grids, sentences, headlines)


def _pairs_shown(gains: pd.DataFrame) -> list[tuple[str, str]]:
    return list(dict.fromkeys(zip(gains["baseline"], gains["proposed"])))


def _same(column: pd.Series, value) -> pd.Series:
    return (
        column.isna()
        if value is None or (isinstance(value, float) and math.isnan(value))
        else column == value
    )


def _cell_grid(part, varying, is_paper, scale, mechanism) -> Grid:
    header = [c.capitalize() for c in varying] + ["Optimizer"]
    if is_paper:
        header += ["Ours as"]
    header += (
        ["Paper", "Band", "Ours (mean ± std)", "n", "Diff", "In band"]
        if is_paper
        else ["Ours (mean ± std)", "n"]
    )
    if mechanism:
        header += ["‖w‖ after epoch 1 → final", "Eff. step (final)"]
    attacked = bool((part["metric"] == "attacked_acc").any())
    if attacked:
        header += [AUTOATTACK_LABEL]
    rows = []
    for r in part.to_dict("records"):
        row = [_label(r, c) for c in varying] + [r["optimizer"]]
        if is_paper:
            row += [_text(r["our_optimizer"]), _text(r["paper_printed"]), _band(r["tolerance"])]
        ours = _ours(r["ours_mean"], r["ours_std"], r["n_seeds"])
        marks = (CODE_CHANGED_MARK if r["n_code_changed"] else "") + (
            FORMS_MIXED_MARK if r["forms_mixed"] else ""
        )
        row += [ours + (f" {marks}" if marks else ""), str(r["n_seeds"])]
        if is_paper:
            row += [_signed(r["diff"]), _in_band(r["within_tolerance"], scale, r["tolerance"])]
        if mechanism:
            row += [
                _norms(r["epoch1_mean_weight_norm"], r["final_mean_weight_norm"]),
                _sci(r["final_effective_step_size"]),
            ]
        if attacked:
            aa = _ours(r["autoattack_mean"], r["autoattack_std"], r["autoattack_n"])
            row += [aa if r["metric"] == "attacked_acc" else ""]
        rows.append(row)
    align = "l" * (len(varying) + 1 + is_paper) + "r" * (len(header) - len(varying) - 1 - is_paper)
    return Grid("Per optimizer", header, rows, align)


def _gain_grid(part, varying, paper_gain: bool, proxy, entry, reference) -> Grid:
    header = [c.capitalize() for c in varying] + ["Comparison"]
    target = "paper gain" if paper_gain else f"{reference[0]} {catalogue.row_labels(*reference)[1]} gain"
    header += (["Paper gain"] if paper_gain else []) + [
        "Our gain",
        "95% CI",
        "n",
        "Sign agrees",
        "p",
        "Beyond seed noise",
        f"Detectable gain (power {POWER})",
        f"Seeds/arm for {target}",
    ]
    rows = []
    for r in part.to_dict("records"):
        what = entry.pair_labels.get((r["baseline"], r["proposed"])) if entry is not None else None
        row = [_label(r, c) for c in varying] + [
            f"{r['proposed']} − {r['baseline']}" + (f" ({what})" if what else "")
        ]
        no_counterpart = proxy is not None and _isnan(r["paper_gain"])
        row += (
            [f"none (not in {proxy.table})" if no_counterpart else _signed(r["paper_gain"])]
            if paper_gain
            else []
        )
        row += [
            _signed(r["ours_gain"]),
            _interval(r["ci_low"], r["ci_high"], r["test"]),
            f"{r['n_proposed']} vs {r['n_baseline']}",
            _yes_no(r["sign_agrees"]),
            _p(r["p_value"], r["test"]),
            _yes_no(r["beyond_noise"], r["test"]),
            _magnitude(r["detectable_gain"], r["test"]),
            _seeds(r["seeds_needed"], r["test"], None if paper_gain else r["target_gain"]),
        ]
        rows.append(row)
    return Grid(
        "Paired comparisons (proposed − baseline)",
        header,
        rows,
        "l" * (len(varying) + 1) + "r" * (len(header) - len(varying) - 1),
    )


def _one_line(entry, is_paper: bool, cells: pd.DataFrame) -> str:
    filled = cells[cells["n_seeds"] > 0]
    if is_paper and not entry.runs and filled.empty:
        return "not run by this suite (paper's numbers only)"
    if filled.empty:
        return "no completed runs yet"
    scales = ", ".join(f"`{s}`" for s in dict.fromkeys(filled["scale"]))
    seeds = (
        f"{filled['n_seeds'].min()}–{filled['n_seeds'].max()}"
        if filled["n_seeds"].nunique() > 1
        else str(filled["n_seeds"].iloc[0])
    )
    total = len(cells) if not is_paper else int(cells.groupby("scale", dropna=False).size().max())
    return f"{len(filled)} of {total} cells with runs (scale {scales}; {seeds} seed(s) per cell)"


# --- formatting: the only place numbers are rounded ---------------------------------------------------------


def _isnan(x) -> bool:
    return x is None or x is pd.NA or (isinstance(x, float) and math.isnan(x))


def _text(x) -> str:
    """Missing strings arrive as None or NaN (pandas' string dtype); both render as missing."""
    return MISSING if _isnan(x) or x == "" else str(x)


def _label(r, column) -> str:
    return METRIC_LABELS.get(r[column], r[column]) if column == "metric" else _text(r[column])


def _ours(mean, std, n) -> str:
    if n == 0 or _isnan(mean):
        return MISSING
    return f"{mean:.2f}" if _isnan(std) else f"{mean:.2f} ± {std:.2f}"


def _signed(x) -> str:
    return MISSING if _isnan(x) else f"{x:+.2f}"


def _band(x) -> str:
    return MISSING if _isnan(x) else f"±{x:.2f}"


def _in_band(value, scale, tolerance) -> str:
    if _isnan(tolerance):
        return MISSING
    if scale != "paper":
        return f"n/a ({scale} scale)" if scale is not None else MISSING
    return _yes_no(value)


def _yes_no(value, test: str | None = None) -> str:
    if test == NOT_APPLICABLE_ONE_SEED:
        return test
    return MISSING if _isnan(value) else ("yes" if value else "no")


def _left_out_line(left_out: pd.DataFrame) -> str:
    """How many of the section's records were left out of the means, and why (paths in the notes)."""
    if left_out.empty:
        return "Left out of the means: no record (no duplicate seed, short run or scale mismatch)."
    counts = left_out["left_out_kind"].value_counts()
    why = ", ".join(f"{counts[k]} {LEFT_OUT_KINDS[k]}" for k in LEFT_OUT_KINDS if k in counts)
    return f"Left out of the means: {len(left_out)} record(s), {why}; the notes name each one."


def _interval(low, high, test) -> str:
    if _isnan(low) or _isnan(high):
        return test if test == NOT_APPLICABLE_ONE_SEED else MISSING
    return f"[{low:+.2f}, {high:+.2f}]"


def _magnitude(x, test) -> str:
    if _isnan(x):
        return test if test == NOT_APPLICABLE_ONE_SEED else MISSING
    return f"{x:.2f}"


def _seeds(n, test, target=None) -> str:
    """Seeds per arm; ``target`` is shown beside them when no Paper gain column says what they aim at."""
    if _isnan(n):
        return test if test == NOT_APPLICABLE_ONE_SEED else MISSING
    text = f"> {MAX_SEEDS:,}" if math.isinf(n) else str(int(n))
    return text if _isnan(target) else f"{text} (for {target:+.2f})"


def _p(p, test) -> str:
    if _isnan(p):
        return test if test == NOT_APPLICABLE_ONE_SEED else MISSING
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _norms(after_epoch_1, final) -> str:
    """``epoch1_mean_weight_norm`` (the norm after the first epoch) → the final norm."""
    if _isnan(after_epoch_1) or _isnan(final):
        return MISSING
    return f"{after_epoch_1:.3f} → {final:.3f}"


def _sci(x) -> str:
    return MISSING if _isnan(x) else f"{x:.2e}"


# --- renderers -----------------------------------------------------------------------------------------------


def render_markdown(doc: TableDoc) -> str:
    out = [f"# {doc.table_id}: {doc.title}", "", *[f"{line}" for line in doc.intro], ""]
    for section in doc.sections:
        out += [f"## {section.heading}", ""]
        for grid in section.grids:
            out += [f"{grid.caption}:", "", *markdown_table(grid.header, grid.rows, grid.align), ""]
            out += [*grid.footer, ""] if grid.footer else []
        out += [f"- {s}" for s in section.sentences] + ([""] if section.sentences else [])
    out += ["## Notes", ""] + [f"{i}. {n}" for i, n in enumerate(doc.notes, 1)]
    return "\n".join(out) + "\n"


_TEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}
_TEX_UNICODE = {
    "±": r"$\pm$",
    "−": r"$-$",
    "—": "---",
    "→": r"$\to$",
    "≥": r"$\geq$",
    "≤": r"$\leq$",
    "‖": r"$\|$",
    "×": r"$\times$",
    "–": "--",
    "<": "$<$",
    ">": "$>$",
    "†": r"$^\dagger$",
    "‡": r"$^\ddagger$",
}


def latex_escape(text: str) -> str:
    """Escape LaTeX specials, map the few Unicode signs we print, and turn `code` into \\texttt{code}."""
    out = "".join(_TEX_SPECIAL.get(ch, _TEX_UNICODE.get(ch, ch)) for ch in str(text))
    out = re.sub(r"(?<![\w$])-(?=\d)", r"$-$", out)  # a minus sign, not a hyphen, before a number
    return re.sub(r"`([^`]*)`", r"\\texttt{\1}", out)


def render_latex(doc: TableDoc) -> str:
    out = [
        f"% {doc.table_id}: {doc.title}",
        "% Generated by scripts/build_tables.py from results/runs and "
        "results/paper; do not edit. Needs \\usepackage{booktabs}.",
        "",
    ]
    for section in doc.sections:
        for grid in section.grids:
            caption = " ".join(
                [f"{doc.table_id}: {doc.title}. {section.heading}. {grid.caption}.", *grid.footer]
            )
            out += [
                "\\begin{table}[t]",
                "\\centering",
                f"\\caption{{{latex_escape(caption)}}}",
                f"\\begin{{tabular}}{{{grid.align}}}",
                "\\toprule",
                " & ".join(latex_escape(h) for h in grid.header) + " \\\\",
                "\\midrule",
            ]
            out += [" & ".join(latex_escape(c) for c in row) + " \\\\" for row in grid.rows]
            out += ["\\bottomrule", "\\end{tabular}", "\\end{table}", ""]
        if section.sentences:
            out += ["\\begin{itemize}"] + [f"\\item {latex_escape(s)}" for s in section.sentences]
            out += ["\\end{itemize}", ""]
    out += [latex_escape(line) for line in doc.intro] + [""]
    out += ["\\begin{enumerate}"] + [f"\\item {latex_escape(n)}" for n in doc.notes] + ["\\end{enumerate}"]
    return "\n".join(out) + "\n"


def render_csv(frame: pd.DataFrame) -> str:
    """Unrounded floats, one row per cell or comparison; internal list columns dropped."""
    frame = frame[[c for c in frame.columns if not c.startswith("_")]]
    return frame.to_csv(index=False, lineterminator="\n")


def render_files(doc: TableDoc) -> dict[str, str]:
    """File name -> text for one table: ``<id>.md``, ``<id>.tex``, ``<id>.csv`` (cells), ``<id>_gains.csv``."""
    return {
        f"{doc.table_id}.md": render_markdown(doc),
        f"{doc.table_id}.tex": render_latex(doc),
        f"{doc.table_id}.csv": render_csv(doc.cells),
        f"{doc.table_id}_gains.csv": render_csv(doc.gains),
    }
