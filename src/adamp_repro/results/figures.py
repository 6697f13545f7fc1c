"""Figures of the mechanism: weight norms and effective step sizes from run records, and the paper's toys.

- ``mechanism_<experiment>_<scale>.{png,pdf}``: per epoch, the mean norm of the weights followed by a
  normalisation layer, their mean effective step size lr / ||w||^2, the RMS angle their filters turn per step
  (``rms_filter_angle``; a panel that says "not recorded" for records written before the angles existed) and
  eval top-1 (every panel spans the epochs of its row, so a run evaluated once is a point at its epoch), one
  row of panels per group
  of optimizers the run's table compares (its ``pairs`` in ``configs/tables.yaml``, labelled as its columns);
  an optimizer no pair names gets a row of its own beside the table's proposed optimizer. The line is the mean
  over seeds, the band the min-max over seeds. The paper's counterpart is the ResNet-18 / ImageNet analysis
  on the project page (docs/paper.md §4.3).
- ``toy_2d.{png,pdf}``: the project page's 2D cosine toy (paths on the plane, ||w|| over iterations);
  ``toy_2d_adam.{png,pdf}``: Adam vs AdamP on the same toy; ``toy_3d.{png,pdf}``: the Rosenbrock-on-hemisphere
  toy.

Every figure is written as PNG and PDF through a temporary file and a rename, with no creation date in the
PDF, so rebuilding from the same records gives the same files. Matplotlib's object API with the Agg canvas is
used (no pyplot state), so importing this module never changes the caller's backend.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullFormatter, ScalarFormatter

from adamp_repro import catalogue
from adamp_repro.results.analysis import analysis_outputs
from adamp_repro.results.curves import read_epoch_curves
from adamp_repro.results.render import save_figure
from adamp_repro.results.text import markdown_table
from adamp_repro.toy.circle2d import METHOD_LABELS, CircleRun
from adamp_repro.toy.hemisphere3d import HEMISPHERE_LABELS, OPTIMUM, HemisphereRun, rosenbrock
from adamp_repro.tracking.records import atomic_write_text, rows_to_csv
from adamp_repro.tracking.schema import (
    EFFECTIVE_STEP_SIZE,
    EPOCH,
    MEAN_WEIGHT_NORM,
    RMS_FILTER_ANGLE,
    TITLES,
    TOP1,
    eval_key,
)

# A style choice for the suite's optimizers (colour, line); any other optimizer (or one whose colour its row
# already uses) takes the first colour of CYCLE its row does not use yet, solid.
OPTIMIZER_STYLE = {
    "sgd": ("tab:blue", "-"),
    "sgdp": ("tab:orange", "-"),
    "adam": ("tab:green", "--"),
    "adamw": ("tab:blue", "-"),
    "adamp": ("tab:orange", "-"),
}
# The panels of a mechanism figure, left to right (epoch-row keys read by ``read_epoch_curves``); the ones on
# a log y axis (step sizes and angles span decades between optimizers).
MECHANISM_COLUMNS = (MEAN_WEIGHT_NORM, EFFECTIVE_STEP_SIZE, RMS_FILTER_ANGLE, eval_key(TOP1))
LOG_COLUMNS = frozenset({EFFECTIVE_STEP_SIZE, RMS_FILTER_ANGLE})
NOT_RECORDED = "not recorded"
CYCLE = tuple(f"tab:{c}" for c in ("blue orange green red purple brown pink gray olive cyan".split()))
TOY_COLORS = {
    "gd": "tab:gray",
    "gd_momentum": "tab:blue",
    "gd_momentum_projection": "tab:orange",
    "sgdp": "tab:red",
    "adam": "tab:blue",
    "adamp": "tab:orange",
}


# ---------------------------------------------------------------------------------------------- run records


def seed_bands(curves: pd.DataFrame, column: str) -> pd.DataFrame:
    """Mean, min, max and seed count of ``column`` per (experiment, scale, optimizer, epoch)."""
    keys = ["experiment", "scale", "optimizer", "epoch"]
    grouped = curves.dropna(subset=[column]).groupby(keys)[column]
    return grouped.agg(mean="mean", low="min", high="max", n="count").reset_index()


def panel_rows(
    table_ids: Iterable[str], optimizers: Iterable[str]
) -> list[tuple[str, tuple[tuple[str, str], ...]]]:
    """The rows of panels of a mechanism figure: ``(title, ((optimizer, label), ...))`` in drawing order.

    ``table_ids``: the tables the runs carry (``table_id``); ``optimizers``: those with runs. Each table's
    catalogue entry (``catalogue.table``; a table it does not list compares the default pairs) gives the rows
    (``compared_groups``), each optimizer under its column label (``Table.label_of``); a row is drawn when any
    of its optimizers has runs. The optimizers with runs that no pair names share one more row, beside the
    proposed optimizer of the table's first pair with runs."""
    have = set(optimizers)
    rows: list[tuple[str, tuple[tuple[str, str], ...]]] = []
    drawn: set[str] = set()
    reference: tuple[str, str] | None = None
    for table_id in sorted(set(table_ids)):
        entry = catalogue.table(table_id) or catalogue.Table(
            name=table_id, table_id=table_id, kind="own", title=table_id, runs=False
        )
        for labels in compared_groups(entry):
            members = list(dict.fromkeys(o for label in labels for o in entry.optimizers_for_column(label)))
            if have.isdisjoint(members) or drawn.issuperset(members):
                continue
            rows.append((" vs ".join(labels), tuple((o, entry.label_of(o) or o) for o in members)))
            drawn.update(members)
        proposed = [o for _, label in entry.pairs for o in entry.optimizers_for_column(label) if o in have]
        if reference is None and proposed:
            reference = (proposed[0], entry.label_of(proposed[0]) or proposed[0])
    others = tuple((o, o) for o in sorted(have - drawn))
    if others:
        row = others + ((reference,) if reference is not None else ())
        rows.append((" vs ".join(label for _, label in row), row))
    return rows


