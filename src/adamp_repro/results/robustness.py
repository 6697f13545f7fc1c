"""Robust accuracy against eps, read from the adversarial run records: the eps-sweep figure.

A model whose accuracy does not fall as the threat ball grows is masking gradients, not robust (Carlini et al.
2019, "On Evaluating Adversarial Robustness", arXiv 1902.06705, section 5). The adversarial task attacks its final
model at several eps (``task.eps_sweep``) and writes, in ``summary.json``, the eps values
(``task_settings.eps_sweep.eps``) and one accuracy per eps (``final_eval_eps_sweep_<i>_top1``, percent, on the
first ``final_eval_eps_sweep_images`` test samples). This module reads those records only.

- ``robustness_<experiment>_<scale>.{png,pdf}``: robust top-1 against eps x 255, one line per optimizer (mean over
  seeds, band min-max), with AutoAttack (its own subset) and the paper's PGD-10 (the whole test set) at the
  task's eps as markers.
- ``robustness_<experiment>_<scale>.csv``: the plotted numbers, one row per (run, eps).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from adamp_repro.results.collect import find_run_dirs
from adamp_repro.results.render import save_figure
from adamp_repro.tracking.records import atomic_write_text, read_summary, rows_to_csv

SWEEP_COLUMNS = (
    "experiment",
    "scale",
    "optimizer",
    "seed",
    "norm",
    "attack",
    "eps",
    "eps_x255",
    "top1",
    "images",
    "run_dir",
)
# Markers at the task's eps: (summary key, label).
MARKERS = (
    ("final_eval_autoattack_top1", "AutoAttack"),
    ("final_eval_robust_top1", "PGD-10 (paper)"),
)


def eps_sweep_rows(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per eps of a run's sweep (``SWEEP_COLUMNS``); none when the run has no sweep."""
    settings = (summary.get("task_settings") or {}).get("eps_sweep") or {}
    eps_values = settings.get("eps") or []
    rows = []
    for i, eps in enumerate(eps_values):
        top1 = summary.get(f"final_eval_eps_sweep_{i}_top1")
        if top1 is None:
            continue
        rows.append(
            {
                "experiment": summary.get("experiment"),
                "scale": summary.get("scale"),
                "optimizer": summary.get("optimizer"),
                "seed": summary.get("seed"),
                "norm": settings.get("norm"),
                "attack": "clean"
                if eps == 0
                else f"{settings.get('version')}:{'+'.join(settings['attacks'])}",
                "eps": float(eps),
                "eps_x255": float(eps) * 255,
                "top1": float(top1),
                "images": summary.get("final_eval_eps_sweep_images"),
                "run_dir": summary.get("run_dir"),
            }
        )
    return rows


def read_eps_sweeps(runs_root: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(sweep rows of every completed run, one row per run with its ``MARKERS`` values and task eps)."""
    sweeps, runs = [], []
    for run_dir in find_run_dirs(Path(runs_root)):
        try:
            summary = read_summary(run_dir)
        except (OSError, ValueError):
            continue  # collect_runs reports broken records; a figure just leaves them out
        rows = eps_sweep_rows(summary) if summary.get("status") == "completed" else []
        if not rows:
            continue
        sweeps += rows
        runs.append(
            {
                **{key: rows[0][key] for key in ("experiment", "scale", "optimizer", "seed", "norm")},
                "eps_x255": float(summary["task_settings"]["eps"]) * 255,
                **{key: summary.get(key) for key, _ in MARKERS},
            }
        )
    return pd.DataFrame(sweeps, columns=list(SWEEP_COLUMNS)), pd.DataFrame(runs)


def plot_eps_sweep(sweeps: pd.DataFrame, runs: pd.DataFrame, title: str) -> Figure:
    """Robust top-1 (%) against eps x 255 for the runs of one (experiment, scale)."""
    fig = Figure(figsize=(6.0, 4.2), layout="constrained")
    ax = fig.subplots()
    for index, (optimizer, group) in enumerate(sweeps.groupby("optimizer", sort=True)):
        color = f"C{index}"
        band = group.groupby("eps_x255")["top1"].agg(["mean", "min", "max", "count"]).reset_index()
        seeds = group["seed"].nunique()
        label = f"{optimizer} ({seeds} seed{'s' if seeds > 1 else ''})"
        ax.plot(band["eps_x255"], band["mean"], "o-", color=color, label=label)
        if seeds > 1:
            ax.fill_between(band["eps_x255"], band["min"], band["max"], color=color, alpha=0.2)
        mine = runs[runs["optimizer"] == optimizer]
        for (key, label), marker in zip(MARKERS, ("x", "+")):
            values = mine[key].dropna() if key in mine else pd.Series(dtype=float)
            if len(values):
                ax.plot(
                    [mine["eps_x255"].iloc[0]],
                    [values.mean()],
                    marker,
                    color=color,
                    markersize=10,
                    label=f"{optimizer}: {label}",
                )
    norm = sweeps["norm"].iloc[0]
    attack = sweeps.loc[sweeps["attack"] != "clean", "attack"]
    ax.set_xlabel(f"eps x 255 ({norm})")
    ax.set_ylabel("robust top-1 (%)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    images = int(sweeps["images"].min())
    ax.set_title(
        f"{title}\nsweep: {attack.iloc[0] if len(attack) else '-'} on {images} test images", fontsize=9
    )
    return fig


def robustness_figures(runs_root: str | os.PathLike, out_dir: str | os.PathLike) -> list[Path]:
    """``robustness_<experiment>_<scale>.{png,pdf,csv}`` for every (experiment, scale) with a swept run."""
    sweeps, runs = read_eps_sweeps(runs_root)
    paths: list[Path] = []
    if sweeps.empty:
        return paths
    out = Path(out_dir)
    for (experiment, scale), group in sweeps.groupby(["experiment", "scale"], sort=True):
        stem = out / f"robustness_{_safe(experiment)}_{_safe(scale)}"
        mine = runs[(runs["experiment"] == experiment) & (runs["scale"] == scale)]
        paths += save_figure(plot_eps_sweep(group, mine, f"{experiment} ({scale} scale)"), stem)
        rows = group.sort_values(["optimizer", "seed", "eps"]).to_dict("records")
        atomic_write_text(f"{stem}.csv", rows_to_csv(rows))
        paths.append(Path(f"{stem}.csv"))
    return paths


def _safe(text: object) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(text))
