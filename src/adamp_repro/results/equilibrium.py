"""The rotational equilibrium on a real network: measured against predicted, per run, and the matched pair.

For each completed run of a table in ``EQUILIBRIUM_TABLES`` (its protocol: configs/experiment/
equilibrium.yaml), read from the run's own files:

- the **equilibrium rotation**: the RMS angle per step of the filters of the weights followed by a normalisation
  layer (``metrics.csv`` ``rms_filter_angle``, one value per epoch), over the last quarter of the epochs, as the
  root of the mean square; beside the prediction of ``optim.equilibrium.angular_update`` for the run's optimizer
  and hyper-parameters (``config.yaml``; a decay set on the scale-invariant weights alone,
  ``optimizer.scale_invariant_weight_decay``, is the decay those weights see);
- the **equilibrium norm**: the mean per-filter norm over the same epochs (``mean_filter_norm``) beside the mean
  over those layers of ``equilibrium_norm`` (each layer's filter length from ``diagnostics.csv`` ``row_length``;
  for the SGD family the gradient scale G = RMS gradient norm x filter norm, measured per layer and epoch);
- the **transient**: the largest mean per-filter norm over the epochs divided by its value at initialisation (the
  surge), and the epoch of the peak;
- final top-1.

A prediction holds in a run when measured / predicted lies in ``TOLERANCE`` (fixed in the experiment file before
any run). The pairs of the table (``PAIRS``) are compared on final top-1, paired by seed: the mean difference,
its 95% t interval, and the smallest difference these seeds detect (power 0.8).

Writes ``<table>_equilibrium.{md,csv}`` beside the tables; the claims ledger reads the csv.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from adamp_repro.optim import equilibrium as eq
from adamp_repro.results.stats import detectable_gain, paired_test
from adamp_repro.results.text import markdown_table
from adamp_repro.tracking.records import CONFIG_FILE, atomic_write_text, read_csv_rows, rows_to_csv
from adamp_repro.tracking.schema import (
    MEAN_FILTER_NORM,
    RMS_FILTER_ANGLE,
    TOP1,
    at_init_key,
    eval_key,
    final_key,
)

EQUILIBRIUM_TABLES = ("equilibrium",)
TOLERANCE = (0.85, 1.15)  # measured / predicted, fixed in the experiment file before any run
LAST_SHARE = 0.25  # the share of the epochs, at the end, over which the equilibrium is measured
# Torch classes a config may name by ``_target_``: the update they run, for the prediction.
TARGET_UPDATES = {"torch.optim.AdamW": "adamw", "torch.optim.SGD": "sgd"}
# (baseline, proposed) optimizer names compared on final top-1, paired by seed.
PAIRS = (("sgd", "sgdp"), ("adamw", "adamp"), ("adamw_matched", "adamp"))
FINAL_TOP1 = final_key(eval_key(TOP1))
INIT_NORM = at_init_key(MEAN_FILTER_NORM)


@dataclass(frozen=True)
class Prediction:
    update: str  # the optimizer whose update the run ran (sgd, sgdp, adamw, adamp)
    settings: dict[str, Any]  # its hyper-parameters, with the scale-invariant weights' decay


def prediction_of(optimizer: dict[str, Any]) -> Prediction | None:
    """The update a run's optimizer config runs and its hyper-parameters as the scale-invariant weights see
    them; None for an optimizer without a prediction (``optim.equilibrium`` says which have one)."""
    update = TARGET_UPDATES.get(str(optimizer.get("_target_")), str(optimizer.get("name")))
    if update not in eq.PREDICTED:
        return None
    settings = dict(optimizer)
    if settings.get("scale_invariant_weight_decay") is not None:
        settings["weight_decay"] = settings["scale_invariant_weight_decay"]
    return Prediction(update, settings)


def run_row(run: dict[str, Any], root: Path) -> dict[str, Any]:
    """One run's measured and predicted equilibrium (see the module docstring); ``root``: the folder the frame's
    ``run_dir`` is relative to. A record without its config or metrics file reads as not measured (NaN)."""
    run_dir = root / run["run_dir"]
    config = yaml.safe_load(_text(run_dir / CONFIG_FILE) or "{}") or {}
    epochs = [r for r in _rows(run_dir / "metrics.csv") if r.get(RMS_FILTER_ANGLE) not in (None, "")]
    last = epochs[-max(1, math.ceil(LAST_SHARE * len(epochs))) :] if epochs else []
    last_epochs = {int(r["epoch"]) for r in last}
    # diagnostics.csv rows of the scale-invariant layers over the measured epochs, read once
    layers = [
        r
        for r in _rows(run_dir / "diagnostics.csv")
        if int(r["epoch"]) in last_epochs and r.get("followed_by_norm") == "1"
    ]
    angles = [float(r[RMS_FILTER_ANGLE]) for r in last]
    norms = [float(r[MEAN_FILTER_NORM]) for r in epochs]
    measured_angle = math.sqrt(sum(a * a for a in angles) / len(angles)) if angles else math.nan
    measured_norm = sum(float(r[MEAN_FILTER_NORM]) for r in last) / len(last) if last else math.nan
    init = float(run.get(INIT_NORM, math.nan))
    peak = max(norms) if norms else math.nan
    row = {
        "optimizer": run["optimizer"],
        "seed": int(run["seed"]),
        "scale": run["scale"],
        "epochs_measured": f"{min(last_epochs) + 1}-{max(last_epochs) + 1}" if last_epochs else "",
        "measured_angle": measured_angle,
        "predicted_angle": math.nan,
        "angle_ratio": math.nan,
        "angle_holds": None,
        "measured_norm": measured_norm,
        "predicted_norm": math.nan,
        "norm_ratio": math.nan,
        "norm_holds": None,
        "init_norm": init,
        "surge": peak / init if init > 0 else math.nan,
        "peak_epoch": int(epochs[norms.index(peak)]["epoch"]) + 1 if norms else None,
        "final_top1": float(run.get(FINAL_TOP1, math.nan)),
        **_live_layers(layers),
        "run_dir": str(run["run_dir"]),
    }
    found = prediction_of(config["optimizer"]) if isinstance(config.get("optimizer"), dict) else None
    if found is None:
        return row
    row["predicted_angle"] = eq.angular_update(found.update, found.settings)
    row["predicted_norm"] = _predicted_norm(layers, found)
    for what in ("angle", "norm"):
        ratio = row[f"measured_{what}"] / row[f"predicted_{what}"]
        row[f"{what}_ratio"] = ratio
        row[f"{what}_holds"] = None if math.isnan(ratio) else TOLERANCE[0] <= ratio <= TOLERANCE[1]
    return row


def _live_layers(layers: list[dict[str, str]]) -> dict[str, float]:
    """Beside the protocol's measure (read, not judged): the share of the scale-invariant layers that are dead
    over the measured epochs (no gradient reaches them: a residual block switched off, its filters decayed towards
    0, which the random-walk model does not describe), and the RMS angle per step over the live layers alone.
    ``layers``: the diagnostics rows of the scale-invariant layers over the measured epochs."""
    dead, live, angles = 0, 0, []
    for r in layers:
        if not r.get("filter_grad_norm_rms"):
            continue
        if float(r["filter_grad_norm_rms"]) > 0:
            live += 1
            angles.append(float(r["filter_angle_rms"]))
        else:
            dead += 1
    total = dead + live
    return {
        "dead_layer_share": dead / total if total else math.nan,
        "live_angle": math.sqrt(sum(a * a for a in angles) / len(angles)) if angles else math.nan,
    }


def _text(path: Path) -> str | None:
    return path.read_text() if path.is_file() else None


def _rows(path: Path) -> list[dict[str, str]]:
    return read_csv_rows(path) if path.is_file() else []


def _predicted_norm(layers: list[dict[str, str]], found: Prediction) -> float:
    """Mean over the scale-invariant layers of each layer's predicted filter norm, averaged over the measured epochs
    (``layers``: their diagnostics rows; the SGD family's prediction needs each layer's measured gradient scale,
    which moves with the norm)."""
    per_epoch: dict[int, list[float]] = {}
    for r in layers:
        if not r.get("row_length"):
            continue
        scale = float(r["filter_grad_norm_rms"]) * float(r["filter_norm"])
        if not scale > 0:
            continue
        norm = eq.equilibrium_norm(found.update, found.settings, dim=int(r["row_length"]), grad_scale=scale)
        per_epoch.setdefault(int(r["epoch"]), []).append(norm)
    means = [sum(v) / len(v) for v in per_epoch.values() if v]
    return sum(means) / len(means) if means else math.nan


def paired_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per scale and pair of ``PAIRS`` with runs: proposed minus baseline final top-1, paired by seed."""
    out = []
    for scale in sorted({r["scale"] for r in rows}):
        by = {(r["optimizer"], r["seed"]): r for r in rows if r["scale"] == scale}
        for base, proposed in PAIRS:
            seeds = sorted(s for (o, s) in by if o == base and (proposed, s) in by)
            if not seeds:
                continue
            test = paired_test([by[proposed, s]["final_top1"] - by[base, s]["final_top1"] for s in seeds])
            n = len(seeds)
            row = {"scale": scale, "baseline": base, "proposed": proposed, "seeds": n, "diff": test.gain}
            row.update(low=test.ci_low, high=test.ci_high, p=test.p, detectable=detectable_gain(test))
            for side, name in (("baseline", base), ("proposed", proposed)):
                picked = [by[name, s] for s in seeds]
                row[f"{side}_angle"] = sum(r["measured_angle"] for r in picked) / n
                row[f"{side}_surge"] = sum(r["surge"] for r in picked) / n
            out.append(row)
    return out


