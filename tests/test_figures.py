"""Figures from run records written by the real record writer, and from the toys."""

from __future__ import annotations

import math

import pytest

from adamp_repro.results import figures
from adamp_repro.results.curves import read_epoch_curves
from adamp_repro.results.render import save_figure
from adamp_repro.toy import circle2d, hemisphere3d
from adamp_repro.tracking.records import RunRecord
from adamp_repro.tracking.schema import TITLES

EXPERIMENT, SCALE = "cifar10_resnet", "smoke"


def _write_run(root, optimizer: str, seed: int, with_summary_columns: bool, epochs: int = 3) -> None:
    """A completed run whose norms grow for the baselines and stay flat for the projected optimizers."""
    record = RunRecord(root / EXPERIMENT / SCALE / f"{optimizer}_s{seed}")
    identity = {
        "experiment": EXPERIMENT,
        "scale": SCALE,
        "optimizer": optimizer,
        "seed": seed,
        "table_id": "C1",
    }
    record.start(f"optimizer: {{name: {optimizer}}}\n", {"seed": seed}, identity)
    growth = 0.0 if optimizer.endswith("p") else 0.5
    for epoch in range(epochs):
        norm = 2.0 + growth * epoch + 0.01 * seed
        row = {"epoch": epoch, "train_loss": 1.0 / (epoch + 1), "eval_top1": 50.0 + epoch + seed, "lr": 0.1}
        layer = {"epoch": epoch, "step": 10 * epoch + 9, "numel": 100, "weight_norm": norm}
        layer |= {
            "effective_step_size": 0.1 / norm**2,
            "abs_cos_max": 1e-6,
            "detected": 1.0,
            "followed_by_norm": 1,
        }
        diagnostics = [{**layer, "param": name} for name in ("conv1.weight", "conv2.weight")]
        if with_summary_columns:
            row |= {"mean_weight_norm": norm, "effective_step_size": 0.1 / norm**2}
        record.log_epoch(row, diagnostics)
    record.write_summary({**identity, "status": "completed", "final_eval_top1": 50.0 + epochs})


@pytest.fixture()
def runs_root(tmp_path):
    root = tmp_path / "runs"
    for optimizer in ("sgd", "sgdp", "adamw", "adamp"):
        for seed in (0, 1):
            # SGD runs carry the curves only in diagnostics.csv: the reader must rebuild them from the rows.
            _write_run(root, optimizer, seed, with_summary_columns=optimizer != "sgd")
    failed = RunRecord(root / EXPERIMENT / SCALE / "adamp_s9")
    failed.start("{}\n", {}, {"experiment": EXPERIMENT, "scale": SCALE, "optimizer": "adamp", "seed": 9})
    failed.write_summary({"status": "failed"})
    return root


def test_read_epoch_curves(runs_root):
    curves = read_epoch_curves(runs_root)
    assert len(curves) == 4 * 2 * 3  # the failed run is left out
    sgd = curves[(curves["optimizer"] == "sgd") & (curves["seed"] == 1)].sort_values("epoch")
    assert sgd["mean_weight_norm"].tolist() == pytest.approx([2.01, 2.51, 3.01])
    assert sgd["effective_step_size"].tolist() == pytest.approx([0.1 / n**2 for n in (2.01, 2.51, 3.01)])
    bands = figures.seed_bands(curves, "mean_weight_norm")
    first = bands[(bands["optimizer"] == "sgdp") & (bands["epoch"] == 0)].iloc[0]
    assert (first["mean"], first["low"], first["high"], first["n"]) == pytest.approx((2.005, 2.0, 2.01, 2))


def test_make_figures_from_records(runs_root, tmp_path):
    out = tmp_path / "figures"
    paths = figures.make_figures(runs_root, out, toys=False)
    stem = out / f"mechanism_{EXPERIMENT}_{SCALE}"
    assert sorted(paths) == [stem.with_suffix(".pdf"), stem.with_suffix(".png")]
    first = {p: p.read_bytes() for p in paths}
    assert all(len(b) > 1000 for b in first.values())
    figures.make_figures(runs_root, out, toys=False)
    assert {p: p.read_bytes() for p in paths} == first  # same records, same bytes
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left behind


def test_no_records_no_mechanism_figures(tmp_path):
    assert figures.make_figures(tmp_path / "missing", tmp_path / "out", toys=False) == []


def test_toy_figures(tmp_path):
    runs = circle2d.circle_toy_runs(momenta=(0.9, 0.99), steps=40)
    paths = save_figure(figures.plot_circle_toy(runs, circle2d.METHODS, "toy"), tmp_path / "toy_2d")
    hemi = [hemisphere3d.run_hemisphere_toy(m, steps=20) for m in hemisphere3d.HEMISPHERE_METHODS]
    paths += save_figure(figures.plot_hemisphere_toy(hemi, "toy"), tmp_path / "toy_3d")
    assert all(p.stat().st_size > 1000 for p in paths)


