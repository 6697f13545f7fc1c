"""The paper's mechanism, seed by seed: does momentum grow the scale-invariant weights, and does the projection
hold them?

For each table in ``MECHANISM_CHECKS`` and each seed, the growth of the mean per-filter norm of the weights
followed by a normalisation layer, from initialisation (summary ``at_init_mean_filter_norm``, the weights before
the first step) to the end (``final_mean_filter_norm``), for every arm of the table, and three targets per pair
(baseline without projection, the same optimizer with it):

- the baseline's norm grows by at least ``min_growth`` (momentum grows the norms, docs/paper.md §4.4);
- the projected arm's growth is at most ``max_fraction`` of the baseline's (the projection holds them);
- for the SGD pair, the baseline's final effective step (lr / ||w_c||^2, per filter) is below the projected
  arm's (a grown norm shrinks the step).

A seed counts only when both arms of the pair completed it. Writes ``<table>_mechanism.{md,csv}`` beside the
tables; ``mechanism_findings`` gives the few lines ``make reproduce-table`` prints at its end.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from adamp_repro.results.text import markdown_table, signed_pct, yes_or_bold_no
from adamp_repro.tracking.records import atomic_write_text, rows_to_csv
from adamp_repro.tracking.schema import FILTER_EFFECTIVE_STEP_SIZE, MEAN_FILTER_NORM, at_init_key, final_key

INIT_KEY = at_init_key(MEAN_FILTER_NORM)
FINAL_KEY = final_key(MEAN_FILTER_NORM)
STEP_KEY = final_key(FILTER_EFFECTIVE_STEP_SIZE)


@dataclass(frozen=True)
class Arm:
    label: str
    block: str
    optimizer: str


@dataclass(frozen=True)
class Pair:
    baseline: Arm
    projected: Arm
    check_step: bool  # compare the final effective steps (the SGD pair: one lr, so lr/||w||^2 is comparable)


@dataclass(frozen=True)
class MechanismCheck:
    title: str
    pairs: tuple[Pair, ...]
    others: tuple[Arm, ...] = ()  # arms shown for each seed but not judged (vanilla SGD)
    min_growth: float = 0.10
    max_fraction: float = 1 / 3


_MOMENTUM_SGD = Arm("momentum SGD", "momentum", "sgd")
MECHANISM_CHECKS = {
    "mechanism": MechanismCheck(
        title="The mechanism per seed: growth of the scale-invariant weights' norm",
        pairs=(
            Pair(_MOMENTUM_SGD, Arm("SGDP", "momentum", "sgdp"), check_step=True),
            Pair(Arm("Adam", "momentum", "adam"), Arm("AdamP", "momentum", "adamp"), check_step=False),
        ),
        others=(Arm("vanilla SGD", "vanilla", "sgd"),),
    ),
}


def seed_rows(runs: pd.DataFrame, table_id: str, check: MechanismCheck) -> list[dict]:
    """One row per (scale, pair, seed) with both arms' growth, the ratio and each target met or not."""
    runs = runs[runs["table_id"] == table_id]
    rows = []
    for scale in sorted(set(runs["scale"].dropna())):
        at_scale = runs[runs["scale"] == scale]
        for pair in check.pairs:
            base, proj = _by_seed(at_scale, pair.baseline), _by_seed(at_scale, pair.projected)
            for seed in sorted(set(base) & set(proj)):
                b, p = base[seed], proj[seed]
                g_b, g_p = _growth(b), _growth(p)
                grows = g_b >= check.min_growth
                held = g_p <= check.max_fraction * g_b
                step = b[STEP_KEY] < p[STEP_KEY] if pair.check_step else None
                row = {
                    "scale": scale,
                    "pair": f"{pair.projected.label} vs {pair.baseline.label}",
                    "seed": int(seed),
                    "baseline": pair.baseline.label,
                    "baseline_growth": g_b,
                    "projected": pair.projected.label,
                    "projected_growth": g_p,
                    "growth_ratio": g_p / g_b if g_b else math.nan,
                    "baseline_step": b[STEP_KEY],
                    "projected_step": p[STEP_KEY],
                    "baseline_grows": grows,
                    "projection_holds": held,
                    "baseline_step_smaller": step,
                    "all_met": grows and held and step is not False,
                    "baseline_run": b["run_dir"],
                    "projected_run": p["run_dir"],
                }
                for other in check.others:
                    found = _by_seed(at_scale, other).get(seed)
                    row[f"{other.label}_growth"] = _growth(found) if found is not None else math.nan
                rows.append(row)
    return rows


def _by_seed(runs: pd.DataFrame, arm: Arm) -> dict[int, dict]:
    block = runs["table_block"].astype(str).str.strip().str.lower()
    chosen = runs[(block == arm.block) & (runs["optimizer"] == arm.optimizer)]
    chosen = chosen[chosen[INIT_KEY].notna() & chosen[FINAL_KEY].notna()]
    return {int(r["seed"]): r for r in chosen.to_dict("records")}


