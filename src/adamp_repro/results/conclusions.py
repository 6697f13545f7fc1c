"""What a reproduction of a table concludes, beside what the committed records of the same configs conclude.

``make reproduce-table`` (``reproduce.main``) trains a table's runs afresh and ends with ``reproduction_report``:

- bit-identity, run by run: every numeric summary key but wall time and throughput. It is expected on the same
  CPU type (provenance ``cpu``) only: another type may pick CPU kernels that round differently, and a few epochs
  at a high lr amplify the last bits into points of top-1;
- on any CPU type, the conclusions, computed alike from the fresh records and from the committed records of the
  same configs (the same folders under ``--reference``):
  (a) each run's per-seed mechanism targets (``mechanism.MECHANISM_CHECKS``, ``seed_rows``) beside the committed
  run's;
  (b) the verdicts of the table's own claims-ledger rows (``claims.build_claims`` scoped by ``Claim.table``) and
  of its accuracy gains (each pair and metric: inside seed noise, or beyond it and which arm is ahead); a verdict
  that changed is named with both estimates and intervals. A claim judged on wall time (``Claim.wall_time``)
  measures the machine and its load: it is reported, never compared;
  (c) how far the numbers moved: per metric the largest |fresh - committed| in points, and the largest such move
  in multiples of the seed spread (the committed records' standard deviation over seeds, ddof 1, of that metric
  for the same experiment, scale, optimizer and table block).

The comparison is a report, never a failure by itself. What fails a reproduction (``Report.missed``, which sets
the exit status) is a fresh run that did not complete or that missed the table's own stated targets: the
per-seed mechanism targets, at every scale but ``smoke`` (a few batches for tests, while the targets are sized
for the table's recipe). A table's ``trained_bar`` is not a target: the catalogue fixes it as the bar below
which the table's gains say nothing (the ledger then reads ``inconclusive``), so it shows among the verdicts.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from adamp_repro import catalogue, paths
from adamp_repro.results.analysis import analysis_curves, summarise_curves
from adamp_repro.results.build import build_table_docs
from adamp_repro.results.claims import ANALYSIS_CLAIM_TABLE, Claim, build_claims
from adamp_repro.results.collect import read_records
from adamp_repro.results.mechanism import FINAL_KEY, INIT_KEY, MECHANISM_CHECKS, seed_rows
from adamp_repro.results.reference import load_paper_numbers
from adamp_repro.results.tables import render_files
from adamp_repro.tracking.records import atomic_write_text, read_provenance_segments, rows_to_csv
from adamp_repro.tracking.schema import SCHEMA_VERSION_KEY, upgrade_summary

# Summary keys that differ between two runs of the same config without any number of the run changing (a
# committed record may be of an older schema version: both are read with this version's key names).
UNCOMPARED_KEYS = ("wall_time_s", "images_per_s", "run_dir", "error", SCHEMA_VERSION_KEY)
NO_REFERENCE = "no committed record of this config"
# Scales at which a table's stated targets are reported but not required (smoke: a few batches, for tests).
UNJUDGED_SCALES = ("smoke",)
METRIC_WORDS = {"top1_acc": "top-1", "standard_acc": "clean accuracy", "attacked_acc": "attacked accuracy"}
GROWTH = "norm growth"  # the per-filter norm growth of the mechanism tables, in percentage points
# The per-seed targets of ``mechanism.seed_rows``, as said in a line.
TARGETS = {
    "baseline_grows": "{baseline} grows by at least {min_growth:.0%}",
    "projection_holds": "{projected} grows by at most {max_fraction:.2g} of {baseline}'s growth",
    "baseline_step_smaller": "{baseline}'s final effective step below {projected}'s",
}


@dataclass
class Report:
    """``lines``: the comparison, printed after the runs; ``summary``: the last lines of the output;
    ``missed``: what the fresh runs did not complete or meet of the table's stated targets (non-empty: exit 1)."""

    lines: list[str]
    summary: list[str]
    missed: list[str] = field(default_factory=list)

    def exit_status(self, runs_failed: bool = False) -> int:
        """1 when a step of the reproduction failed or a stated target was missed, else 0."""
        return 1 if runs_failed or self.missed else 0


