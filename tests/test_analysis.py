"""The ResNet-18 analysis outputs (figure, CSV, markdown) from records written by the real record writer."""

from __future__ import annotations

import pytest

from adamp_repro.results import analysis
from adamp_repro.tracking.records import RunRecord

TABLE, SCALE = "imagenette_analysis", "mini"
# (block, optimizer) -> per-filter norm after each of 4 epochs; the initial norm is 1.4 for every run.
NORMS = {
    ("momentum", "sgd"): [2.0, 2.6, 2.8, 2.8],
    ("momentum", "sgdp"): [1.6, 1.7, 1.75, 1.75],
    ("vanilla", "sgd"): [1.5, 1.55, 1.6, 1.6],
}
TOP1 = {("momentum", "sgd"): 60.0, ("momentum", "sgdp"): 62.0, ("vanilla", "sgd"): 50.0}
LR = [0.1, 0.1, 0.01, 0.001]  # steps down after epochs 2 and 3


def _write_run(root, block: str, optimizer: str, seed=0, per_filter=True, norms=None) -> None:
    experiment = f"analysis_{block}"
    record = RunRecord(root / experiment / SCALE / f"{optimizer}_s{seed}")
    identity = {"experiment": experiment, "scale": SCALE, "optimizer": optimizer, "seed": seed}
    identity |= {"table_id": TABLE, "table_block": block, "table_model": "ResNet18"}
    record.start(f"optimizer: {{name: {optimizer}}}\n", {"seed": seed}, identity)
    norms = norms or NORMS[(block, optimizer)]
    for epoch, (norm, lr) in enumerate(zip(norms, LR)):
        row = {"epoch": epoch, "lr": lr, "eval_top1": TOP1[(block, optimizer)] - 3 + epoch + seed}
        row |= {"mean_weight_norm": 10 * norm, "effective_step_size": lr / (10 * norm) ** 2}
        if per_filter:
            row |= {"mean_filter_norm": norm, "filter_effective_step_size": lr / norm**2}
        record.log_epoch(row, [])
    summary = {**identity, "status": "completed", "final_eval_top1": row["eval_top1"]}
    summary |= {"at_init_mean_weight_norm": 14.0, "at_init_mean_filter_norm": 1.4}
    record.write_summary(summary)


@pytest.fixture()
def runs_root(tmp_path):
    root = tmp_path / "runs"
    for block, optimizer in NORMS:
        _write_run(root, block, optimizer)
    return root


def test_curves_start_at_the_initial_weights_and_use_per_filter_norms(runs_root):
    curves = analysis.analysis_curves(runs_root, TABLE)
    momentum = curves[curves["curve"] == "momentum_sgd"].sort_values("x")
    assert momentum["x"].tolist() == [0, 1, 2, 3, 4]
    assert momentum["norm"].tolist() == pytest.approx([1.4, *NORMS[("momentum", "sgd")]])
    assert set(curves["norm_kind"]) == {"per filter"}
    summary = analysis.summarise_curves(curves).set_index("curve")
    assert summary.loc["momentum_sgd", "norm_growth"] == pytest.approx(2.8 / 1.4)
    assert summary.loc["sgdp", "step_peak"] == pytest.approx(0.1 / 1.6**2)
    assert summary.loc["sgdp", "top1_final"] == pytest.approx(62.0)
    assert summary.loc["vanilla_sgd", "lr_drops_after_epoch"] == "2;3"


def test_outputs_set_the_paper_readings_beside_ours(runs_root, tmp_path):
    out = tmp_path / "figures"
    paths = analysis.analysis_outputs(runs_root, out)
    stem = out / f"analysis_{TABLE}_{SCALE}"
    assert sorted(p.name for p in paths) == sorted(f"{stem.name}.{e}" for e in ("png", "pdf", "csv", "md"))
    first = {p: p.read_bytes() for p in paths}
    markdown = stem.with_suffix(".md").read_text()
    # The paper's readings: momentum 1.3 -> 3.95 (x3.04), SGDP 1.25 -> 1.93 (x1.54).
    assert "| momentum SGD | 1 | 1.400 → 2.800 | ×2.000 | 1.3 → 3.95 | ×3.04 |" in markdown
    assert "over 4 epochs: momentum SGD +100.00%, SGDP +25.00% (paper: ×3.04 vs ×1.54)" in markdown
    assert "SGDP's is smaller, the paper's direction. SGDP held the growth back, as in the paper." in markdown
    assert "ours SGDP > momentum SGD > vanilla SGD" in markdown and "the same order" in markdown
    # Rebuilding from the same records gives the same bytes (no dates in the files).
    analysis.analysis_outputs(runs_root, out)
    assert {p: p.read_bytes() for p in paths} == first


def test_growth_too_small_to_read_is_said(tmp_path):
    root = tmp_path / "runs"
    for block, optimizer in NORMS:
        # momentum SGD +1% (below NEGLIGIBLE_GROWTH), SGDP +2%: no claim either way, only the facts
        norms = {"sgd": [1.414] * 4, "sgdp": [1.428] * 4}[optimizer] if block == "momentum" else None
        _write_run(root, block, optimizer, norms=norms)
    summary = analysis.summarise_curves(analysis.analysis_curves(root, TABLE))
    text = "\n".join(analysis.analysis_sentences(summary, analysis.load_paper_readings()))
    assert "momentum SGD +1.00%, SGDP +2.00% (paper: ×3.04 vs ×1.54); SGDP's is not smaller." in text
    assert "moved by less than 5%" in text and "too small to weigh as evidence either way" in text
    assert "held the growth back" not in text
    assert "Momentum SGD's norm grew not more than vanilla SGD's (+1.00% vs +14.29%; paper: more)." in text


def test_older_records_fall_back_to_whole_tensor_norms(tmp_path):
    root = tmp_path / "runs"
    _write_run(root, "momentum", "sgd", per_filter=False)
    curves = analysis.analysis_curves(root, TABLE)
    assert set(curves["norm_kind"]) == {"whole tensor"}
    assert curves.sort_values("x")["norm"].iloc[0] == pytest.approx(14.0)


def test_no_analysis_runs_writes_nothing(tmp_path):
    assert analysis.analysis_outputs(tmp_path / "empty", tmp_path / "out") == []