def compared_groups(entry: catalogue.Table) -> list[tuple[str, ...]]:
    """The column labels of each group of optimizers a table compares, in the order of its pairs: pairs that
    share an optimizer are one group (P4a_mini's Adam, AdamW and AdamP), baselines first."""
    groups: list[list[tuple[str, str]]] = []
    for pair in entry.pairs:
        touching = [g for g in groups if not _optimizers(entry, g).isdisjoint(_optimizers(entry, [pair]))]
        merged = [p for g in touching for p in g] + [pair]
        groups = [g for g in groups if g not in touching] + [merged]
        groups.sort(key=lambda g: min(entry.pairs.index(p) for p in g))
    return [tuple(dict.fromkeys([b for b, _ in g] + [p for _, p in g])) for g in groups]


def _optimizers(entry: catalogue.Table, pairs: Iterable[tuple[str, str]]) -> set[str]:
    return {o for pair in pairs for label in pair for o in entry.optimizers_for_column(label)}


def _styles(optimizers: Sequence[str]) -> dict[str, tuple[str, str]]:
    """Colour and line of each optimizer of a row: its ``OPTIMIZER_STYLE`` where the row does not use that
    colour yet, else the first colour of ``CYCLE`` the row does not use, solid."""
    styles: dict[str, tuple[str, str]] = {}
    for optimizer in optimizers:
        style = OPTIMIZER_STYLE.get(optimizer)
        if style is not None and style[0] not in {color for color, _ in styles.values()}:
            styles[optimizer] = style
    for index, optimizer in enumerate(o for o in optimizers if o not in styles):
        free = [color for color in CYCLE if color not in {c for c, _ in styles.values()}]
        styles[optimizer] = (free[0] if free else CYCLE[index % len(CYCLE)], "-")
    return styles