@dataclass
class Side:
    """What one set of records concludes about the table: per-seed targets keyed (table, scale, pair, seed),
    the table's ledger rows by id, its gains keyed (table, scale, row, metric, baseline, proposed)."""

    targets: dict[tuple, dict]
    claims: dict[str, Claim]
    gains: dict[tuple, dict]


# ------------------------------------------------------------------------------------------ bit-identity
def fresh_run_dirs(fresh_root: Path, experiments: Iterable[str], scale: str) -> list[str]:
    """The run folders (relative to ``fresh_root``) with a summary, of these experiments at this scale."""
    return [
        str(summary.parent.relative_to(fresh_root))
        for experiment in experiments
        for summary in sorted((fresh_root / experiment / scale).glob("*/summary.json"))
    ]


def identity_rows(fresh_root: Path, reference: Path, experiments: list[str], scale: str) -> list[dict]:
    """Per fresh run: ``run`` (its folder, relative), ``identical`` and ``detail`` (which keys moved)."""
    rows = []
    for rel in fresh_run_dirs(fresh_root, experiments, scale):
        ref_summary = reference / rel / "summary.json"
        if not ref_summary.is_file():
            rows.append({"run": rel, "identical": False, "detail": NO_REFERENCE})
            continue
        rows.append({"run": rel, **compare_summaries(fresh_root / rel / "summary.json", ref_summary)})
    return rows


def compare_summaries(fresh_path: Path, ref_path: Path) -> dict:
    """``identical`` and ``detail`` of two summaries of one config: every numeric key but ``UNCOMPARED_KEYS``."""
    fresh, ref = (upgrade_summary(json.loads(path.read_text())) for path in (fresh_path, ref_path))
    if fresh.get("status") != "completed":
        return {"identical": False, "detail": f"fresh run is {fresh.get('status')!r}, not completed"}
    diffs = {}
    for key in sorted(set(fresh) | set(ref)):
        if key in UNCOMPARED_KEYS:
            continue
        a, b = fresh.get(key), ref.get(key)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
            if not (a == b or (math.isnan(a) and math.isnan(b))):
                diffs[key] = abs(a - b)
        elif key not in fresh or key not in ref:
            continue  # a key one version of the code writes and the other does not: not a number that moved
        elif a != b and isinstance(a, (int, float, bool)):
            diffs[key] = math.inf
    if not diffs:
        return {"identical": True, "detail": "bit-identical"}
    worst = sorted(diffs.items(), key=lambda kv: -kv[1])[:3]
    return {
        "identical": False,
        "detail": f"{len(diffs)} key(s) differ; largest |diff|: "
        + ", ".join(f"{k} {v:.3g}" for k, v in worst),
    }


def cpu_types(root: Path, runs: Iterable[str]) -> set[str]:
    """The CPU types (provenance ``cpu``: ``model (capability)``) that made these runs; ``unrecorded`` for a
    record written before provenance named its CPU."""
    found = set()
    for run in runs:
        try:
            segments = read_provenance_segments(root / run)
        except ValueError:
            segments = []
        cpu = next((s["cpu"] for s in segments if isinstance(s.get("cpu"), dict)), None)
        found.add("unrecorded" if cpu is None else f"{cpu.get('model')} ({cpu.get('capability')})")
    return found


def cpu_line(fresh: set[str], committed: set[str]) -> str:
    """Which CPU types made the fresh and the committed records, and what that means for bit-identity."""
    if committed == {"unrecorded"}:
        return (
            f"  CPU: these runs ran on {', '.join(sorted(fresh))}; the committed records do not say which CPU made "
            "them (written before provenance recorded it). Bit-identity is expected on the same CPU type only: "
            "another may pick kernels that round differently, and training amplifies that"
        )
    if fresh != committed:
        return (
            f"  CPU: these runs ran on {', '.join(sorted(fresh))}, the committed records on "
            f"{', '.join(sorted(committed))}: bit-identity is expected on the same CPU type only"
        )
    return f"  CPU: the same type made both ({', '.join(sorted(fresh))}): a difference is not the CPU's"


