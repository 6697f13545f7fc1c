"""The paper's ResNet-18 analysis (vanilla SGD, momentum SGD, SGDP under step decay) drawn from our runs.

The project page shows three figures side by side: the average weight norm, the average effective step size
and the top-1 accuracy per epoch (docs/paper.md §4.3). ``analysis_outputs`` draws the same three
panels from the runs of each analysis table (``ANALYSIS_TABLES``: ``imagenette_analysis``) and writes, beside
them, the paper's readings from ``results/paper/analysis_resnet18.csv``:

- ``analysis_<table>_<scale>.{png,pdf}``: the three panels, one line per curve (mean over seeds, band =
  min-max), epoch 0 = the initial weights, every panel over the same epochs (a top-1 measured once is a point
  at its epoch), dotted lines where a run's recorded lr steps down (with a legend entry worded from the
  recorded factor, e.g. "lr x0.1 after epoch 30, 60"; none when no lr fell), the paper's readings as text
  under each panel;
- ``analysis_<table>_<scale>.csv``: per curve, the numbers the sentences use;
- ``analysis_<table>_<scale>.md``: ours beside the paper's readings, with the growth of the norm and the
  ordering of the final accuracies in words.

Norms are per filter (mean over output channels of ||w_c||, then over the weights followed by a normalisation
layer): with Kaiming init that is about 1.4 at the start, the scale of the paper's figure (about 1.3); runs
recorded before the per-filter columns existed fall back to whole-tensor norms, and the files say which.
Because the paper's recipe, data and averaging differ from ours, absolute values are not compared: the growth
ratios (end / start) and the orderings are.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from adamp_repro import paths
from adamp_repro.results.compare import ANALYSIS_TABLES
from adamp_repro.results.curves import read_epoch_curves
from adamp_repro.results.render import save_figure
from adamp_repro.results.text import signed_pct
from adamp_repro.tracking.records import atomic_write_text, rows_to_csv
from adamp_repro.tracking.schema import MEAN_FILTER_NORM, MEAN_WEIGHT_NORM, at_init_key

PAPER_FILE = paths.paper_dir() / "analysis_resnet18.csv"
# (table block, optimizer) -> curve key of the paper's figures, label, colour. Other cells (e.g. SGDP without
# momentum in block "vanilla") are drawn dashed under their own label and have no paper reading.
CURVES = {
    ("vanilla", "sgd"): ("vanilla_sgd", "vanilla SGD", "tab:gray"),
    ("momentum", "sgd"): ("momentum_sgd", "momentum SGD", "tab:blue"),
    ("momentum", "sgdp"): ("sgdp", "SGDP", "tab:orange"),
    # The default table (``mechanism``) also runs the Adam pair beside the three SGD curves.
    ("momentum", "adam"): ("adam", "Adam", "tab:green"),
    ("momentum", "adamp"): ("adamp", "AdamP", "tab:red"),
}
CURVE_BY_KEY = {v[0]: v for v in CURVES.values()}
PANELS = (
    ("norm", "weight_norm", "average weight norm"),
    ("step", "effective_step_size", "average effective step size"),
    ("top1", "top1", "top-1 accuracy (%)"),
)
# Below this change of momentum SGD's norm (5%) a run is too short to show the paper's growth (x3 there).
NEGLIGIBLE_GROWTH = 0.05
# The paper's accuracy ordering (page text and figure): SGDP > momentum SGD > vanilla SGD.
PAPER_ORDER = ("sgdp", "momentum_sgd", "vanilla_sgd")


def load_paper_readings(path: str | os.PathLike = PAPER_FILE) -> pd.DataFrame:
    frame = pd.read_csv(path, dtype={"value": float})
    missing = {"curve", "quantity", "at", "value", "kind"} - set(frame.columns)
    if missing:
        raise ValueError(f"{path}: missing columns {sorted(missing)}")
    return frame


def analysis_curves(
    runs_root: str | os.PathLike, table_id: str, curves: pd.DataFrame | None = None
) -> pd.DataFrame:
    """One row per (run, x) of ``table_id``'s completed runs: x = 0 the initial weights, x = e after epoch e.

    Columns: ``scale``, ``curve``, ``label``, ``seed``, ``x``, ``norm``, ``step``, ``top1``, ``lr`` and
    ``norm_kind`` (``per filter`` or ``whole tensor``). ``curves``: ``read_epoch_curves(runs_root)`` when the
    caller has read it already.
    """
    curves = read_epoch_curves(runs_root) if curves is None else curves
    curves = curves[curves["table_id"] == table_id]
    columns = ["scale", "curve", "label", "seed", "x", "norm", "step", "top1", "lr", "norm_kind"]
    if curves.empty:
        return pd.DataFrame(columns=columns)
    frames = []
    for _, run in curves.groupby("run_dir", sort=True):
        key, label, _ = _curve(run["table_block"].iloc[0], run["optimizer"].iloc[0])
        per_filter = run["mean_filter_norm"].notna().all()
        norm_col, step_col = (
            ("mean_filter_norm", "filter_effective_step_size")
            if per_filter
            else ("mean_weight_norm", "effective_step_size")
        )
        init_col = at_init_key(MEAN_FILTER_NORM if per_filter else MEAN_WEIGHT_NORM)
        init = float(run[init_col].iloc[0])
        frame = pd.DataFrame(
            {
                "x": run["epoch"].to_numpy() + 1,
                "norm": run[norm_col].to_numpy(),
                "step": run[step_col].to_numpy(),
                "top1": run["eval_top1"].to_numpy(),
                "lr": run["lr"].to_numpy(),
            }
        )
        if not math.isnan(init):
            start = {"x": 0, "norm": float(init), "step": math.nan, "top1": math.nan, "lr": math.nan}
            frame = pd.concat([pd.DataFrame([start]), frame], ignore_index=True)
        frame["scale"], frame["curve"], frame["label"] = run["scale"].iloc[0], key, label
        frame["seed"] = run["seed"].iloc[0]
        frame["norm_kind"] = "per filter" if per_filter else "whole tensor"
        frames.append(frame)
    frame = pd.concat(frames, ignore_index=True)[columns]
    order = {key: i for i, key in enumerate(CURVE_BY_KEY)}
    rank = frame["curve"].map(lambda c: order.get(c, len(order)))
    return (
        frame.assign(_rank=rank)
        .sort_values(["_rank", "curve", "seed", "x"], kind="stable")
        .drop(columns="_rank")
    )


def _curve(block: str, optimizer: str) -> tuple[str, str, str | None]:
    found = CURVES.get((str(block).strip().lower(), str(optimizer).lower()))
    return found if found else (f"{block}_{optimizer}", f"{optimizer.upper()} ({block})", None)


def summarise_curves(curves: pd.DataFrame) -> pd.DataFrame:
    """Per (scale, curve): seeds, norm at init / final and their ratio, peak and final effective step,
    final top-1 (means over seeds) and the epochs where the lr stepped down."""
    rows = []
    for (scale, curve), group in curves.groupby(["scale", "curve"], sort=False):
        per_seed = [g.sort_values("x") for _, g in group.groupby("seed")]
        init = _mean([g.loc[g["x"] == 0, "norm"].mean() for g in per_seed])
        final = _mean([g["norm"].iloc[-1] for g in per_seed])
        peak_norm = _mean([g["norm"].max() for g in per_seed])
        trained = [g[g["x"] > 0] for g in per_seed]
        rows.append(
            {
                "scale": scale,
                "curve": curve,
                "label": group["label"].iloc[0],
                "n_seeds": len(per_seed),
                "epochs": int(group["x"].max()),
                "norm_kind": group["norm_kind"].iloc[0],
                "norm_init": init,
                "norm_peak": peak_norm,
                "norm_final": final,
                "norm_growth": final / init if init > 0 else math.nan,
                "step_peak": _mean([g["step"].max() for g in trained]),
                "step_final": _mean([g["step"].iloc[-1] for g in trained]),
                "top1_final": _mean(
                    [g["top1"].dropna().iloc[-1] for g in trained if g["top1"].notna().any()]
                ),
                "lr_drops_after_epoch": ";".join(str(x) for x in _lr_drops(trained[0])),
            }
        )
    return pd.DataFrame(rows)


def _mean(values) -> float:
    values = [float(v) for v in values if not (v is None or math.isnan(float(v)))]
    return float(np.mean(values)) if values else math.nan


def _lr_drops(run: pd.DataFrame) -> list[int]:
    """Epochs after which the lr fell by more than half (the step decays; warmup and cosine do not count)."""
    lr = run["lr"].to_numpy()
    x = run["x"].to_numpy()
    return [int(x[i - 1]) for i in range(1, len(lr)) if lr[i - 1] > 0 and lr[i] < 0.5 * lr[i - 1]]


def lr_steps(curves: pd.DataFrame) -> dict[int, list[float]]:
    """Where the recorded lr steps down in the runs of ``curves`` (``analysis_curves`` rows), by the rule of
    ``_lr_drops``: {epoch after which it fell: the factors new lr / old lr seen there, sorted}."""
    steps: dict[int, set[float]] = {}
    for _, run in curves.groupby(["scale", "curve", "seed"], sort=False):
        run = run[run["x"] > 0].sort_values("x").dropna(subset=["lr"])
        lr, x = run["lr"].to_numpy(), run["x"].to_numpy()
        for i in range(1, len(lr)):
            if lr[i - 1] > 0 and lr[i] < 0.5 * lr[i - 1]:
                steps.setdefault(int(x[i - 1]), set()).add(float(f"{lr[i] / lr[i - 1]:.2g}"))
    return {x: sorted(factors) for x, factors in sorted(steps.items())}


def _lr_steps_label(steps: dict[int, list[float]]) -> str:
    """The legend entry of the dotted lines, from the recorded factors: "lr x0.1 after epoch 30, 60"."""
    by_factor: dict[float, list[int]] = {}
    for x, factors in steps.items():
        for factor in factors:
            by_factor.setdefault(factor, []).append(x)
    parts = [f"lr x{f:g} after epoch {', '.join(str(x) for x in xs)}" for f, xs in sorted(by_factor.items())]
    return "dotted: " + "; ".join(parts) if parts else ""


def paper_growth(paper: pd.DataFrame) -> dict[str, tuple[float, float]]:
    """Per curve, the paper's (start, end) weight-norm readings (end: the last reading given)."""
    out = {}
    for curve, group in paper[paper["quantity"] == "weight_norm"].groupby("curve", sort=False):
        values = group["value"].tolist()
        out[curve] = (values[0], values[-1])
    return out