def plot_mechanism(curves: pd.DataFrame, title: str) -> Figure | None:
    """One figure for the curves of one (experiment, scale): a row per group of optimizers its table compares
    (``panel_rows``), a column per curve (``MECHANISM_COLUMNS``). Every panel of a row spans the epochs its
    runs recorded; a panel with no values (the angles of an older record) says ``NOT_RECORDED``."""
    rows = panel_rows(curves["table_id"].dropna().astype(str), curves["optimizer"].dropna().astype(str))
    if not rows:
        return None
    fig = Figure(figsize=(4.2 * len(MECHANISM_COLUMNS), 3.2 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), len(MECHANISM_COLUMNS), squeeze=False)
    for row, (row_title, members) in enumerate(rows):
        optimizers = [o for o, _ in members]
        styles = _styles(optimizers)
        epochs = curves.loc[curves["optimizer"].isin(optimizers), EPOCH].dropna()
        for col, column in enumerate(MECHANISM_COLUMNS):
            ax = axes[row][col]
            bands = seed_bands(curves[curves["optimizer"].isin(optimizers)], column)
            for optimizer, label in members:
                band = bands[bands["optimizer"] == optimizer]
                if band.empty:
                    continue
                color, style = styles[optimizer]
                label = f"{label} (n={int(band['n'].max())})"
                # A curve evaluated once (an adversarial run tests at its end only) is a point, drawn as one.
                marker = "o" if len(band) == 1 else None
                ax.plot(band[EPOCH], band["mean"], style, color=color, label=label, marker=marker)
                if marker:  # its band is the min-max bar of the point
                    ax.vlines(band[EPOCH], band["low"], band["high"], color=color, alpha=0.4)
                else:
                    ax.fill_between(
                        band[EPOCH], band["low"], band["high"], color=color, alpha=0.2, linewidth=0
                    )
            if column in LOG_COLUMNS and ax.has_data():
                ax.set_yscale("log")
            _span_epochs(ax, epochs)
            ax.set_xlabel(EPOCH)
            ax.set_ylabel(TITLES[column].axis_label)
            ax.set_title(row_title, fontsize=9)
            if ax.has_data():
                ax.legend(fontsize=7)
            else:
                ax.text(0.5, 0.5, NOT_RECORDED, transform=ax.transAxes, ha="center", va="center", color="0.4")
    fig.suptitle(
        f"{title}: mean over seeds, band = min-max over seeds; effective step lr/||w||^2 for every optimizer; "
        "angle: RMS over filters and sampled steps of the angle a filter turns in one step",
        fontsize=9,
    )
    return fig