# ------------------------------------------------------------------------------------------ one side
def _link_records(root: Path, runs: Iterable[str], view: Path) -> None:
    """``view``: the run folders ``runs`` of ``root`` alone, their files linked (copied where links fail), so
    that the results code reads exactly these records."""
    for rel in runs:
        target = view / rel
        target.mkdir(parents=True, exist_ok=True)
        for file in (root / rel).iterdir():
            if file.is_file():
                try:
                    os.symlink(file.resolve(), target / file.name)
                except OSError:
                    shutil.copy2(file, target / file.name)


def read_side(root: Path, runs: list[str], table_ids: list[str], work: Path) -> Side:
    """Targets, ledger rows and gains of ``table_ids`` from the records ``runs`` of ``root`` (its tables and
    analysis CSVs written under ``work``, which the caller removes)."""
    view = work / "runs"
    view.mkdir(parents=True, exist_ok=True)
    _link_records(root, runs, view)
    found = read_records(view)
    if found.runs.empty:
        return Side({}, {}, {})
    targets = {}
    for table_id in table_ids:
        if table_id in MECHANISM_CHECKS:
            for row in seed_rows(found.runs, table_id, MECHANISM_CHECKS[table_id]):
                targets[(table_id, row["scale"], row["pair"], row["seed"])] = row
    tables, figures = work / "tables", work / "figures"
    docs = build_table_docs(found.runs, load_paper_numbers(paths.paper_dir()), found.left_out)
    docs = [doc for doc in docs if doc.table_id in table_ids]
    for doc in docs:
        for name, text in render_files(doc).items():
            atomic_write_text(tables / name, text)
    for table_id in table_ids:
        if table_id in MECHANISM_CHECKS:
            rows = seed_rows(found.runs, table_id, MECHANISM_CHECKS[table_id])
            atomic_write_text(tables / f"{table_id}_mechanism.csv", rows_to_csv(rows) if rows else "scale\n")
        if table_id == ANALYSIS_CLAIM_TABLE:  # its claim reads the figures step's summary CSV
            curves = analysis_curves(view, table_id)
            for scale, part in curves.groupby("scale", sort=True):
                summary = summarise_curves(part).to_dict("records")
                atomic_write_text(figures / f"analysis_{table_id}_{scale}.csv", rows_to_csv(summary))
    claims = {c.id: c for c in build_claims(view, tables, figures, work, table_ids)}
    gains = {}
    for doc in docs:
        for r in doc.gains.to_dict("records"):
            if not pd.isna(r.get("ours_gain")):
                gains[(doc.table_id, r["scale"], r["row_id"], r["metric"], r["baseline"], r["proposed"])] = r
    return Side(targets, claims, gains)


def _missed(fresh_root: Path, runs: list[str], side: Side) -> list[str]:
    """The fresh runs that did not complete, and the per-seed targets missed at a judged scale."""
    missed = []
    for rel in runs:
        status = _summary(fresh_root / rel / "summary.json").get("status")
        if status != "completed":
            missed.append(f"{rel} is {status!r}, not completed")
    for (table_id, scale, pair, seed), row in side.targets.items():
        if scale in UNJUDGED_SCALES or row["all_met"]:
            continue
        check = MECHANISM_CHECKS[table_id]
        failed = [key for key in TARGETS if row[key] is False]
        words = [_target_words(key, row, check) for key in failed]
        missed.append(f"[{scale}] {pair} seed {seed}: {'; '.join(words)}: not met ({_growths(row)})")
    return missed


def _target_words(key: str, row: dict, check) -> str:
    return TARGETS[key].format(
        baseline=row["baseline"],
        projected=row["projected"],
        min_growth=check.min_growth,
        max_fraction=check.max_fraction,
    )


def _growths(row: dict) -> str:
    return (
        f"{row['baseline']} {row['baseline_growth']:+.1%}, {row['projected']} {row['projected_growth']:+.1%}"
    )