def _growth(run: dict) -> float:
    return float(run[FINAL_KEY]) / float(run[INIT_KEY]) - 1.0


def mechanism_findings(rows: list[dict], check: MechanismCheck) -> list[str]:
    """Per scale and pair, one line: the targets met in how many seeds, and each seed's growth."""
    lines = []
    for (scale, pair), group in _groups(rows):
        met = sum(r["all_met"] for r in group)
        base, proj = group[0]["baseline"], group[0]["projected"]
        seeds = ", ".join(
            f"seed {r['seed']}: {base} {r['baseline_growth']:+.1%} vs {proj} {r['projected_growth']:+.1%}"
            for r in group
        )
        targets = f"{base} >= {check.min_growth:+.0%}, {proj} <= {check.max_fraction:.2g} of it" + (
            f", {base}'s final effective step below {proj}'s"
            if group[0]["baseline_step_smaller"] is not None
            else ""
        )
        verdict = "met in every seed" if met == len(group) else f"met in {met} of {len(group)} seeds"
        lines.append(f"[{scale}] {pair}: targets ({targets}) {verdict}; {seeds}.")
    return lines


def _groups(rows: list[dict]) -> list[tuple[tuple[str, str], list[dict]]]:
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["scale"], row["pair"]), []).append(row)
    return list(groups.items())


def mechanism_markdown(table_id: str, rows: list[dict], check: MechanismCheck) -> str:
    out = [
        f"# {table_id}: {check.title}",
        "",
        "Generated from the run records (summary `at_init_mean_filter_norm`, `final_mean_filter_norm`, "
        "`final_filter_effective_step_size`); do not edit by hand. Growth = final / initial - 1 of the mean "
        "per-filter norm ||w_c|| of the weights followed by a normalisation layer, from the weights before the "
        "first step to the end of the run. Effective step = lr / ||w_c||^2 per filter (mean), at the end.",
        "",
        f"Targets per seed: the baseline grows by at least {check.min_growth:.0%}; the projected arm by at most "
        f"{check.max_fraction:.2g} of the baseline's growth; for the SGD pair the baseline's final effective step "
        "is below the projected arm's.",
        "",
    ]
    if not rows:
        out += [f"No seed with both arms of a pair completed for table `{table_id}` yet.", ""]
    others = [a.label for a in check.others]
    for (scale, pair), group in _groups(rows):
        base, proj = group[0]["baseline"], group[0]["projected"]
        step = group[0]["baseline_step_smaller"] is not None
        header = [
            "Seed",
            f"{base} growth",
            f"{proj} growth",
            "ratio",
            f"{base} >= {check.min_growth:.0%}",
            f"{proj} <= {check.max_fraction:.2g}x",
        ]
        header += [f"eff. step {base} / {proj}", "step smaller"] if step else []
        header += [f"{o} growth" for o in others] + ["all met"]
        out += [f"## Scale `{scale}`: {pair}", ""]
        cells_of = []
        for r in group:
            cells = [
                str(r["seed"]),
                f"{r['baseline_growth']:+.1%}",
                f"{r['projected_growth']:+.1%}",
                f"{r['growth_ratio']:.2f}",
                yes_or_bold_no(r["baseline_grows"]),
                yes_or_bold_no(r["projection_holds"]),
            ]
            if step:
                cells += [
                    f"{r['baseline_step']:.3e} / {r['projected_step']:.3e}",
                    yes_or_bold_no(r["baseline_step_smaller"]),
                ]
            cells += [signed_pct(r.get(f"{o}_growth")) for o in others] + [yes_or_bold_no(r["all_met"])]
            cells_of.append(cells)
        out += markdown_table(header, cells_of, "r" * len(header))
        out.append("")
    findings = mechanism_findings(rows, check)
    if findings:
        out += ["## Findings", "", *[f"- {line}" for line in findings], ""]
    out += ["Runs read:", ""]
    for r in rows:
        out.append(f"- seed {r['seed']} ({r['scale']}): `{r['baseline_run']}`, `{r['projected_run']}`")
    return "\n".join(out) + "\n"


def mechanism_outputs(
    runs: pd.DataFrame, out_dir: str | os.PathLike
) -> tuple[list[Path], dict[str, list[str]]]:
    """Write ``<table>_mechanism.{md,csv}`` for each table of ``MECHANISM_CHECKS`` with runs; return the paths
    and, per table, its findings lines."""
    written, findings = [], {}
    for table_id, check in MECHANISM_CHECKS.items():
        if not (runs["table_id"] == table_id).any():
            continue
        rows = seed_rows(runs, table_id, check)
        md, csv = Path(out_dir) / f"{table_id}_mechanism.md", Path(out_dir) / f"{table_id}_mechanism.csv"
        atomic_write_text(md, mechanism_markdown(table_id, rows, check))
        atomic_write_text(csv, rows_to_csv(rows) if rows else "scale,pair,seed\n")
        written += [md, csv]
        findings[table_id] = mechanism_findings(rows, check)
    return written, findings