def _span_epochs(ax, epochs: pd.Series) -> None:
    """x axis over ``epochs`` (the first to the last recorded, with a 5% margin), integer ticks: a point
    measured at one epoch sits at that epoch, not in the middle of a range matplotlib makes around it."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if epochs.empty:
        return
    low, high = float(epochs.min()), float(epochs.max())
    pad = 0.05 * (high - low) if high > low else 0.5
    ax.set_xlim(low - pad, high + pad)


def mechanism_figures(
    runs_root: str | os.PathLike, out_dir: str | os.PathLike, curves: pd.DataFrame | None = None
) -> list[Path]:
    """``mechanism_<experiment>_<scale>.{png,pdf}`` for every (experiment, scale) with completed runs;
    ``curves``: ``read_epoch_curves(runs_root)`` when the caller has read it already."""
    curves = read_epoch_curves(runs_root) if curves is None else curves
    paths: list[Path] = []
    for (experiment, scale), group in curves.groupby(["experiment", "scale"], sort=True):
        fig = plot_mechanism(group, f"{experiment} ({scale})")
        if fig is not None:
            paths += save_figure(fig, Path(out_dir) / f"mechanism_{_safe(experiment)}_{_safe(scale)}")
    return paths


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(text))


# ---------------------------------------------------------------------------------------------------- toys


def plot_circle_toy(runs: Sequence[CircleRun], methods: Sequence[str], title: str) -> Figure:
    """Top row: the paths of w on the plane, one panel per momentum, with the unit circle and w*.
    Bottom row: ||w|| over iterations (log scale)."""
    momenta = sorted({run.momentum for run in runs})
    fig = Figure(figsize=(4.0 * len(momenta), 7.6), layout="constrained")
    axes = fig.subplots(2, len(momenta), squeeze=False)
    circle = np.linspace(0, 2 * np.pi, 400)
    for col, momentum in enumerate(momenta):
        path_ax, norm_ax = axes[0][col], axes[1][col]
        path_ax.plot(np.cos(circle), np.sin(circle), color="0.8", linewidth=0.8)
        for run in (r for r in runs if r.momentum == momentum and r.method in methods):
            color = TOY_COLORS.get(run.method)
            label = f"{METHOD_LABELS[run.method]}: ||w|| {run.norms[-1]:.2f}"
            path_ax.plot(run.weights[:, 0], run.weights[:, 1], color=color, linewidth=1, label=label)
            norm_ax.plot(run.norms, color=color, label=METHOD_LABELS[run.method])
        path_ax.plot(*runs[0].target, "k*", markersize=10, label="w*")
        path_ax.plot(*runs[0].weights[0], "ko", markersize=4, label="w_0")
        path_ax.set_aspect("equal", adjustable="datalim")
        path_ax.set_title(f"momentum {momentum}", fontsize=9)
        path_ax.legend(fontsize=6, loc="lower left")
        low, high = norm_ax.get_ylim()
        if high / max(low, 1e-12) > 10:  # momentum 0.99 reaches ~28: log scale, with plain labels
            norm_ax.set_yscale("log")
            norm_ax.yaxis.set_major_formatter(ScalarFormatter())
            norm_ax.yaxis.set_minor_formatter(NullFormatter())
        norm_ax.set_xlabel("iteration")
        norm_ax.set_ylabel("||w||")
        norm_ax.legend(fontsize=6)
    fig.suptitle(title, fontsize=9)
    return fig


def plot_hemisphere_toy(runs: Sequence[HemisphereRun], title: str) -> Figure:
    """Top row: paths in (psi, phi) on log Rosenbrock contours; bottom row: r = ||w|| over iterations."""
    fig = Figure(figsize=(4.0 * len(runs), 7.2), layout="constrained")
    axes = fig.subplots(2, len(runs), squeeze=False)
    psi, phi = np.meshgrid(np.linspace(-2.5, 2.0, 150), np.linspace(-1.0, 3.0, 150))
    contours = np.log10(rosenbrock(psi, phi) + 1e-3)
    for col, run in enumerate(runs):
        path_ax, norm_ax = axes[0][col], axes[1][col]
        path_ax.contour(psi, phi, contours, levels=15, cmap="Greys", linewidths=0.5)
        path_ax.plot(run.chart[:, 0], run.chart[:, 1], color="tab:orange", linewidth=1)
        path_ax.plot(*run.chart[0], "ko", markersize=4)
        path_ax.plot(*OPTIMUM, "k*", markersize=10)
        path_ax.set_xlabel("psi")
        path_ax.set_ylabel("phi")
        path_ax.set_title(HEMISPHERE_LABELS[run.method], fontsize=9)
        norm_ax.plot(run.norms, color="tab:orange")
        norm_ax.set_xlabel("iteration")
        norm_ax.set_ylabel("r = ||w||")
    fig.suptitle(title, fontsize=9)
    return fig


def _markdown_table(rows: Sequence[dict], columns: Sequence[str], digits: int = 4) -> str:
    """Rows as a markdown table; floats fixed to ``digits`` decimals except settings such as the momentum."""

    def cell(column: str, value) -> str:
        if isinstance(value, float) and column not in ("momentum", "lr"):
            return "-" if math.isnan(value) else f"{value:.{digits}f}"
        return str(value)

    lines = markdown_table(columns, [[cell(c, row.get(c, "")) for c in columns] for row in rows])
    return "\n".join(lines) + "\n"


def toy_outputs(out_dir: str | os.PathLike) -> list[Path]:
    """Run the toys and write their figures and number files under ``out_dir``.

    Files: ``toy_2d``, ``toy_2d_adam``, ``toy_3d`` (PNG + PDF); ``toy_2d_final_norms.csv`` (ours beside the
    project-page readings), ``toy_2d_lr_scan.csv`` (how the toy lr was fitted), ``toy_2d_adam.csv``,
    ``toy_3d.csv`` and ``toy_numbers.md`` (the tables as markdown, with their settings).
    """
    from adamp_repro.toy import circle2d as c2
    from adamp_repro.toy import hemisphere3d as h3
    from adamp_repro.toy.optimizers import optimizer_source

    out = Path(out_dir)
    gd_methods = (*c2.METHODS, *c2.OFFICIAL_METHODS)
    runs = c2.circle_toy_runs(methods=gd_methods)
    adaptive = c2.circle_toy_runs(methods=c2.ADAPTIVE_METHODS)
    hemisphere = [h3.run_hemisphere_toy(m) for m in h3.HEMISPHERE_METHODS]
    settings = (
        f"lr {c2.TOY_LR} on the loss -cos (fitted, see toy_2d_lr_scan.csv), {c2.TOY_STEPS} steps, "
        f"w_0 at angle pi - {c2.TOY_OFFSET} rad from w*, float64; SGDP/AdamP from `{optimizer_source()}`"
    )
    adam_settings = f"beta1 = momentum, beta2 = 0.999, lr {c2.TOY_LR}"
    hemi_settings = (
        f"lr {h3.HEMISPHERE_LR}, momentum {h3.HEMISPHERE_MOMENTUM}, L2 weight decay {h3.HEMISPHERE_WD} "
        f"(middle panel), {h3.HEMISPHERE_STEPS} steps"
    )
    paths = save_figure(plot_circle_toy(runs, gd_methods, f"2D cosine toy: {settings}"), out / "toy_2d")
    adam_fig = plot_circle_toy(
        adaptive, c2.ADAPTIVE_METHODS, f"2D cosine toy, Adam vs AdamP: {adam_settings}"
    )
    paths += save_figure(adam_fig, out / "toy_2d_adam")
    hemi_fig = plot_hemisphere_toy(hemisphere, f"Rosenbrock on a hemisphere: {hemi_settings}")
    paths += save_figure(hemi_fig, out / "toy_3d")

    tables = {
        "toy_2d_final_norms": c2.final_norm_rows(runs),
        "toy_2d_lr_scan": c2.learning_rate_scan(),
        "toy_2d_adam": [_without_paper(row) for row in c2.final_norm_rows(adaptive)],
        "toy_3d": h3.hemisphere_rows(hemisphere),
    }
    for name, rows in tables.items():
        atomic_write_text(out / f"{name}.csv", rows_to_csv(rows))
        paths.append(out / f"{name}.csv")
    norm_columns = ["momentum", "method", "final_norm", "paper_final_norm", "norm_rel_diff", "final_loss"]
    sections = [
        "# Toy numbers (generated by scripts/make_figures.py)\n",
        "## 2D cosine toy: final ||w||, ours beside the project-page videos\n",
        f"Settings: {settings}. `gd_momentum_projection` is the paper's Algorithm 1 (momentum buffer kept, "
        "applied update projected); `sgdp` is the official SGDP(nesterov=False), which projects the buffer "
        "in place.\n",
        _markdown_table(tables["toy_2d_final_norms"], [*norm_columns, "paper_final_loss"]),
        f"## 2D cosine toy: Adam vs AdamP (no paper numbers)\n\nSettings: {adam_settings}.\n",
        _markdown_table(tables["toy_2d_adam"], ["momentum", "method", "final_norm", "final_loss"]),
        "## 3D Rosenbrock on a hemisphere (the page: r ~3.1 / peak 2.5 then ~0.8 / 1.0-1.1)\n",
        f"Settings (ours, not the paper's): {hemi_settings}.\n",
        _markdown_table(tables["toy_3d"], list(tables["toy_3d"][0])),
    ]
    atomic_write_text(out / "toy_numbers.md", "\n".join(sections))
    return [*paths, out / "toy_numbers.md"]


def _without_paper(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith("paper") and k != "norm_rel_diff"}


def make_figures(runs_root: str | os.PathLike, out_dir: str | os.PathLike, toys: bool = True) -> list[Path]:
    """Every figure: the mechanism curves of the records under ``runs_root`` and, with ``toys``, the toys."""
    curves = read_epoch_curves(runs_root)  # read once for both kinds of figure
    paths = mechanism_figures(runs_root, out_dir, curves) + analysis_outputs(
        runs_root, out_dir, curves=curves
    )
    if toys:
        paths += toy_outputs(out_dir)
    return paths