# ------------------------------------------------------------------------------------------ the comparison
def _target_lines(fresh: Side, committed: Side, n_runs: int) -> tuple[list[str], list[str], str]:
    """(lines, what differs, the count in a phrase): each run's per-seed targets beside the committed run's."""
    same_of: dict[str, bool] = {}
    changed = []
    for key, row in fresh.targets.items():
        ref = committed.targets.get(key)
        if ref is None:
            continue
        table_id, scale, pair, seed = key
        moved = [k for k in TARGETS if row[k] != ref[k]]
        for run in (row["baseline_run"], row["projected_run"]):
            same_of[run] = same_of.get(run, True) and not moved
        for k in moved:
            met = "met" if row[k] else "not met"
            was = "met" if ref[k] else "not met"
            words = _target_words(k, row, MECHANISM_CHECKS[table_id])
            changed.append(
                f"[{scale}] {pair} seed {seed}: {words}: {met} here ({_growths(row)}), {was} in the committed "
                f"records ({_growths(ref)})"
            )
    if not same_of:
        return [], [], ""
    phrase = f"{sum(same_of.values())} of {len(same_of)} judged run(s) meet the same per-seed targets"
    line = f"per-seed targets: {phrase} as in the committed records"
    if n_runs > len(same_of):
        line += f" ({n_runs - len(same_of)} run(s) shown beside them, not judged per seed)"
    return [line, *[f"  {c}" for c in changed]], changed, phrase


def _gain_name(key: tuple) -> str:
    table_id, scale, row_id, metric, baseline, proposed = key
    return f"{proposed} − {baseline} {METRIC_WORDS.get(metric, metric)} ({table_id}, row {row_id}, {scale})"


def _gain_verdict(r: dict) -> str:
    beyond = r.get("beyond_noise")
    if beyond is None or pd.isna(beyond):
        return "not tested (one seed per arm)"
    if not bool(beyond):
        return "inside noise"
    return f"beyond noise, {r['proposed'] if r['ours_gain'] > 0 else r['baseline']} ahead"


def _gain_numbers(r: dict) -> str:
    text = f"{r['ours_gain']:+.2f}"
    if not pd.isna(r.get("ci_low")):
        text += f" [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]"
    return text


def _verdict_lines(fresh: Side, committed: Side) -> tuple[list[str], list[str], list[str], list[str]]:
    """(lines, what differs, the names of what is the same, the wall-time claims reported)."""
    lines, changed, same, timed = [], [], [], []
    for cid, claim in fresh.claims.items():
        ref = committed.claims.get(cid)
        if ref is None:
            continue
        if claim.wall_time:
            if claim.verdict == ref.verdict == "not run":
                continue
            timed.append(cid)
            lines.append(
                f"{cid} is judged on wall time (machine-dependent: reported, not compared): here "
                f"{claim.verdict} ({claim.ours}); the committed records: {ref.verdict} ({ref.ours})"
            )
        elif claim.verdict == ref.verdict:
            same.append(f"{cid} {claim.verdict}")
        else:
            changed.append(f"{cid} {ref.verdict} -> {claim.verdict}")
            lines.append(
                f"{cid} ({claim.claim}): {claim.verdict} here ({claim.ours}); {ref.verdict} in the committed "
                f"records ({ref.ours})"
            )
    gains_same = []
    for key, r in fresh.gains.items():
        ref = committed.gains.get(key)
        if ref is None:
            continue
        here, was = _gain_verdict(r), _gain_verdict(ref)
        if here == was:
            gains_same.append(f"{_gain_name(key)} {here}")
        else:
            changed.append(f"{_gain_name(key)} {was} -> {here}")
            lines.append(
                f"accuracy verdict {_gain_name(key)}: {here} here ({_gain_numbers(r)}); {was} in the committed "
                f"records ({_gain_numbers(ref)})"
            )
    head = []
    if same:
        head.append(f"claims of the table: the same verdicts ({', '.join(same)})")
    if gains_same:
        head.append(f"accuracy verdicts: the same ({'; '.join(gains_same)})")
    named = [s.split()[0] for s in same]
    if gains_same:
        named.append(
            "the accuracy verdict" if len(gains_same) == 1 else f"the {len(gains_same)} accuracy verdicts"
        )
    summary_same = []
    if named:
        joined = ", ".join(named[:-1]) + " and " + named[-1] if len(named) > 1 else named[0]
        summary_same.append(f"the verdicts of {joined} are the same" if same else f"{joined} the same")
    return head + lines, changed, summary_same, timed