def test_markdown_table_formats_numbers():
    text = figures._markdown_table(
        [{"momentum": 0.95, "final_norm": 5.675081, "x": math.nan}], ["momentum", "final_norm", "x"]
    )
    assert text.splitlines()[2] == "| 0.95 | 5.6751 | - |"


def test_panel_rows_come_from_the_catalogue():
    everything = ("sgd", "sgdp", "adam", "adamw", "adamp")
    # The default table compares SGD/SGDP and Adam/AdamP, labelled as its columns.
    assert figures.panel_rows(["mechanism"], ["sgd", "sgdp", "adam", "adamp"]) == [
        ("SGD vs SGDP", (("sgd", "SGD"), ("sgdp", "SGDP"))),
        ("Adam vs AdamP", (("adam", "Adam"), ("adamp", "AdamP"))),
    ]
    # P4a_mini's three pairs share optimizers: one row, baselines first.
    assert figures.panel_rows(["P4a_mini"], ["adam", "adamp", "adamw"]) == [
        ("Adam vs AdamW vs AdamP", (("adam", "Adam"), ("adamw", "AdamW"), ("adamp", "AdamP")))
    ]
    # A row is drawn when any of its optimizers has runs; a table the catalogue does not list compares the
    # default pairs.
    assert [title for title, _ in figures.panel_rows(["mechanism"], ["sgd"])] == ["SGD vs SGDP"]
    assert [title for title, _ in figures.panel_rows(["C1"], everything)] == [
        "SGD vs SGDP",
        "AdamW vs Adam vs AdamP",
    ]


def test_an_optimizer_no_pair_names_gets_a_row_beside_the_proposed_one(runs_root):
    for seed in (0, 1):
        _write_run(runs_root, "lion", seed, with_summary_columns=True)
    rows = figures.panel_rows(["C1"], ["sgd", "sgdp", "adamw", "adamp", "lion"])
    assert rows[-1] == ("lion vs SGDP", (("lion", "lion"), ("sgdp", "SGDP")))
    curves = read_epoch_curves(runs_root)
    fig = figures.plot_mechanism(curves, "records")
    axes = fig.axes
    assert len(axes) == 3 * len(figures.CURVE_COLUMNS)  # SGD, Adam and the row of its own
    last_row = axes[-len(figures.CURVE_COLUMNS) :]
    assert {ax.get_title() for ax in last_row} == {"lion vs SGDP"}
    legend = [t.get_text() for t in last_row[0].get_legend().get_texts()]
    assert legend == ["lion (n=2)", "SGDP (n=2)"]
    colours = [line.get_color() for line in last_row[0].get_lines()]
    assert len(set(colours)) == 2 and figures.OPTIMIZER_STYLE["sgdp"][0] in colours  # a free colour, no entry
    # Only the optimizer itself: still drawn.
    only = figures.plot_mechanism(curves[curves["optimizer"] == "lion"], "records")
    assert [ax.get_title() for ax in only.axes] == ["lion"] * len(figures.CURVE_COLUMNS)
    assert only.axes[0].get_ylabel() == TITLES["mean_weight_norm"].axis_label


def test_an_adversarial_runs_clean_top1_is_its_top1_curve_and_a_single_point_is_drawn(tmp_path):
    root = tmp_path / "runs"
    record = RunRecord(root / EXPERIMENT / SCALE / "adam_s0")
    identity = {"experiment": EXPERIMENT, "scale": SCALE, "optimizer": "adam", "seed": 0, "table_id": "C1"}
    record.start("optimizer: {name: adam}\n", {"seed": 0}, identity)
    record.log_epoch({"epoch": 0, "train_loss": 1.0, "lr": 0.1, "mean_weight_norm": 2.0}, [])
    record.log_epoch(
        {"epoch": 1, "train_loss": 0.5, "lr": 0.1, "mean_weight_norm": 2.5, "eval_clean_top1": 41.0,
         "eval_robust_top1": 30.0},
        [],
    )  # fmt: skip
    record.write_summary({**identity, "status": "completed", "final_eval_clean_top1": 41.0})
    curves = read_epoch_curves(root)
    assert curves.sort_values("epoch")["eval_top1"].tolist()[1] == 41.0
    fig = figures.plot_mechanism(curves, "adversarial")
    top1_axes = [ax for ax in fig.axes if ax.get_ylabel().startswith("eval top-1")]
    assert [line.get_marker() for ax in top1_axes for line in ax.get_lines()] == ["o"]
