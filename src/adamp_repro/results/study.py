"""A tuning study's page and figure, from its run records alone (``adamp_repro.tune`` runs the study).

Read from each run folder: ``summary.json`` (``study``, ``study_role``, ``study_trial``, ``eval_split``,
``status``, ``final_eval_top1``, ``seed``, ``optimizer``) and the optimizer values of ``config.yaml``. What the
page says, per optimizer:

- the trials: each study's best validation top-1 (%) and trial, the median over studies of those bests (the
  score of AlgoPerf's external-tuning ruleset, mlcommons/algorithmic-efficiency), diverged trials counted;
- the expected best validation top-1 against the number of trials n (Sivaprasad et al., ICML 2020): the mean
  over ``BOOTSTRAP`` resamples of the best of n trials drawn with replacement from all of the optimizer's trials
  (a diverged trial scores 0);
- the chosen values beside the default recipe's, each with its position in its range and an ``edge`` flag
  where it lies within ``EDGE`` of either end (on the range's own scale: the optimum may lie outside);
- the confirmation on the test split: default and tuned mean top-1 over the shared seeds, and for each pair the
  proposed-minus-baseline difference paired by seed, its mean with a two-sided 95% t interval
  (``scipy.stats``), for the default recipes and the tuned settings side by side.

The figure (``<figures>/study_<name>.png``) shows the validation top-1 of every trial over the first two
dimensions of each optimizer's space (log axes where the range is log), diverged trials as crosses.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from adamp_repro.results.render import save_figure
from adamp_repro.results.stats import CONFIDENCE, POWER, detectable_gain, paired_seeds_needed, paired_test
from adamp_repro.results.text import MISSING, markdown_table
from adamp_repro.tracking.records import CONFIG_FILE, atomic_write_text, read_summary
from adamp_repro.tracking.schema import (
    EVAL_SPLIT,
    STUDY,
    STUDY_ROLE,
    STUDY_TRIAL,
    TOP1,
    eval_key,
    final_key,
)

SCORE = final_key(eval_key(TOP1))
BOOTSTRAP = 2000
BOOTSTRAP_SEED = 0
EDGE = 0.05  # a chosen value within 5% of its range's width of an end is flagged


@dataclass
class StudyPlan:
    """What the study was meant to run (from its study file): the page compares the records with it."""

    name: str
    optimizers: list[str]
    pairs: list[tuple[str, str]]
    studies: int
    trials: int
    seeds: int
    spaces: dict[str, dict[str, tuple[float, float, bool]]]  # optimizer -> key -> (low, high, log)
    validation: dict[str, int]


@dataclass
class Record:
    run_dir: Path
    role: str
    optimizer: str
    trial: int | None
    seed: int
    status: str
    score: float  # top-1 (%) on ``split``; NaN unless completed
    split: str
    values: dict[str, Any] = field(default_factory=dict)  # the optimizer's values from config.yaml


@dataclass
class StudyRecords:
    plan: StudyPlan
    records: list[Record]

    def of(self, role: str, optimizer: str) -> list[Record]:
        return [r for r in self.records if r.role == role and r.optimizer == optimizer]

    def trial_scores(self, optimizer: str) -> dict[int, float]:
        """Trial -> validation top-1 (%); a diverged trial scores NaN (a finished trial that scores nothing)."""
        return {
            r.trial: r.score
            for r in self.of("trial", optimizer)
            if r.trial is not None and r.status in ("completed", "diverged")
        }

    def by_seed(self, role: str, optimizer: str) -> dict[int, float]:
        """Seed -> top-1 (%) of the finished runs of a confirmation role (``default`` or ``tuned``)."""
        return {r.seed: r.score for r in self.of(role, optimizer) if r.status in ("completed", "diverged")}

    def study_bests(self, optimizer: str) -> list[tuple[int, float] | None]:
        """Per study (a block of ``trials`` consecutive trials), its best (trial, score); None where a trial of
        the block has not finished."""
        scores, t = self.trial_scores(optimizer), self.plan.trials
        out: list[tuple[int, float] | None] = []
        for s in range(self.plan.studies):
            block = range(s * t, (s + 1) * t)
            if not all(i in scores for i in block):
                out.append(None)
                continue
            best = max(block, key=lambda i: -math.inf if math.isnan(scores[i]) else scores[i])
            out.append((best, scores[best]))
        return out

    def chosen(self) -> dict[str, int]:
        """Per optimizer the trial its confirmation reruns: the best trial of the study whose best is the median
        over studies (the lower median for an even count). Every trial must have finished."""
        out = {}
        for optimizer in self.plan.optimizers:
            bests = self.study_bests(optimizer)
            if any(b is None for b in bests):
                raise ValueError(f"study {self.plan.name}: trials of {optimizer} have not all finished")
            ranked = sorted(bests, key=lambda b: -math.inf if math.isnan(b[1]) else b[1])  # type: ignore[index]
            out[optimizer] = int(ranked[(len(ranked) - 1) // 2][0])  # type: ignore[index]
        return out


def read_study(plan: StudyPlan, run_dirs: Iterable[str | os.PathLike]) -> StudyRecords:
    """The records of study ``plan.name`` among ``run_dirs`` (folders whose summary names another study, or
    none, are skipped)."""
    records = []
    for run_dir in run_dirs:
        run_dir = Path(run_dir)
        try:
            summary = read_summary(run_dir)
        except (OSError, ValueError):
            continue
        if summary.get(STUDY) != plan.name:
            continue
        score = summary.get(SCORE)
        completed = summary.get("status") == "completed" and isinstance(score, (int, float))
        records.append(
            Record(
                run_dir=run_dir,
                role=str(summary.get(STUDY_ROLE)),
                optimizer=str(summary.get("optimizer")),
                trial=summary.get(STUDY_TRIAL),
                seed=int(summary.get("seed", -1)),
                status=str(summary.get("status")),
                score=float(score) if completed else math.nan,
                split=str(summary.get(EVAL_SPLIT, "test")),
                values=_optimizer_values(run_dir),
            )
        )
    return StudyRecords(plan, records)


def _optimizer_values(run_dir: Path) -> dict[str, Any]:
    try:
        cfg = yaml.safe_load((run_dir / CONFIG_FILE).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}
    return dict(cfg.get("optimizer") or {})


def expected_best(scores: Sequence[float], n_max: int, *, seed: int = BOOTSTRAP_SEED) -> list[float]:
    """The expected best of n trials, n = 1..n_max: the mean over ``BOOTSTRAP`` resamples (with replacement)
    of the best of n of ``scores`` (NaN, a diverged trial, scores 0)."""
    values = np.nan_to_num(np.asarray(scores, dtype=float), nan=0.0)
    if values.size == 0:
        return [math.nan] * n_max
    rng = np.random.default_rng(seed)
    draws = rng.choice(values, size=(BOOTSTRAP, n_max), replace=True)
    return [float(np.maximum.accumulate(draws, axis=1)[:, n - 1].mean()) for n in range(1, n_max + 1)]


def paired_difference(base: Mapping[int, float], proposed: Mapping[int, float]) -> dict[str, Any]:
    """Proposed minus baseline top-1 (points) on the seeds both have: per-seed differences, mean and the
    two-sided ``CONFIDENCE`` t interval (``stats.paired_test``; NaN bounds with fewer than 2 seeds), the
    spread of the differences and the smallest gain these seeds detect (``stats.detectable_gain``: the pilot's
    sizing, and what a null result rules out)."""
    seeds = sorted(set(base) & set(proposed))
    diffs = [proposed[s] - base[s] for s in seeds if not (math.isnan(base[s]) or math.isnan(proposed[s]))]
    test = paired_test(diffs)
    sd = float(np.std(diffs, ddof=1)) if len(diffs) > 1 else math.nan
    return {
        "seeds": seeds,
        "diffs": diffs,
        "mean": test.gain,
        "low": test.ci_low,
        "high": test.ci_high,
        "p": test.p,
        "sd": sd,
        "detectable": detectable_gain(test),
        "seeds_needed": paired_seeds_needed(test, test.gain),
    }


def _pct(value: float) -> str:
    return MISSING if value is None or math.isnan(value) else f"{value:.2f}"


def _signed(value: float) -> str:
    return MISSING if math.isnan(value) else f"{value:+.2f}"


def study_page(records: StudyRecords) -> str:
    plan = records.plan
    lines = [
        f"# Tuning study {plan.name}",
        "",
        f"Equal budget per optimizer: {plan.studies} study(ies) x {plan.trials} quasi-random trials on seed 0, "
        f"selected on {plan.validation['size']} training images held out (seed {plan.validation['seed']}), "
        f"never the test set; the default recipe and the chosen setting rerun on seeds 0..{plan.seeds - 1} "
        "and evaluated on the test split. Top-1 in %. Built from the run records by adamp_repro.results.study.",
        "",
        "## Trials (validation split)",
        "",
    ]
    rows = []
    for o in plan.optimizers:
        bests = records.study_bests(o)
        scores = records.trial_scores(o)
        diverged = sum(1 for r in records.of("trial", o) if r.status == "diverged")
        done = [b[1] for b in bests if b is not None]
        median = float(np.median(done)) if len(done) == len(bests) and done else math.nan
        best_text = ", ".join(MISSING if b is None else f"{_pct(b[1])} (trial {b[0]})" for b in bests)
        rows.append(
            [o, f"{len(scores)}/{plan.studies * plan.trials}", str(diverged), best_text, _pct(median)]
        )
    lines += markdown_table(
        ["optimizer", "trials finished", "diverged", "best per study", "median of the studies' bests"],
        rows,
        "lrrlr",
    )
    everything = [v for o in plan.optimizers for v in records.trial_scores(o).values() if not math.isnan(v)]
    if everything and plan.validation.get("size"):
        top, n = max(everything) / 100.0, int(plan.validation["size"])
        se = 100.0 * math.sqrt(top * (1.0 - top) / n)
        lines += [
            "",
            f"The validation split's own noise: a top-1 near {100 * top:.1f}% measured on {n} images has a "
            f"binomial standard error of {se:.1f} points (as a sample of the images it could have been): "
            "trials a point or two apart are within it, and the selection rule picks among them all the same.",
        ]
    n_max = plan.studies * plan.trials
    lines += [
        "",
        "## Expected best validation top-1 against the number of trials (bootstrap over trials)",
        "",
    ]
    curve_rows = []
    for o in plan.optimizers:
        curve = expected_best(list(records.trial_scores(o).values()), n_max)
        curve_rows.append([o, *(_pct(v) for v in curve)])
    lines += markdown_table(
        ["optimizer", *(str(n) for n in range(1, n_max + 1))], curve_rows, "l" + "r" * n_max
    )
    chosen = _chosen_or_none(records)
    lines += ["", "## Chosen values beside the default recipe", ""]
    value_rows = []
    for o in plan.optimizers:
        default_values = next((r.values for r in records.of("default", o)), {})
        trial = None if chosen is None else chosen[o]
        picked = next((r.values for r in records.of("trial", o) if r.trial == trial), {})
        for key, (low, high, log) in plan.spaces[o].items():
            value = picked.get(key)
            flag = ""
            if isinstance(value, (int, float)):
                pos = (
                    (math.log(value) - math.log(low)) / (math.log(high) - math.log(low))
                    if log
                    else (value - low) / (high - low)
                )
                flag = f"{pos:.2f}" + (" **edge**" if pos <= EDGE or pos >= 1 - EDGE else "")
            value_rows.append(
                [
                    o,
                    key,
                    f"[{low:g}, {high:g}] {'log' if log else 'linear'}",
                    MISSING if trial is None else str(trial),
                    MISSING if value is None else f"{value:g}",
                    str(default_values.get(key, MISSING)),
                    flag or MISSING,
                ]
            )
    lines += markdown_table(
        ["optimizer", "key", "range", "trial", "chosen", "default", "position in range"],
        value_rows,
        "lllrrrl",
    )
    lines += ["", "## Confirmation (test split)", ""]
    by_seed = {(role, o): records.by_seed(role, o) for role in ("default", "tuned") for o in plan.optimizers}
    conf_rows = []
    for o in plan.optimizers:
        cells = [o]
        for role in ("default", "tuned"):
            scores = list(by_seed[(role, o)].values())
            clean = [s for s in scores if not math.isnan(s)]
            cells += [f"{_pct(float(np.mean(clean)) if clean else math.nan)} ({len(scores)}/{plan.seeds})"]
        conf_rows.append(cells)
    lines += markdown_table(["optimizer", "default: mean (seeds)", "tuned: mean (seeds)"], conf_rows, "lrr")
    if plan.pairs:
        lines += [
            "",
            f"Proposed minus baseline, paired by seed (points; mean and {CONFIDENCE:.0%} t interval):",
            "",
        ]
        pair_rows = []
        for base, proposed in plan.pairs:
            cells = [f"{proposed} - {base}"]
            for role in ("default", "tuned"):
                d = paired_difference(by_seed[(role, base)], by_seed[(role, proposed)])
                cells += [
                    f"{_signed(d['mean'])} [{_signed(d['low'])}, {_signed(d['high'])}]",
                    ", ".join(f"{x:+.2f}" for x in d["diffs"]) or MISSING,
                    _pct(d["detectable"]),
                ]
            pair_rows.append(cells)
        lines += markdown_table(
            [
                "pair",
                "default recipes",
                "per seed",
                "detectable",
                "tuned settings",
                "per seed",
                "detectable",
            ],
            pair_rows,
            "lllrllr",
        )
        lines += [
            "",
            f"detectable: the smallest paired gain these seeds detect {POWER:.0%} of the time in a two-sided "
            f"test at {1 - CONFIDENCE:.0%} (results.stats.detectable_gain, from the spread of the "
            "differences); an interval across 0 leaves smaller gains open.",
        ]
    splits = sorted({f"{r.role}: {r.split}" for r in records.records})
    lines += ["", f"Evaluation splits in the records: {', '.join(splits) or MISSING}.", ""]
    return "\n".join(lines)


def pilot_lines(records: StudyRecords) -> list[str]:
    """The pilot's sizing (``make tune TABLE=<name> PILOT=1``): per pair, the default recipes' paired differences on
    the confirmation seeds, their spread and the smallest paired gain those seeds detect."""
    lines = []
    for base, proposed in records.plan.pairs:
        d = paired_difference(records.by_seed("default", base), records.by_seed("default", proposed))
        lines.append(
            f"pilot {proposed} - {base}, default recipes, {len(d['diffs'])} paired seed(s): per seed "
            f"{', '.join(f'{x:+.2f}' for x in d['diffs']) or MISSING}; mean {_signed(d['mean'])}, sd "
            f"{_pct(d['sd'])} points; smallest gain detected {POWER:.0%} of the time: {_pct(d['detectable'])} "
            "points"
        )
    return lines


def _chosen_or_none(records: StudyRecords) -> dict[str, int] | None:
    try:
        return records.chosen()
    except ValueError:
        return None


def study_figure(records: StudyRecords, stem: str | os.PathLike) -> list[Path]:
    """Validation top-1 of every trial over the first two keys of each optimizer's space (one panel each)."""
    from matplotlib.figure import Figure

    plan = records.plan
    fig = Figure(figsize=(4.6 * len(plan.optimizers), 3.8), layout="constrained")
    chosen = _chosen_or_none(records)
    axes = fig.subplots(1, len(plan.optimizers), squeeze=False)[0]
    scored = [r.score for r in records.records if r.role == "trial" and not math.isnan(r.score)]
    vmin, vmax = (min(scored), max(scored)) if scored else (0.0, 100.0)
    for ax, o in zip(axes, plan.optimizers):
        space = list(plan.spaces[o].items())
        trials = [r for r in records.of("trial", o) if r.status in ("completed", "diverged")]
        (kx, (lx, hx, logx)) = space[0]
        ky = space[1][0] if len(space) > 1 else None
        xs = [r.values.get(kx) for r in trials]
        ys = [r.values.get(ky) if ky else r.score for r in trials]
        ok = [i for i, r in enumerate(trials) if not math.isnan(r.score)]
        bad = [i for i, r in enumerate(trials) if math.isnan(r.score)]
        if not trials:  # nothing finished yet (e.g. after the pilot): an empty panel, no log axis to fit
            ax.text(0.5, 0.5, "no finished trial", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(f"{o}: 0 trials")
            continue
        if ky:
            points = ax.scatter([xs[i] for i in ok], [ys[i] for i in ok], c=[trials[i].score for i in ok],
                                vmin=vmin, vmax=vmax, cmap="viridis", s=40)  # fmt: skip
            fig.colorbar(points, ax=ax, label="validation top-1 (%)")
            if bad:
                ax.scatter([xs[i] for i in bad], [ys[i] for i in bad], marker="x", c="red", label="diverged")
            picked = [r for r in trials if chosen is not None and r.trial == chosen[o]]
            if picked:
                ax.scatter([picked[0].values.get(kx)], [picked[0].values.get(ky)], marker="o", s=160,
                           facecolors="none", edgecolors="red", label="chosen")  # fmt: skip
            default = next((r.values for r in records.of("default", o)), {})
            if isinstance(default.get(kx), (int, float)) and isinstance(default.get(ky), (int, float)):
                ax.scatter([default[kx]], [default[ky]], marker="+", s=120, c="black", label="default recipe")
            ax.legend(fontsize=7, loc="best", framealpha=0.6)
            ax.set_ylabel(ky)
            if space[1][1][2]:
                ax.set_yscale("log")
        else:
            ax.scatter([xs[i] for i in ok], [ys[i] for i in ok], s=40)
            ax.set_ylabel("validation top-1 (%)")
        if logx:
            ax.set_xscale("log")
        ax.set_xlabel(kx)
        ax.set_title(f"{o}: {len(trials)} trials")
    fig.suptitle(f"Study {plan.name}: validation top-1 over the search space")
    return save_figure(fig, stem)


PAIR_COLUMNS = [
    "study", "baseline", "proposed", "role", "seeds", "baseline_mean", "proposed_mean", "mean", "low", "high",
    "p", "sd", "detectable", "seeds_needed", "trials_finished", "trials_planned", "seeds_planned",
]  # fmt: skip


def pair_rows(records: StudyRecords) -> list[dict[str, Any]]:
    """Per pair and confirmation role (``default``, ``tuned``): the paired proposed-minus-baseline difference on
    the test split, its interval, p and detectable gain, with how complete the study is (the ledger reads these
    from ``study_<name>.csv``)."""
    plan, rows = records.plan, []
    for base, proposed in plan.pairs:
        finished = sum(len(records.trial_scores(o)) for o in (base, proposed))
        for role in ("default", "tuned"):
            a, b = records.by_seed(role, base), records.by_seed(role, proposed)
            d = paired_difference(a, b)
            rows.append(
                {
                    "study": plan.name,
                    "baseline": base,
                    "proposed": proposed,
                    "role": role,
                    "seeds": len(d["diffs"]),
                    "baseline_mean": float(np.nanmean(list(a.values()))) if a else math.nan,
                    "proposed_mean": float(np.nanmean(list(b.values()))) if b else math.nan,
                    "mean": d["mean"],
                    "low": d["low"],
                    "high": d["high"],
                    "p": d["p"],
                    "sd": d["sd"],
                    "detectable": d["detectable"],
                    "seeds_needed": d["seeds_needed"],
                    "trials_finished": finished,
                    "trials_planned": 2 * plan.studies * plan.trials,
                    "seeds_planned": plan.seeds,
                }
            )
    return rows


def write_study_page(records: StudyRecords, tables_out: str | os.PathLike, figures_out: str | os.PathLike) -> list[Path]:  # fmt: skip
    """Write ``<tables_out>/study_<name>.md``, the pairs' numbers ``<tables_out>/study_<name>.csv`` and
    ``<figures_out>/study_<name>.{png,pdf}``; returns the paths."""
    page = Path(tables_out) / f"study_{records.plan.name}.md"
    atomic_write_text(page, study_page(records))
    csv = page.with_suffix(".csv")
    atomic_write_text(csv, pd.DataFrame(pair_rows(records), columns=PAIR_COLUMNS).to_csv(index=False))
    return [page, csv, *study_figure(records, Path(figures_out) / f"study_{records.plan.name}")]