def plot_analysis(curves: pd.DataFrame, summary: pd.DataFrame, paper: pd.DataFrame, title: str) -> Figure:
    fig = Figure(figsize=(13.5, 4.6), layout="constrained")
    axes = fig.subplots(1, len(PANELS))
    drops = lr_steps(curves)
    drop_label = _lr_steps_label(drops)
    x_all = curves["x"].dropna()
    for ax, (column, quantity, ylabel) in zip(axes, PANELS):
        for curve, group in curves.groupby("curve", sort=False):
            _, label, color = CURVE_BY_KEY.get(curve, (curve, group["label"].iloc[0], None))
            bands = group.dropna(subset=[column]).groupby("x")[column].agg(["mean", "min", "max", "count"])
            if bands.empty:
                continue
            style = "-" if color else "--"
            ax.plot(
                bands.index,
                bands["mean"],
                style,
                color=color,
                marker=".",
                label=f"{label} (n={bands['count'].max()})",
            )
            ax.fill_between(bands.index, bands["min"], bands["max"], color=color, alpha=0.2, linewidth=0)
        for index, x in enumerate(sorted(drops)):  # one legend entry for all the lines
            label = drop_label if index == 0 and ax.has_data() else None
            ax.axvline(x, color="0.6", linestyle=":", linewidth=0.8, label=label)
        kind = curves["norm_kind"].iloc[0] if column == "norm" and len(curves) else ""
        ax.set_ylabel(f"{ylabel} ({kind})" if kind else ylabel)
        ax.set_xlabel("epoch (0 = initial weights)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(x_all):  # every panel over the run's epochs: a top-1 measured once sits at its epoch
            low, high = float(x_all.min()), float(x_all.max())
            pad = 0.05 * (high - low) if high > low else 0.5
            ax.set_xlim(low - pad, high + pad)
        if ax.has_data():
            ax.legend(fontsize=7)
        if column == "step" and ax.has_data():
            steps = curves["step"].dropna()
            if len(steps) and steps.min() > 0 and steps.max() / steps.min() > 20:
                ax.set_yscale("log")  # e.g. Adam's lr beside SGD's: two orders of magnitude apart
        text = _paper_text(paper, quantity)
        if column == "norm":
            text = _seed_growth_text(curves) + "\n" + text
        ax.text(
            0.0,
            -0.22,
            text,
            transform=ax.transAxes,
            fontsize=6.5,
            va="top",
            family="monospace",
        )
    fig.suptitle(title, fontsize=9)
    return fig


def _seed_growth_text(curves: pd.DataFrame) -> str:
    """Each seed's norm growth, initial weights to the last epoch, per curve: the figure states every seed."""
    lines = ["ours, growth per seed (initial -> end):"]
    for curve, group in curves.groupby("curve", sort=False):
        label = CURVE_BY_KEY[curve][1] if curve in CURVE_BY_KEY else group["label"].iloc[0]
        parts = []
        for seed, run in group.groupby("seed", sort=True):
            run = run.sort_values("x")
            start = run.loc[run["x"] == 0, "norm"]
            if len(start) and float(start.iloc[0]) > 0:
                parts.append(f"s{seed} {float(run['norm'].iloc[-1]) / float(start.iloc[0]) - 1.0:+.1%}")
        if parts:
            lines.append(f"  {label}: " + ", ".join(parts))
    return "\n".join(lines)


def _paper_text(paper: pd.DataFrame, quantity: str) -> str:
    rows = paper[paper["quantity"] == quantity]
    lines = ["paper (ResNet-18, ImageNet, 90 ep.):"]
    for curve, group in rows.groupby("curve", sort=False):
        label = CURVE_BY_KEY[curve][1] if curve in CURVE_BY_KEY else curve
        parts = [f"{r.at} {r.value:g}" for r in group.itertuples()]
        lines.append(f"  {label}: " + ", ".join(parts))
    return "\n".join(lines)


def analysis_markdown(table_id: str, scale: str, summary: pd.DataFrame, paper: pd.DataFrame) -> str:
    growth = paper_growth(paper)
    top1 = dict(paper.loc[paper["quantity"] == "top1", ["curve", "value"]].itertuples(index=False))
    kind = summary["norm_kind"].iloc[0]
    lines = [
        f"# {table_id} at scale `{scale}`: the ResNet-18 analysis on our data",
        "",
        "Ours: our runs' records (mean over seeds). Paper: `results/paper/analysis_resnet18.csv` (ResNet-18 on "
        "ImageNet, 90 epochs, step decay; mostly approximate figure readings). Absolute values are not comparable "
        "(other data, resolution, epochs and averaging): compare growth ratios and orderings.",
        "",
        f"| Curve | n | ‖w‖ init → final ({kind}) | growth | paper start → end | paper growth "
        "| eff. step peak / final | final top-1 | paper top-1 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in summary.itertuples():
        start, end = growth.get(r.curve, (math.nan, math.nan))
        lines.append(
            f"| {r.label} | {r.n_seeds} | {r.norm_init:.3f} → {r.norm_final:.3f} | ×{r.norm_growth:.3f} "
            f"| {_num(start)} → {_num(end)} | {_ratio(end / start)} "
            f"| {r.step_peak:.2e} / {r.step_final:.2e} | {r.top1_final:.2f} | {_one(top1.get(r.curve, math.nan))} |"
        )
    lines += ["", *analysis_sentences(summary, paper), ""]
    return "\n".join(lines)


def analysis_sentences(summary: pd.DataFrame, paper: pd.DataFrame) -> list[str]:
    """The mechanism and the accuracy ordering in words, ours against the paper's."""
    by_curve = summary.set_index("curve")
    growth = paper_growth(paper)
    sentences = []
    if {"momentum_sgd", "sgdp"} <= set(by_curve.index):
        m, p = by_curve.loc["momentum_sgd"], by_curve.loc["sgdp"]
        pm, pp = (growth[c][1] / growth[c][0] for c in ("momentum_sgd", "sgdp"))
        held = p.norm_growth < m.norm_growth
        text = (
            f"- Norm growth over {int(m.epochs)} epochs: momentum SGD {_pct(m.norm_growth)}, SGDP "
            f"{_pct(p.norm_growth)} (paper: ×{pm:.2f} vs ×{pp:.2f}); "
            + ("SGDP's is smaller, the paper's direction." if held else "SGDP's is not smaller.")
        )
        if abs(m.norm_growth - 1.0) < NEGLIGIBLE_GROWTH:
            text += (
                f" But momentum SGD's norm moved by less than {NEGLIGIBLE_GROWTH:.0%}: over this schedule the "
                "growth the paper shows has barely begun, too small to weigh as evidence either way."
            )
        else:
            text += (
                " SGDP held the growth back, as in the paper."
                if held
                else " SGDP did not hold the growth back here, unlike the paper."
            )
        sentences.append(text)
    if "vanilla_sgd" in by_curve.index and "momentum_sgd" in by_curve.index:
        v, m = by_curve.loc["vanilla_sgd"], by_curve.loc["momentum_sgd"]
        word = "more" if m.norm_growth > v.norm_growth else "not more"
        sentences.append(
            f"- Momentum SGD's norm grew {word} than vanilla SGD's ({_pct(m.norm_growth)} vs "
            f"{_pct(v.norm_growth)}; paper: more)."
        )
    present = [c for c in PAPER_ORDER if c in by_curve.index]
    if len(present) > 1:
        ours = sorted(present, key=lambda c: -by_curve.loc[c, "top1_final"])
        same = ours == [c for c in PAPER_ORDER if c in present]
        names = " > ".join(by_curve.loc[c, "label"] for c in ours)
        seeds = int(by_curve.loc[present, "n_seeds"].min())
        sentences.append(
            f"- Final top-1 ordering: ours {names}; the paper's SGDP > momentum SGD > vanilla SGD: "
            + ("the same order" if same else "a different order")
            + (
                f" (with {seeds} seed per curve there is no noise estimate: an order, not a significant gap)."
                if seeds < 2
                else "."
            )
        )
    return sentences


def _num(x: float) -> str:
    return "—" if x is None or math.isnan(x) else f"{x:g}"


def _pct(ratio: float) -> str:
    return signed_pct(ratio - 1.0, 2)


def _one(x: float) -> str:
    return "—" if x is None or math.isnan(x) else f"{x:.1f}"


def _ratio(x: float) -> str:
    return "—" if x is None or math.isnan(x) else f"×{x:.2f}"


def analysis_outputs(
    runs_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    paper_file: str | os.PathLike = PAPER_FILE,
    curves: pd.DataFrame | None = None,
) -> list[Path]:
    """Figure, CSV and markdown of every analysis table and scale with completed runs (``curves``: as in
    ``analysis_curves``)."""
    paths: list[Path] = []
    paper = None
    epoch_curves = read_epoch_curves(runs_root) if curves is None else curves
    for table_id in ANALYSIS_TABLES:
        table_curves = analysis_curves(runs_root, table_id, epoch_curves)
        if table_curves.empty:
            continue
        paper = load_paper_readings(paper_file) if paper is None else paper
        for scale, part in table_curves.groupby("scale", sort=True):
            summary = summarise_curves(part)
            stem = Path(out_dir) / f"analysis_{table_id}_{scale}"
            title = (
                f"{table_id} ({scale}): ours, mean over seeds (band min-max); effective step = lr / ||w_c||^2 "
                "per filter. Text: the paper's readings (ImageNet), not comparable in absolute value."
            )
            paths += save_figure(plot_analysis(part, summary, paper, title), stem)
            atomic_write_text(stem.with_suffix(".csv"), rows_to_csv(summary.to_dict("records")))
            atomic_write_text(
                stem.with_suffix(".md"), analysis_markdown(table_id, str(scale), summary, paper)
            )
            paths += [stem.with_suffix(".csv"), stem.with_suffix(".md")]
    return paths
