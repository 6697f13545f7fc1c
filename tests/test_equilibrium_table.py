"""The equilibrium table from made run records: measured against predicted rotation and norm, the surge, and the
matched pair paired by seed."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import yaml

from adamp_repro.optim import equilibrium as eq
from adamp_repro.results.equilibrium import equilibrium_outputs, equilibrium_rows, paired_rows, prediction_of
from adamp_repro.tracking.records import rows_to_csv

ADAM = {"lr": 0.01, "weight_decay": 1.0, "betas": [0.9, 0.99], "eps": 1e-8}
OPTIMIZERS = {
    "adamp": {"name": "adamp", **ADAM, "wd_ratio": 0.1, "delta": 0.1, "nesterov": False},
    "adamw_matched": {
        "name": "adamw_matched",
        "_target_": "torch.optim.AdamW",
        **ADAM,
        "scale_invariant_weight_decay": 1.9,
    },  # fmt: skip
}


def _make_run(root, optimizer: str, seed: int, angle_scale: float, top1: float) -> dict:
    """A run folder with 8 epochs: the norm surges to 1.5x at epoch 2, then settles; the angle is
    ``angle_scale`` x the prediction over the last quarter."""
    run_dir = root / f"{optimizer}-s{seed}"
    run_dir.mkdir(parents=True)
    cfg = OPTIMIZERS[optimizer]
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"optimizer": cfg}))
    found = prediction_of(cfg)
    angle = eq.angular_update(found.update, found.settings) * angle_scale
    norms = [1.2, 1.5, 1.3, 1.0, 0.8, 0.7, 0.65, 0.62]
    metrics = [
        {"epoch": e, "mean_filter_norm": n, "rms_filter_angle": angle if e >= 6 else 3 * angle}
        for e, n in enumerate(norms)
    ]
    (run_dir / "metrics.csv").write_text(rows_to_csv(metrics))
    diag = [
        {"epoch": e, "param": "conv.weight", "followed_by_norm": 1, "row_length": 144, "filter_norm": n,
         "filter_grad_norm_rms": 0.1, "filter_angle_rms": angle}  # fmt: skip
        for e, n in enumerate(norms)
    ] + [{"epoch": 7, "param": "fc.weight", "followed_by_norm": 0, "row_length": 64, "filter_norm": 3.0,
          "filter_grad_norm_rms": 0.1, "filter_angle_rms": ""}]  # fmt: skip
    (run_dir / "diagnostics.csv").write_text(rows_to_csv(diag))
    return {"table_id": "equilibrium", "optimizer": optimizer, "seed": seed, "scale": "mini",
            "run_dir": run_dir.name, "at_init_mean_filter_norm": 1.0, "final_eval_top1": top1}  # fmt: skip


def test_matched_adamw_is_predicted_with_its_scale_invariant_decay() -> None:
    found = prediction_of(OPTIMIZERS["adamw_matched"])
    assert found.update == "adamw" and found.settings["weight_decay"] == 1.9
    assert eq.angular_update("adamw", found.settings) == pytest.approx(
        eq.angular_update("adamp", OPTIMIZERS["adamp"]), rel=0.01
    )
    assert prediction_of({"name": "adam", **ADAM}) is None  # no prediction for coupled L2 Adam


def test_rows_pairs_and_files(tmp_path) -> None:
    runs = pd.DataFrame(
        [_make_run(tmp_path, "adamp", s, 1.05, 50.0 + s) for s in range(3)]
        + [_make_run(tmp_path, "adamw_matched", s, 1.30, 49.0 + s + 0.1 * s) for s in range(3)]
    )
    rows = equilibrium_rows(runs, "equilibrium", tmp_path)
    adamp = [r for r in rows if r["optimizer"] == "adamp"]
    assert all(r["angle_ratio"] == pytest.approx(1.05) and r["angle_holds"] for r in adamp)
    matched = [r for r in rows if r["optimizer"] == "adamw_matched"]
    assert all(r["angle_ratio"] == pytest.approx(1.30) and r["angle_holds"] is False for r in matched)
    assert all(r["surge"] == pytest.approx(1.5) and r["peak_epoch"] == 2 for r in rows)
    assert all(
        r["dead_layer_share"] == 0 and r["live_angle"] == pytest.approx(r["measured_angle"]) for r in rows
    )
    assert all(r["epochs_measured"] == "7-8" and r["measured_norm"] == pytest.approx(0.635) for r in rows)
    # The norm prediction: the conv layer only (the classifier is not scale-invariant), filter length 144.
    expected = eq.equilibrium_norm("adamp", OPTIMIZERS["adamp"], dim=144)
    assert adamp[0]["predicted_norm"] == pytest.approx(expected)
    (pair,) = paired_rows(rows)
    assert (pair["baseline"], pair["proposed"], pair["seeds"]) == ("adamw_matched", "adamp", 3)
    assert pair["diff"] == pytest.approx(1.0 - 0.1)  # per seed: 1 - 0.1 s, mean over s = 0, 1, 2
    assert pair["low"] < pair["diff"] < pair["high"] and pair["detectable"] > 0
    written = equilibrium_outputs(runs, tmp_path / "tables", tmp_path)
    assert sorted(p.name for p in written) == [
        "equilibrium_equilibrium.csv",
        "equilibrium_equilibrium.md",
        "equilibrium_equilibrium_pairs.csv",
    ]
    text = (tmp_path / "tables" / "equilibrium_equilibrium.md").read_text()
    assert "| adamw_matched | 0 |" in text and "**no**" in text
    assert not math.isnan(pd.read_csv(tmp_path / "tables" / "equilibrium_equilibrium_pairs.csv")["p"][0])


def test_ledger_rows_read_the_equilibrium_files(tmp_path) -> None:
    from adamp_repro.results.claims import equilibrium_claims

    tables = tmp_path / "tables"
    assert [c.verdict for c in equilibrium_claims(tables, tmp_path)] == ["not run"] * 3
    runs = pd.DataFrame(
        [_make_run(tmp_path, "adamp", s, 1.05, 50.0 + s) for s in range(3)]
        + [_make_run(tmp_path, "adamw_matched", s, 1.30, 49.0 + s + 0.1 * s) for s in range(3)]
    )
    equilibrium_outputs(runs, tables, tmp_path)
    e1, e2, e3 = equilibrium_claims(tables, tmp_path)
    assert e1.verdict == "not run"  # no SGD or plain AdamW run
    assert e2.verdict == "supported" and "adamp measured / predicted 1.05, 1.05, 1.05" in e2.ours
    assert e3.verdict == "supported" and e3.ours.startswith("AdamP - rotation-matched AdamW +0.90")
    assert "the matched arm at x1.24 of AdamP's rotation" in e3.ours
    assert all(c.table == "equilibrium" and c.paper.startswith("later theory") for c in (e1, e2, e3))
