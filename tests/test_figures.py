"""Figures from run records written by the real record writer, and from the toys."""

from __future__ import annotations

import math

import pytest

from adamp_repro.results import analysis, figures
from adamp_repro.results.curves import read_epoch_curves
from adamp_repro.results.render import save_figure
from adamp_repro.toy import circle2d, hemisphere3d
from adamp_repro.tracking.records import RunRecord
from adamp_repro.tracking.schema import TITLES

EXPERIMENT, SCALE = "cifar10_resnet", "smoke"


def _write_run(
    root,
    optimizer: str,
    seed: int,
    with_summary_columns: bool,
    epochs: int = 3,
    angle: float | None = None,
    lr: tuple[float, ...] = (),
    eval_epochs: tuple[int, ...] | None = None,
    table: tuple[str, str] = ("C1", ""),
) -> None:
    """A completed run whose norms grow for the baselines and stay flat for the projected optimizers.

    ``angle``: the RMS angle per step recorded each epoch (none: a record from before the angles);
    ``lr``: the lr per epoch (default 0.1 throughout); ``eval_epochs``: the epochs with a top-1 (default all);
    ``table``: (table id, block)."""
    record = RunRecord(root / EXPERIMENT / SCALE / f"{optimizer}_s{seed}")
    identity = {
        "experiment": EXPERIMENT,
        "scale": SCALE,
        "optimizer": optimizer,
        "seed": seed,
        "table_id": table[0],
        **({"table_block": table[1]} if table[1] else {}),
    }
    record.start(f"optimizer: {{name: {optimizer}}}\n", {"seed": seed}, identity)
    growth = 0.0 if optimizer.endswith("p") else 0.5
    for epoch in range(epochs):
        norm = 2.0 + growth * epoch + 0.01 * seed
        row = {"epoch": epoch, "train_loss": 1.0 / (epoch + 1), "lr": lr[epoch] if lr else 0.1}
        if eval_epochs is None or epoch in eval_epochs:
            row["eval_top1"] = 50.0 + epoch + seed
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
        if angle is not None:
            row |= {"mean_filter_norm": norm / 4, "rms_filter_angle": angle / (epoch + 1)}
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
    assert len(axes) == 3 * len(figures.MECHANISM_COLUMNS)  # SGD, Adam and the row of its own
    last_row = axes[-len(figures.MECHANISM_COLUMNS) :]
    assert {ax.get_title() for ax in last_row} == {"lion vs SGDP"}
    legend = [t.get_text() for t in last_row[0].get_legend().get_texts()]
    assert legend == ["lion (n=2)", "SGDP (n=2)"]
    colours = [line.get_color() for line in last_row[0].get_lines()]
    assert len(set(colours)) == 2 and figures.OPTIMIZER_STYLE["sgdp"][0] in colours  # a free colour, no entry
    # Only the optimizer itself: still drawn.
    only = figures.plot_mechanism(curves[curves["optimizer"] == "lion"], "records")
    assert [ax.get_title() for ax in only.axes] == ["lion"] * len(figures.MECHANISM_COLUMNS)
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


def _axis(fig, column: str, row: int = 0):
    return fig.axes[row * len(figures.MECHANISM_COLUMNS) + figures.MECHANISM_COLUMNS.index(column)]


def test_the_angle_panel_draws_recorded_angles_and_says_when_none_were_recorded(tmp_path):
    root = tmp_path / "runs"
    for seed in (0, 1):
        _write_run(root, "sgdp", seed, with_summary_columns=True, angle=2e-3)
        _write_run(root, "sgd", seed, with_summary_columns=True)  # an older record: no angles
    curves = read_epoch_curves(root)
    assert curves.loc[curves["optimizer"] == "sgd", "rms_filter_angle"].isna().all()
    fig = figures.plot_mechanism(curves, "records")
    ax = _axis(fig, "rms_filter_angle")
    assert ax.get_ylabel() == TITLES["rms_filter_angle"].axis_label
    assert ax.get_yscale() == "log"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["SGDP (n=2)"]  # SGD: drawn nothing
    assert ax.get_lines()[0].get_ydata().tolist() == pytest.approx([2e-3, 1e-3, 2e-3 / 3])
    # Only older records: the panel says so and draws nothing.
    old = figures.plot_mechanism(curves[curves["optimizer"] == "sgd"], "records")
    empty = _axis(old, "rms_filter_angle")
    assert not empty.has_data() and [t.get_text() for t in empty.texts] == [figures.NOT_RECORDED]
    assert _axis(old, "mean_weight_norm").has_data()


def test_a_run_evaluated_once_is_a_point_at_its_epoch_on_the_runs_epochs(tmp_path):
    root = tmp_path / "runs"
    for optimizer in ("sgd", "sgdp"):
        _write_run(root, optimizer, 0, with_summary_columns=True, epochs=4, eval_epochs=(3,))
    fig = figures.plot_mechanism(read_epoch_curves(root), "records")
    ax = _axis(fig, "eval_top1")
    assert [line.get_xdata().tolist() for line in ax.get_lines()] == [[3], [3]]
    low, high = ax.get_xlim()
    assert low == pytest.approx(-0.15) and high == pytest.approx(3.15)  # epochs 0-3, 5% margin
    assert _axis(fig, "mean_weight_norm").get_xlim() == (low, high)


def _analysis_figure(root):
    curves = analysis.analysis_curves(root, "mechanism")
    summary = analysis.summarise_curves(curves)
    return analysis.plot_analysis(curves, summary, analysis.load_paper_readings(), "analysis")


def _legend_texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]


def test_analysis_figure_spans_the_epochs_and_names_lr_steps_only_where_recorded(tmp_path):
    constant, decayed = tmp_path / "constant", tmp_path / "decayed"
    for optimizer in ("sgd", "sgdp"):
        # Evaluated once, after the last of 3 epochs (mini_mechanism); x = epoch + 1, 0 = initial weights.
        _write_run(constant, optimizer, 0, True, eval_epochs=(2,), table=("mechanism", "momentum"))
        _write_run(decayed, optimizer, 0, True, lr=(0.2, 0.02, 0.002), table=("mechanism", "momentum"))
    fig = _analysis_figure(constant)
    top1 = fig.axes[2]
    assert [line.get_xdata().tolist() for line in top1.get_lines()] == [[3], [3]]
    low, high = top1.get_xlim()
    assert low < 1 and 3 < high < 3.5  # the run's epochs, not 2.84-3.16 around the point
    assert not [text for text in _legend_texts(fig) if "lr" in text]  # a constant lr: no dotted lines
    assert all(ax.get_xlabel() == "epoch (0 = initial weights)" for ax in fig.axes)
    decayed_fig = _analysis_figure(decayed)
    lr_entries = {text for text in _legend_texts(decayed_fig) if "lr" in text}
    assert lr_entries == {"dotted: lr x0.1 after epoch 1, 2"}
    assert {
        line.get_xdata()[0] for line in decayed_fig.axes[0].get_lines() if line.get_linestyle() == ":"
    } == {
        1,
        2,
    }