def equilibrium_rows(runs: pd.DataFrame, table_id: str, root: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of ``table_id``'s runs; ``root``: the records' root (the frame's ``run_dir`` is relative to it)."""
    chosen = runs[runs["table_id"] == table_id]
    records = chosen.sort_values(["scale", "optimizer", "seed"]).to_dict("records")
    return [run_row(r, Path(root)) for r in records]


def _f(value: Any, spec: str) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _yes(value: bool | None) -> str:
    return "—" if value is None else "yes" if value else "**no**"


def equilibrium_markdown(table_id: str, rows: list[dict[str, Any]], pairs: list[dict[str, Any]]) -> str:
    low, high = TOLERANCE
    out = [
        f"# {table_id}: the rotational equilibrium, measured against predicted",
        "",
        "Generated from the run records (`metrics.csv` `rms_filter_angle`, `mean_filter_norm`; `diagnostics.csv`; "
        "`config.yaml`); do not edit by hand. A test of later theory (docs/equilibrium.md), not of the paper's "
        "text. Angle: RMS angle per step of the filters of the weights followed by a normalisation layer, over "
        f"the last {LAST_SHARE:.0%} of the epochs, radians. Norm: mean per-filter norm over the same epochs. "
        f"A prediction holds when measured / predicted is in [{low}, {high}] (fixed before any run). Surge: the "
        "largest mean per-filter norm over the epochs / its value at initialisation. Read beside them, not "
        "judged (added after the protocol was fixed): *dead layers*, the share of the scale-invariant layers no "
        "gradient reached over the measured epochs, and *live angle*, the RMS angle over the other layers.",
        "",
    ]
    if not rows:
        return "\n".join([*out, f"No completed run of table `{table_id}` yet.", ""])
    header = [
        "Optimizer",
        "Seed",
        "Angle",
        "Predicted",
        "Ratio",
        "Holds",
        "Norm",
        "Predicted",
        "Ratio",
        "Holds",
    ]
    header += ["Surge", "Peak epoch", "Top-1", "Dead layers", "Live angle"]
    for scale in sorted({r["scale"] for r in rows}):
        out += [f"## Scale `{scale}`: each run", ""]
        cells = [
            [
                r["optimizer"],
                str(r["seed"]),
                _f(r["measured_angle"], ".4f"),
                _f(r["predicted_angle"], ".4f"),
                _f(r["angle_ratio"], ".3f"),
                _yes(r["angle_holds"]),
                _f(r["measured_norm"], ".3f"),
                _f(r["predicted_norm"], ".3f"),
                _f(r["norm_ratio"], ".3f"),
                _yes(r["norm_holds"]),
                _f(r["surge"], ".2f"),
                str(r["peak_epoch"]),
                _f(r["final_top1"], ".2f"),
                _f(r["dead_layer_share"], ".0%"),
                _f(r["live_angle"], ".4f"),
            ]
            for r in rows
            if r["scale"] == scale
        ]
        out += markdown_table(header, cells, "lr" + "r" * (len(header) - 2)) + [""]
    if pairs:
        out += ["## Pairs: final top-1, proposed minus baseline, paired by seed", ""]
        head = ["Scale", "Baseline", "Proposed", "Seeds", "Diff", "95% CI", "p", "Detectable"]
        head += ["Angle base / proposed", "Surge base / proposed"]
        cells = [
            [
                p["scale"],
                p["baseline"],
                p["proposed"],
                str(p["seeds"]),
                _f(p["diff"], "+.2f"),
                f"[{_f(p['low'], '+.2f')}, {_f(p['high'], '+.2f')}]",
                _f(p["p"], ".2f"),
                _f(p["detectable"], ".2f"),
                f"{_f(p['baseline_angle'], '.4f')} / {_f(p['proposed_angle'], '.4f')}",
                f"{_f(p['baseline_surge'], '.2f')} / {_f(p['proposed_surge'], '.2f')}",
            ]
            for p in pairs
        ]
        out += markdown_table(head, cells, "lll" + "r" * (len(head) - 3)) + [""]
        out.append(
            "Detectable: the smallest paired difference these seeds find with power 0.8 (two-sided, alpha 0.05, "
            "the observed spread of the differences)."
        )
        out.append("")
    return "\n".join(out) + "\n"


def equilibrium_outputs(
    runs: pd.DataFrame, out_dir: str | os.PathLike, root: str | os.PathLike
) -> list[Path]:
    """Write ``<table>_equilibrium.{md,csv}`` and ``<table>_equilibrium_pairs.csv`` for each table of
    ``EQUILIBRIUM_TABLES`` with runs (records under ``root``); return the paths."""
    written = []
    for table_id in EQUILIBRIUM_TABLES:
        if runs.empty or not (runs["table_id"] == table_id).any():
            continue
        rows = equilibrium_rows(runs, table_id, root)
        pairs = paired_rows(rows)
        out = Path(out_dir)
        files = {
            out / f"{table_id}_equilibrium.md": equilibrium_markdown(table_id, rows, pairs),
            out / f"{table_id}_equilibrium.csv": rows_to_csv(rows) if rows else "optimizer,seed\n",
            out / f"{table_id}_equilibrium_pairs.csv": rows_to_csv(pairs) if pairs else "baseline,proposed\n",
        }
        for path, text in files.items():
            atomic_write_text(path, text)
            written.append(path)
    return written