def _metrics(table_ids: list[str]) -> list[tuple[str, Callable[[dict], float]]]:
    """(name, value of a summary in points) of each metric the tables show, and the norm growth of a mechanism
    table."""
    found: list[tuple[str, Callable[[dict], float]]] = []
    for table_id in table_ids:
        entry = catalogue.table(table_id)
        for metric, key in (entry.metrics if entry is not None else {}).items():
            name = METRIC_WORDS.get(metric, metric)
            if name not in [n for n, _ in found]:
                found.append((name, lambda s, key=key: _number(s.get(key))))
    if any(t in MECHANISM_CHECKS for t in table_ids):
        found.append((GROWTH, lambda s: 100 * (_number(s.get(FINAL_KEY)) / _number(s.get(INIT_KEY)) - 1)))
    return found


def _number(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def _summary(path: Path) -> dict:
    try:
        return upgrade_summary(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


def movement(fresh_root: Path, reference: Path, runs: list[str], table_ids: list[str]) -> list[tuple]:
    """Per metric: (name, largest |fresh - committed| in points, largest move in seed spreads or NaN)."""
    metrics = _metrics(table_ids)
    spreads: dict[tuple, list[dict]] = {}
    out = []
    for name, value in metrics:
        moves, ratios = [], []
        for rel in runs:
            fresh, ref = (
                _summary(fresh_root / rel / "summary.json"),
                _summary(reference / rel / "summary.json"),
            )
            if fresh.get("status") != "completed" or ref.get("status") != "completed":
                continue
            move = abs(value(fresh) - value(ref))
            if math.isnan(move):
                continue
            moves.append(move)
            group = (str(Path(rel).parent), ref.get("optimizer"), ref.get("table_block"))
            if group not in spreads:
                spreads[group] = [
                    s
                    for p in sorted((reference / group[0]).glob("*/summary.json"))
                    if (s := _summary(p)).get("status") == "completed"
                    and (s.get("optimizer"), s.get("table_block")) == group[1:]
                ]
            values = [v for s in spreads[group] if not math.isnan(v := value(s))]
            spread = statistics.stdev(values) if len(values) >= 2 else math.nan
            if spread > 0:
                ratios.append(move / spread)
        if moves:
            out.append((name, max(moves), max(ratios) if ratios else math.nan))
    return out


def _movement_text(moved: list[tuple]) -> str:
    """``top-1 by up to 7.85 points (1.4x the seed spread), ...``"""
    parts = []
    for name, most, ratio in moved:
        if most == 0:
            parts.append(f"{name} not at all")
            continue
        text = f"{name} by up to {most:.2f} points"
        if not math.isnan(ratio):
            text += f" ({ratio:.1f}x the seed spread)"
        parts.append(text)
    return ", ".join(parts)


def reproduction_report(
    fresh_root: str | os.PathLike,
    reference_root: str | os.PathLike,
    experiments: list[str],
    scale: str,
    table_ids: list[str],
) -> Report:
    """The fresh records of ``experiments`` at ``scale`` under ``fresh_root`` beside the committed ones under
    ``reference_root``: bit-identity, then the conclusions of tables ``table_ids``; and what the fresh runs
    missed of the tables' stated targets."""
    fresh_root, reference = Path(fresh_root).resolve(), Path(reference_root).resolve()
    with tempfile.TemporaryDirectory(prefix="adamp-conclusions-") as tmp:
        work = Path(tmp)
        runs = fresh_run_dirs(fresh_root, experiments, scale)
        fresh_all = read_side(fresh_root, runs, table_ids, work / "fresh")
        same_folder = fresh_root == reference
        rows = [] if same_folder else identity_rows(fresh_root, reference, experiments, scale)
        missed = _missed(fresh_root, runs, fresh_all)
        targets = _targets_summary(fresh_all, runs, missed, scale)
        if same_folder:
            return Report(
                [f"records written to the reference folder {reference_root} itself: nothing to compare"],
                ["conclusions: written to the committed records' folder itself: nothing to compare", targets],
                missed,
            )
        matched = [r["run"] for r in rows if r["detail"] != NO_REFERENCE]
        if not matched:
            return Report(
                [f"no committed reference under {reference_root} for these runs (scale {scale})"],
                ["conclusions: no committed records of these configs to compare with", targets],
                missed,
            )
        fresh = fresh_all if matched == runs else read_side(fresh_root, matched, table_ids, work / "matched")
        committed = read_side(reference, matched, table_ids, work / "committed")
    identical = [r for r in rows if r["identical"]]
    fresh_cpu, committed_cpu = cpu_types(fresh_root, matched), cpu_types(reference, matched)
    same_cpu = fresh_cpu == committed_cpu and "unrecorded" not in committed_cpu
    lines = [
        f"against the committed records ({reference_root}): {len(identical)} of {len(rows)} run(s) bit-identical "
        "in every numeric summary key (wall time and throughput aside)"
    ]
    if len(identical) < len(rows):
        if same_cpu:  # the same CPU type: a moved key is unexpected, so each run says which
            lines += [f"  {r['run']}: {r['detail']}" for r in rows if not r["identical"]]
        lines.append(cpu_line(fresh_cpu, committed_cpu))
    target_lines, targets_changed, targets_same = _target_lines(fresh, committed, len(matched))
    verdict_lines, verdicts_changed, verdicts_same, timed = _verdict_lines(fresh, committed)
    moved = movement(fresh_root, reference, matched, table_ids)
    lines.append(f"conclusions beside the committed records ({len(matched)} config(s) in both):")
    lines += [f"  {line}" for line in target_lines + verdict_lines]
    if moved:
        lines.append(
            f"  numbers moved: {_movement_text(moved)} (seed spread: the committed records' standard deviation "
            "over seeds of the same experiment and optimizer)"
        )
    summary = _summary_lines(
        rows, identical, same_cpu, targets_same, targets_changed, verdicts_changed, verdicts_same, moved
    )
    if timed:
        summary.append(
            f"  not compared: {', '.join(timed)} (judged on wall time, which depends on the machine)"
        )
    return Report(lines, [*summary, targets], missed)


def _summary_lines(
    rows, identical, same_cpu, targets_same, targets_changed, verdicts_changed, verdicts_same, moved
) -> list[str]:
    """The conclusion in a line or two: the same as the committed records, or what differs."""
    if rows and len(identical) == len(rows):
        where = "the same CPU type made both" if same_cpu else "bit-identity across CPU types is not expected"
        return [
            f"conclusions: the same as the committed records: all {len(rows)} run(s) bit-identical ({where})"
        ]
    same_parts = [targets_same] if targets_same and not targets_changed else []
    same_parts += verdicts_same
    why = "" if same_cpu else " (another CPU type made the committed records)"
    numbers = [f"  numbers moved{why}: {_movement_text(moved)}"] if moved else []
    if not targets_changed and not verdicts_changed:
        said = "; ".join(same_parts) or "no target or verdict to compare"
        return [f"conclusions: the same as the committed records: {said}", *numbers]
    differ = [*(f"per-seed target {t}" for t in targets_changed), *verdicts_changed]
    lines = [f"conclusions: differ from the committed records: {'; '.join(differ)}"]
    if same_parts:
        lines.append(f"  the same: {'; '.join(same_parts)}")
    return lines + numbers


def _targets_summary(side: Side, runs: list[str], missed: list[str], scale: str) -> str:
    """One line on the fresh runs' own targets (the exit status)."""
    if not runs:
        return f"targets: no fresh record at scale {scale} to judge"
    if missed:
        return f"targets: missed ({len(missed)}): " + "; ".join(missed) + " (exit status 1)"
    if not side.targets:
        return "targets: the runs completed; no per-seed target applies to them"
    if scale in UNJUDGED_SCALES:
        return (
            f"targets: the runs completed; at scale {scale} the per-seed targets are reported, not required"
        )
    return (
        "targets: the runs completed and met the table's per-seed targets in every seed of every pair "
        f"({len(side.targets)} checks)"
    )
