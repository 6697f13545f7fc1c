"""Results pipeline: run records -> collect -> paper-vs-ours tables (md, tex, csv) -> W&B mirror.

Records are written through the real ``RunRecord`` writer, so a change to the record contract breaks here.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import statistics
from pathlib import Path

import pandas as pd
import pytest
import yaml

from adamp_repro.results import stats
from adamp_repro.results.build import build_tables, log_tables_to_wandb
from adamp_repro.results.collect import RunProblem, collect_runs
from adamp_repro.results.compare import compare_table
from adamp_repro.results.reference import PAPER_COLUMNS, load_paper_numbers, read_reference_csv
from adamp_repro.results.tables import latex_escape, layout_table, render_latex, render_markdown
from adamp_repro.tracking.records import RunRecord, atomic_write_text

# One worker builds this module's fixtures (make test runs pytest-xdist).
pytestmark = pytest.mark.xdist_group("results")

REPO = Path(__file__).resolve().parents[1]
PAPER_DIR = REPO / "results" / "paper"
PAPER_REFERENCE = PAPER_DIR / "reference.csv"  # the transcription of the paper's printed cells

P1_SGD = [70.1, 70.3, 70.2]
P1_SGDP = [70.6, 70.9, 70.8]
MINI = {  # optimizer -> (top-1 per seed, initial norm, final norm, final effective step size)
    "sgd": ([61.3, 59.7], 3.65, 3.95, 1.1e-3),
    "sgdp": ([63.4, 59.0], 3.42, 3.45, 1.6e-3),
    "adamw": ([60.7, 60.5], 3.46, 3.65, 2.0e-4),
    "adamp": ([62.4], 3.40, 3.40, 2.4e-4),
}


def write_run(
    root: Path,
    *,
    table_id,
    block,
    model,
    optimizer,
    seed,
    scale="paper",
    status="completed",
    name=None,
    metrics=None,
    dataset_label="ImageNet-1k (ILSVRC-2012)",
    folder_scale=None,
) -> Path:
    """One run folder written the way the trainer writes it (``folder_scale``: a folder that lies)."""
    experiment = f"{table_id}_{model}".lower().replace(" ", "_")
    run_name = name or f"{model}-{optimizer}-s{seed}"
    run_dir = root / experiment / (folder_scale or scale) / run_name
    identity = {
        "run_name": run_name,
        "experiment": experiment,
        "scale": scale,
        "seed": seed,
        "model": model.lower(),
        "dataset": "imagenet",
        "dataset_label": dataset_label,
        "optimizer": optimizer,
        "table_id": table_id,
        "table_block": block,
        "table_model": model,
        "epochs_planned": 2,
    }
    record = RunRecord(run_dir)
    config = {"optimizer": {"name": optimizer}, "seed": seed, "scale": {"name": scale}}
    record.start(yaml.safe_dump(config), {"git_commit": "0" * 40, "dirty": False, "seed": seed}, identity)
    metrics = metrics or {}
    record.log_epoch(
        {"epoch": 0, "train_loss": 1.0, "eval_top1": metrics.get("final_eval_top1", 0.0)},
        diagnostics=[{"epoch": 0, "param": "conv1.weight", "norm": 1.0}],
    )
    if status != "running":
        record.write_summary({**identity, "status": status, "epochs": 2, "wall_time_s": 1.0, **metrics})
    return run_dir


def p1_run(root: Path, optimizer: str, seed: int, top1=None, model="ResNet18", extra=None, **kw) -> Path:
    metrics = ({} if top1 is None else {"final_eval_top1": top1}) | (extra or {})
    return write_run(root, table_id="P1", block="imagenet", model=model, optimizer=optimizer, seed=seed,
                     metrics=metrics, **kw)  # fmt: skip


def mini_run(root: Path, optimizer: str, seed: int, metrics: dict) -> Path:
    return write_run(root, table_id="mini", block="embedded", model="CIFAR ResNet-20", optimizer=optimizer, seed=seed,
                     scale="mini", dataset_label="CIFAR-10 mini subset (JPEG copy)", metrics=metrics)  # fmt: skip


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Written once per module (fsync per file is slow on a busy disk); tests only read it."""
    root = tmp_path_factory.mktemp("records") / "runs"
    for seed, (a, b) in enumerate(zip(P1_SGD, P1_SGDP)):
        p1_run(root, "sgd", seed, a)
        p1_run(root, "sgdp", seed, b)
    p1_run(root, "sgdp", 0, 10.0, name="zz-rerun")  # a second record of seed 0: neither may count
    for optimizer, value in (("adamw", 70.5), ("adam", 70.0), ("adamp", 70.9)):
        p1_run(root, optimizer, 0, value)
    for optimizer, (values, w0, w1, step) in MINI.items():
        for seed, value in enumerate(values):
            mini_run(root, optimizer, seed, {"final_eval_top1": value, "epoch1_mean_weight_norm": w0,
                                             "final_mean_weight_norm": w1, "final_effective_step_size": step})  # fmt: skip
    # An older record without diagnostics keys: counted, its mechanism columns stay missing.
    mini_run(root, "adamp", 1, {"final_eval_top1": 63.2})
    for optimizer, clean, robust in (("adam", 80.0, 56.0), ("adamp", 89.0, 66.0)):
        write_run(root, table_id="P4a", block="linf eps=4/255", model="Wide-ResNet", optimizer=optimizer, seed=0,
                  scale="smoke", dataset_label="CIFAR-10",
                  metrics={"final_eval_top1": clean, "final_eval_clean_top1": clean,
                           "final_eval_robust_top1": robust, "attacks": {"eval": {"steps": 10}}})  # fmt: skip
    p1_run(root, "sgd", 3, status="failed")
    p1_run(root, "sgd", 4, status="running")
    (p1_run(root, "sgd", 0, 76.0, model="ResNet50") / "summary.json").write_text('{"status": "compl')
    (p1_run(root, "sgdp", 0, 76.0, model="ResNet50") / "config.yaml").write_text("optimizer: [unclosed\n")
    p1_run(root, "adam", 0, "76.0", model="ResNet50")  # a number written as text
    atomic_write_text(root / "p1_resnet50" / "paper" / "half-written" / "config.yaml", "seed: 0\n")
    return root


@pytest.fixture
def paper() -> pd.DataFrame:
    return load_paper_numbers(PAPER_DIR)


def test_collect_counts_only_completed_and_reports_broken(runs_root: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="adamp_repro.results.collect"):
        runs, problems = collect_runs(runs_root)
    assert len(runs) == 5 + 3 + 8 + 2  # P1 (less both records of a duplicate seed), mini, P4a
    assert set(runs["status"]) == {"completed"}
    broken = {p.path: p.detail for p in problems if p.kind == "broken"}
    assert broken == {
        "p1_resnet50/paper/ResNet50-sgd-s0": "unreadable summary.json: Unterminated string starting at: line 1 "
        "column 12 (char 11)",
        "p1_resnet50/paper/ResNet50-sgdp-s0": broken["p1_resnet50/paper/ResNet50-sgdp-s0"],
        "p1_resnet50/paper/ResNet50-adam-s0": "final_eval_top1 must be a number or null, got '76.0'",
        "p1_resnet50/paper/half-written": "no summary.json (half-written or never started)",
    }
    assert broken["p1_resnet50/paper/ResNet50-sgdp-s0"].startswith("unreadable config.yaml")
    statuses = {p.detail for p in problems if p.kind == "not_completed"}
    assert statuses == {"status 'failed'", "status 'running'"}
    duplicates = sorted(p.path for p in problems if p.kind == "duplicate")
    assert duplicates == ["p1_resnet18/paper/ResNet18-sgdp-s0", "p1_resnet18/paper/zz-rerun"]
    assert all(path in caplog.text for path in broken)
    assert runs["run_dir"].is_monotonic_increasing
    older = runs[(runs["optimizer"] == "adamp") & (runs["table_id"] == "mini") & (runs["seed"] == 1)]
    assert math.isnan(older["final_mean_weight_norm"].item())


def test_collect_missing_root_and_wandb_offline(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    runs, problems = collect_runs(tmp_path / "nothing", wandb_project="someone/adamp-repro")
    assert runs.empty and list(runs.columns)[:3] == ["run_dir", "source", "status"]
    assert [p.kind for p in problems] == ["wandb"] and "WANDB_MODE=offline" in problems[0].detail


def test_collect_reads_wandb_summaries_without_history(runs_root: Path, monkeypatch) -> None:
    wandb = pytest.importorskip("wandb")
    disk = yaml.safe_load((runs_root / "p1_resnet18/paper/ResNet18-sgd-s0/summary.json").read_text())

    class FakeRun:
        def __init__(self, run_id, state, summary):
            self.path, self.state, self.summary_metrics, self.config = (
                ["me", "proj", run_id],
                state,
                summary,
                {},
            )

        def history(self, *args, **kwargs):
            raise AssertionError("history() samples; tables must not use it")

    mirrored_only = {**disk, "run_name": "ResNet18-sgd-s9", "seed": 9, "final_eval_top1": 70.0}
    fake_runs = [FakeRun("a", "finished", disk), FakeRun("b", "finished", mirrored_only),
                 FakeRun("c", "running", {"table_id": "P1"})]  # fmt: skip
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setattr(
        wandb, "Api", lambda **kwargs: type("FakeApi", (), {"runs": lambda self, p: fake_runs})()
    )
    runs, problems = collect_runs(runs_root, wandb_project="me/proj")
    from_wandb = runs[runs["source"] == "wandb"]
    assert from_wandb["run_dir"].tolist() == ["wandb:me/proj/b"] and from_wandb["seed"].tolist() == [9]
    assert RunProblem("wandb:me/proj/c", "not_completed", "status 'running'") in problems


def test_p1_cells_put_paper_beside_mean_std_n(runs_root: Path, paper: pd.DataFrame) -> None:
    runs, _ = collect_runs(runs_root)
    comparison = compare_table("P1", runs, paper)
    cells = comparison.cells.set_index(["model", "optimizer"])
    sgd = cells.loc[("ResNet18", "SGD")]
    assert (sgd["paper"], sgd["scale"], sgd["n_seeds"]) == (70.28, "paper", 3)
    assert sgd["ours_mean"] == pytest.approx(statistics.mean(P1_SGD))
    assert sgd["ours_std"] == pytest.approx(statistics.stdev(P1_SGD))
    assert sgd["diff"] == pytest.approx(statistics.mean(P1_SGD) - 70.28)
    assert bool(sgd["within_tolerance"]) is True
    sgdp = cells.loc[("ResNet18", "SGDP")]  # seed 0 has two records: both left out, neither guessed
    assert sgdp["n_seeds"] == 2 and sgdp["ours_mean"] == pytest.approx(statistics.mean(P1_SGDP[1:]))
    adam = cells.loc[("ResNet18", "Adam")]  # adamw wins over adam for the paper's Adam column
    assert (adam["our_optimizer"], adam["n_seeds"], adam["ours_mean"]) == ("adamw", 1, 70.5)
    assert math.isnan(adam["ours_std"])
    empty = cells.loc[("MobileNetV2", "SGD")]
    assert empty["n_seeds"] == 0 and math.isnan(empty["ours_mean"]) and empty["paper"] == 71.61
    assert not any("zz-rerun" in n for n in comparison.notes)  # collect_runs alone hands no left-out rows on
    assert any("ResNet18-adam-s0" in n for n in comparison.notes)  # adam run not placed: adamw fills Adam

    markdown = render_markdown(layout_table(comparison, paper))
    assert "| ResNet18 | SGD | sgd | 70.28 | ±0.41 | 70.20 ± 0.10 | 3 | -0.08 | yes |" in markdown
    assert "| MobileNetV2 | SGD | — | 71.61 | ±0.40 | — | 0 | — | — |" in markdown
    assert "Ours at scale `paper`; data: ImageNet-1k (ILSVRC-2012)" in markdown


def test_gains_use_welch_and_say_when_one_seed(runs_root: Path, paper: pd.DataFrame) -> None:
    runs, _ = collect_runs(runs_root)
    gains = compare_table("P1", runs, paper).gains.set_index(["model", "proposed"])
    sgdp = gains.loc[("ResNet18", "SGDP")]
    expected = stats.welch_test(P1_SGD, P1_SGDP[1:])
    assert sgdp["paper_gain"] == pytest.approx(70.73 - 70.28)
    assert sgdp["ours_gain"] == pytest.approx(expected.gain)
    assert sgdp["p_value"] == pytest.approx(expected.p) and sgdp["test"] == "welch_t"
    assert bool(sgdp["sign_agrees"]) is True and bool(sgdp["beyond_noise"]) is (expected.p < 0.05)
    adamp = gains.loc[("ResNet18", "AdamP")]
    assert (adamp["baseline"], adamp["our_baseline"], adamp["test"]) == ("Adam", "adamw", "n/a (one seed)")
    assert math.isnan(adamp["p_value"]) and adamp["ours_gain"] == pytest.approx(70.9 - 70.5)
    # Power beside the gain: Welch's interval, the detectable gain, the seeds for the printed +0.45.
    assert (sgdp["ci_low"], sgdp["ci_high"]) == (
        pytest.approx(expected.ci_low),
        pytest.approx(expected.ci_high),
    )
    assert sgdp["detectable_gain"] == pytest.approx(stats.detectable_gain(expected))
    assert sgdp["target_gain"] == pytest.approx(0.45) and sgdp["target_source"] == "P1"
    assert sgdp["seeds_needed"] == stats.seeds_needed(expected, 0.45) >= 2
    assert all(math.isnan(adamp[k]) for k in ("ci_low", "detectable_gain", "seeds_needed"))
    markdown = render_markdown(layout_table(compare_table("P1", runs, paper), paper))
    row = (f"| ResNet18 | SGDP − SGD | +0.45 | {expected.gain:+.2f} | [{expected.ci_low:+.2f}, "
           f"{expected.ci_high:+.2f}] | 2 vs 3 |")  # fmt: skip
    assert row in markdown
    assert f"| {stats.detectable_gain(expected):.2f} | {int(sgdp['seeds_needed'])} |" in markdown
    assert "| n/a (one seed) | n/a (one seed) | n/a (one seed) | n/a (one seed) |" in markdown


def test_mini_table_shows_scale_mechanism_and_noise_in_words(runs_root: Path, paper: pd.DataFrame) -> None:
    runs, _ = collect_runs(runs_root)
    doc = layout_table(compare_table("mini", runs, paper), paper)
    markdown = render_markdown(doc)
    assert "Ours at scale `mini`; data: CIFAR-10 mini subset (JPEG copy)" in markdown
    assert "‖w‖ after epoch 1 → final" in markdown and "3.650 → 3.950" in markdown and "1.60e-03" in markdown
    assert (
        "SGDP vs SGD (CIFAR ResNet-20 / embedded, top-1 (%)): +0.70 points is not beyond seed noise"
        in markdown
    )
    assert "includes 0, so the gap is inside seed noise" in markdown
    assert "detecting the printed +0.45 (P1 ResNet18) would take" in markdown
    assert "| Seeds/arm for P1 ResNet18 gain |" in markdown and "(for +0.40) |" in markdown
    assert "SGDP's norm grew less than SGD's" in markdown
    assert "Paper" not in doc.sections[0].grids[0].header  # own table: no paper column to fill
    adamp = doc.cells.set_index("optimizer").loc["AdamP"]
    assert adamp["n_seeds"] == 2 and adamp["epoch1_mean_weight_norm"] == pytest.approx(3.40)
    gains = doc.gains.set_index("proposed")
    assert gains.loc["AdamP", "baseline"] == "AdamW" and gains.loc["AdamP", "expected_sign"] == 1.0
    assert gains.loc["AdamP", "target_gain"] == pytest.approx(70.81 - 70.41)  # P1 ResNet18's AdamP − Adam
    assert math.isnan(gains.loc["AdamP", "paper_gain"])  # an own table has no paper gain of its own


def test_p2_and_p4a_map_their_summary_keys(runs_root: Path, paper: pd.DataFrame) -> None:
    runs, _ = collect_runs(runs_root)
    p2 = compare_table("P2", runs, paper)
    with_wd = p2.cells.set_index(["block", "optimizer"]).loc[("with_wd", "SGD")]
    assert with_wd["n_seeds"] == 3 and with_wd["ours_mean"] == pytest.approx(statistics.mean(P1_SGD))
    assert p2.cells.set_index(["block", "optimizer"]).loc[("without_wd", "SGD"), "n_seeds"] == 0
    assert any("filled from P1" in n for n in p2.notes)
    p4a = compare_table("P4a", runs, paper).cells.set_index(["block", "optimizer", "metric"])
    assert p4a.loc[("linf eps=4/255", "AdamP", "attacked_acc"), "ours_mean"] == 66.0
    assert p4a.loc[("linf eps=4/255", "AdamP", "standard_acc"), "ours_mean"] == 89.0
    assert p4a.loc[("linf eps=4/255", "AdamP", "standard_acc"), "scale"] == "smoke"
    assert p4a.loc[("l2 eps=80/255", "Adam", "standard_acc"), "n_seeds"] == 0


def test_build_is_idempotent_and_lists_every_table(runs_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "tables"
    first = build_tables(runs_root, out, PAPER_DIR)
    snapshot = {p.name: p.read_bytes() for p in first.written}
    second = build_tables(runs_root, out, PAPER_DIR)
    assert {p.name: p.read_bytes() for p in second.written} == snapshot
    assert not list(out.glob(".*.tmp"))
    readme = (out / "README.md").read_text()
    for table in ("P1", "P2", "P3", "P4a", "P4b", "P4c", "P5", "P6", "P7", "mini", "cifar", "imagenette"):
        assert f"[{table}]({table}.md)" in readme and (out / f"{table}.tex").exists()
    assert "not run by this suite" in readme and "p1_resnet50/paper/half-written" in readme
    cells = pd.read_csv(out / "P1.csv")
    row = cells[(cells["model"] == "ResNet18") & (cells["optimizer"] == "SGD")].iloc[0]
    assert row["ours_mean"] == pytest.approx(statistics.mean(P1_SGD))  # unrounded float in the CSV
    p7 = (out / "P7.md").read_text()
    assert "Not run by this suite" in p7 and "23.38" in p7


def test_latex_uses_booktabs_and_escapes(runs_root: Path, paper: pd.DataFrame) -> None:
    runs, _ = collect_runs(runs_root)
    tex = render_latex(layout_table(compare_table("mini", runs, paper), paper))
    for command in ("\\toprule", "\\midrule", "\\bottomrule", "\\begin{tabular}{llrrrr}"):
        assert command in tex
    assert "CIFAR ResNet-20" in tex and "$\\pm$" in tex and "\\texttt{mini}" in tex
    assert latex_escape("50% & x_1 -0.5 → `a` < 1") == "50\\% \\& x\\_1 $-$0.5 $\\to$ \\texttt{a} $<$ 1"


def test_paper_csvs_hold_the_reference_numbers() -> None:
    ours = load_paper_numbers(PAPER_DIR)
    assert list(ours.columns) == list(PAPER_COLUMNS) and len(ours) == 84
    assert ours["source"].str.contains("arXiv 2006.08217").all()
    run = ours[ours["table"].isin(["P1", "P2", "P4a"])]
    assert run["tolerance"].gt(0).all() and ours.loc[~ours.index.isin(run.index), "tolerance"].isna().all()
    reference = read_reference_csv(PAPER_REFERENCE)
    columns = ["table", "block", "model", "dataset", "optimizer", "metric"]
    assert ours[columns].to_dict("records") == reference[columns].to_dict("records")
    assert ours["value_printed"].tolist() == reference["value"].tolist()
    assert ours["value"].tolist() == [float(v) for v in reference["value"]]


def test_tables_log_to_wandb_offline(runs_root: Path, tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    (tmp_path / "wandb_dir").mkdir()
    figures = tmp_path / "figures"
    figures.mkdir()
    from PIL import Image

    Image.new("RGB", (8, 8), "white").save(figures / "norms.png")
    result = build_tables(runs_root, tmp_path / "tables", PAPER_DIR)
    local = log_tables_to_wandb(result.docs[:2], project="adamp-repro-test", figures_dir=figures)
    assert local.is_dir() and local.name.startswith("offline-run-")
    assert local.is_relative_to(tmp_path / "wandb_dir") and list(local.glob("*.wandb"))
    media = local / "files" / "media"
    assert list((media / "table" / "P1").glob("cells_*.table.json")) and list(media.rglob("norms_*.png"))


def test_build_tables_script_runs(runs_root: Path, tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("build_tables_script", REPO / "scripts" / "build_tables.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "tables"
    assert script.main(["--runs", str(runs_root), "--out", str(out), "--no-wandb"]) == 0
    assert (out / "README.md").exists() and (out / "mini.md").exists()


def test_imagenette_proxy_sets_p1_gains_beside_ours(tmp_path: Path, paper: pd.DataFrame) -> None:
    root = tmp_path / "runs"
    values = {"sgd": [80.0, 81.0], "sgdp": [79.0, 80.5], "adamw": [78.0, 78.4], "adamp": [79.0, 79.6]}
    for optimizer, tops in values.items():
        for seed, top1 in enumerate(tops):
            write_run(root, table_id="imagenette", block="imagenette", model="ResNet18", optimizer=optimizer,
                      seed=seed, scale="mini", dataset_label="Imagenette (96 px), not ImageNet",
                      metrics={"final_eval_top1": top1})  # fmt: skip
    runs, _ = collect_runs(root)
    doc = layout_table(compare_table("imagenette", runs, paper), paper)
    gains = doc.gains.set_index("proposed")
    # The paper's printed ResNet18 gains in P1 (the Adam column stands for AdamW), not a constant +.
    assert gains.loc["SGDP", "paper_gain"] == pytest.approx(70.73 - 70.28)
    assert gains.loc["AdamP", "paper_gain"] == pytest.approx(70.81 - 70.41)
    assert bool(gains.loc["SGDP", "sign_agrees"]) is False and bool(gains.loc["AdamP", "sign_agrees"]) is True
    markdown = render_markdown(doc)
    assert markdown.startswith("# imagenette: Imagenette (96 px), not ImageNet")
    assert "Ours at scale `mini`; data: Imagenette (96 px), not ImageNet" in markdown
    assert "| ResNet18 | SGDP − SGD | +0.45 | -0.75 |" in markdown and "| 2 vs 2 | no |" in markdown
    assert "| Paper gain |" in markdown and "standing in for P1" in markdown
    assert (
        doc.cells["paper"].isna().all()
    )  # the paper's ImageNet accuracies are never set beside Imagenette's


def test_own_table_rows_show_only_the_optimizers_run_in_them(tmp_path: Path, paper: pd.DataFrame) -> None:
    root = tmp_path / "runs"
    for block, optimizer in (("momentum", "sgd"), ("momentum", "sgdp"), ("vanilla", "sgd")):
        write_run(root, table_id="imagenette_analysis", block=block, model="ResNet18", optimizer=optimizer,
                  seed=0, scale="mini", metrics={"final_eval_top1": 50.0}, name=f"{block}-{optimizer}")  # fmt: skip
    runs, _ = collect_runs(root)
    doc = layout_table(compare_table("imagenette_analysis", runs, paper), paper)
    assert list(zip(doc.cells["block"], doc.cells["optimizer"])) == [
        ("momentum", "SGD"),
        ("momentum", "SGDP"),
        ("vanilla", "SGD"),
    ]
    assert list(doc.gains["block"]) == ["momentum"]
    assert "results/figures/analysis_imagenette_analysis_<scale>.md" in render_markdown(doc)


def test_tables_refuse_to_guess_and_say_what_they_left_out(tmp_path: Path) -> None:
    root, out = tmp_path / "runs", tmp_path / "tables"
    for seed, top1 in enumerate(P1_SGD):
        p1_run(root, "sgd", seed, top1)
    p1_run(root, "sgdp", 0, 70.6)
    p1_run(root, "sgdp", 0, 10.0, name="rerun-s0")  # which of the two is seed 0? Nothing says: both out
    p1_run(root, "sgdp", 1, 40.0, extra={"epochs": 1})  # "completed" after 1 of 2 planned epochs
    p1_run(root, "sgdp", 2, 70.0, scale="mini", folder_scale="paper")  # a mini record in the paper folder
    p1_run(root, "sgdp", 3, 70.8)
    p1_run(root, "sgdp", 4, 70.9, extra={"code_changed_on_resume": True})  # counted, but marked
    result = build_tables(root, out, PAPER_DIR)

    left_out = {p.path: p.kind for p in result.problems if p.kind in ("duplicate", "short", "scale_mismatch")}
    assert left_out == {
        "p1_resnet18/paper/ResNet18-sgdp-s0": "duplicate",
        "p1_resnet18/paper/rerun-s0": "duplicate",
        "p1_resnet18/paper/ResNet18-sgdp-s1": "short",
        "p1_resnet18/paper/ResNet18-sgdp-s2": "scale_mismatch",
    }
    assert sorted(result.runs["run_dir"]) == sorted(
        [f"p1_resnet18/paper/ResNet18-sgd-s{s}" for s in range(3)]
        + ["p1_resnet18/paper/ResNet18-sgdp-s3", "p1_resnet18/paper/ResNet18-sgdp-s4"]
    )
    cells = pd.read_csv(out / "P1.csv")
    sgdp = cells[
        (cells["model"] == "ResNet18") & (cells["optimizer"] == "SGDP") & (cells["scale"] == "paper")
    ]
    sgdp = sgdp.iloc[0]
    assert (sgdp["n_seeds"], sgdp["ours_mean"]) == (2, pytest.approx(statistics.mean([70.8, 70.9])))
    assert (sgdp["n_left_out"], sgdp["n_code_changed"]) == (3, 1)  # the mini record sits in a mini section
    md = (out / "P1.md").read_text()
    assert (
        "Left out of the means: 3 record(s), 2 with a duplicate seed, 1 with fewer epochs than planned; "
        in md
    )
    assert "Left out of the means: 1 record(s), 1 with a scale that disagrees with its folder;" in md
    assert "| 70.85 ± 0.07 † | 2 |" in md and "resumed after a change to `src/`" in md
    assert "`p1_resnet18/paper/ResNet18-sgdp-s4`" in md
    for path in left_out:
        assert f"`{path}`" in md  # each named in the notes, with its reason
    assert "completed with 1 of 2 planned epochs" in md and "scale folder 'paper'" in md
    tex = (out / "P1.tex").read_text()
    assert "Left out of the means: 3 record(s)" in tex and "$^\\dagger$" in tex
    p2 = pd.read_csv(out / "P2.csv")  # P2's with-decay block borrows P1's ResNet18 runs, left-out ones too
    with_wd = p2[(p2["block"] == "with_wd") & (p2["optimizer"] == "SGDP") & (p2["scale"] == "paper")].iloc[0]
    assert (with_wd["n_seeds"], with_wd["n_left_out"]) == (2, 3)
    readme = (out / "README.md").read_text()
    assert "Not counted, with a duplicate seed: 2" in readme and "with fewer epochs than planned: 1" in readme
    assert "- `p1_resnet18/paper/ResNet18-sgdp-s2`: with a scale that disagrees with its folder:" in readme


def test_a_bad_resume_flag_is_a_broken_record(tmp_path: Path) -> None:
    p1_run(tmp_path, "sgd", 0, 70.0, extra={"code_changed_on_resume": "yes"})
    runs, problems = collect_runs(tmp_path)
    assert runs.empty and [p.kind for p in problems] == ["broken"]
    assert "code_changed_on_resume must be true/false, got 'yes'" in problems[0].detail


def _forms(**counts: int) -> dict:
    return {"class": "adamp_repro.optim.sgdp.SGDP", "source": "counted", "unit": "parameter_steps",
            "forms": counts, "fallbacks": []}  # fmt: skip


def test_a_mean_over_runs_that_stepped_with_different_forms_is_marked(tmp_path: Path) -> None:
    root, out = tmp_path / "runs", tmp_path / "tables"
    for seed, top1 in enumerate(P1_SGD):  # records written before the forms were recorded: never marked
        p1_run(root, "sgd", seed, top1)
    fused, fast = _forms(fused_cpu=620), _forms(fast=620)
    p1_run(root, "sgdp", 0, 70.6, extra={"optimizer_forms": [fused], "optimizer_forms_mixed": False})
    p1_run(root, "sgdp", 1, 70.9, extra={"optimizer_forms": [fast], "optimizer_forms_mixed": False})
    p1_run(root, "sgdp", 2, 70.7)  # not recorded: left out of the judgement, still counted
    result = build_tables(root, out, PAPER_DIR)
    assert not [p for p in result.problems if p.kind == "broken"]
    cells = pd.read_csv(out / "P1.csv", keep_default_na=False)
    paper_cells = cells[(cells["model"] == "ResNet18") & (cells["scale"] == "paper")]
    sgdp = paper_cells[paper_cells["optimizer"] == "SGDP"].iloc[0]
    sgd = paper_cells[paper_cells["optimizer"] == "SGD"].iloc[0]
    assert (sgdp["n_seeds"], sgdp["forms_mixed"], sgdp["optimizer_forms"]) == (3, True, "fast | fused_cpu")
    assert (sgd["n_seeds"], sgd["forms_mixed"], sgd["optimizer_forms"]) == (3, False, "")
    md = (out / "P1.md").read_text()
    assert "| 70.73 ± 0.15 ‡ | 3 |" in md  # the SGDP mean, marked
    assert "‡ The seeds of the marked cells stepped with different optimizer forms" in md
    assert "imagenet/ResNet18/SGDP at scale paper: fast | fused_cpu" in md  # the note names the forms
    assert f"| {statistics.mean(P1_SGD):.2f} ± {statistics.stdev(P1_SGD):.2f} | 3 |" in md  # SGD: no mark
    assert "$^\\ddagger$" in (out / "P1.tex").read_text()


def test_a_run_whose_segments_ran_different_forms_marks_its_cell(tmp_path: Path) -> None:
    segments = [_forms(fused_cpu=300), _forms(fast=320)]  # resumed without the fused kernels
    p1_run(tmp_path, "sgdp", 0, 70.6, extra={"optimizer_forms": segments, "optimizer_forms_mixed": True})
    p1_run(tmp_path, "sgdp", 1, 70.9, extra={"optimizer_forms": [None, _forms(fast=9)]})  # partly unknown
    runs, problems = collect_runs(tmp_path)
    assert not problems
    by_seed = runs.set_index("seed")
    assert by_seed.loc[0, "optimizer_forms"] == "fused_cpu; fast" and bool(
        by_seed.loc[0, "optimizer_forms_mixed"]
    )
    assert by_seed.loc[1, "optimizer_forms"] == "fast" and not by_seed.loc[1, "optimizer_forms_mixed"]
    cell = compare_table("P1", runs, load_paper_numbers(PAPER_DIR)).cells
    cell = cell[(cell["optimizer"] == "SGDP") & (cell["model"] == "ResNet18")].iloc[0]
    assert cell["forms_mixed"] and cell["optimizer_forms"] == "fast | fused_cpu; fast"


def test_a_bad_forms_record_is_a_broken_record(tmp_path: Path) -> None:
    p1_run(tmp_path, "sgd", 0, 70.0, extra={"optimizer_forms": {"fast": 3}})
    p1_run(tmp_path, "sgd", 1, 70.0, extra={"optimizer_forms_mixed": "no"})
    runs, problems = collect_runs(tmp_path)
    assert runs.empty and [p.kind for p in problems] == ["broken", "broken"]
    assert "optimizer_forms must be a list of one entry per segment" in problems[0].detail
    assert "optimizer_forms_mixed must be true/false/null, got 'no'" in problems[1].detail


def adv_run(root: Path, block: str, optimizer: str, seed: int, clean: float, pgd: float, aa=None) -> Path:
    metrics = {"final_eval_top1": clean, "final_eval_clean_top1": clean, "final_eval_robust_top1": pgd}
    if aa is not None:
        metrics["final_eval_autoattack_top1"] = aa
    return write_run(root, table_id="P4a", block=block, model="Wide-ResNet", optimizer=optimizer, seed=seed,
                     name=f"{block[:4]}-{optimizer}-s{seed}", dataset_label="CIFAR-10", metrics=metrics)  # fmt: skip


def test_p4a_sets_autoattack_beside_the_papers_pgd10(tmp_path: Path, paper: pd.DataFrame) -> None:
    root = tmp_path / "runs"
    linf, l2 = "linf eps=4/255", "l2 eps=80/255"
    adv_run(root, linf, "adam", 0, 80.0, 56.0, aa=48.0)  # AutoAttack 8 points below PGD-10: masking
    adv_run(root, linf, "adam", 1, 81.0, 57.0, aa=49.5)
    adv_run(root, linf, "adamp", 0, 89.0, 66.0, aa=61.2)  # 4.8 points: not more than the 5-point threshold
    adv_run(root, linf, "adamp", 1, 90.0, 67.0, aa=62.2)
    adv_run(root, l2, "adam", 0, 84.0, 70.0)  # a record without AutoAttack: its cell is missing, not filled
    runs, _ = collect_runs(root)
    doc = layout_table(compare_table("P4a", runs, paper), paper)
    cells = doc.cells.set_index(["block", "optimizer", "metric"])
    adam = cells.loc[(linf, "Adam", "attacked_acc")]
    assert (adam["autoattack_mean"], adam["autoattack_n"]) == (pytest.approx(48.75), 2)
    assert adam["pgd_minus_autoattack"] == pytest.approx(56.5 - 48.75)
    assert cells.loc[(linf, "Adam", "standard_acc"), "autoattack_n"] == 0
    assert cells.loc[(l2, "Adam", "attacked_acc"), "autoattack_n"] == 0
    md = render_markdown(doc)
    assert "| AutoAttack (ours; not in the paper) |" in md
    # The paper's PGD-10 number, ours, and our AutoAttack in its own column, on one row.
    assert (
        "| linf eps=4/255 | attacked acc, PGD-10 (%) | Adam | adam | 56.58 | ±0.99 | 56.50 ± 0.71 | 2 |" in md
    )
    assert md.count("| 48.75 ± 1.06 |") == 1
    assert (
        "| l2 eps=80/255 | attacked acc, PGD-10 (%) | Adam | adam | 70.33 | ±0.91 | 70.00 | 1 | -0.33 | yes | — |"
        in md
    )
    warning = "the paper's PGD-10 (sign steps, no random start at evaluation) overstates robustness here"
    assert (
        md.count(warning) == 1
        and "Adam (Wide-ResNet / linf eps=4/255): AutoAttack robust accuracy 48.75" in md
    )
    gains = doc.gains.set_index(["block", "metric"])
    robust = gains.loc[(linf, "attacked_acc")]
    expected = stats.welch_test([56.0, 57.0], [66.0, 67.0])
    assert robust["paper_gain"] == pytest.approx(9.70) and robust["ci_low"] == pytest.approx(expected.ci_low)
    assert robust["seeds_needed"] == stats.seeds_needed(expected, 9.70)
    assert "detecting the printed +9.70 (P4a) would take" in md


def test_autoattack_gap_is_taken_on_the_same_samples_when_recorded(tmp_path: Path, paper) -> None:
    # AutoAttack on a 1,000-image subset: PGD-10 on those samples (60) is what it is compared with, not the
    # whole test set's 56: the gap is 60 - 54 = 6 points (> 5), though 56 - 54 would be only 2.
    root = tmp_path / "runs"
    write_run(root, table_id="P4a", block="linf eps=4/255", model="Wide-ResNet", optimizer="adamp", seed=0,
              dataset_label="CIFAR-10", metrics={"final_eval_clean_top1": 85.0, "final_eval_robust_top1": 56.0,
                                                 "final_eval_autoattack_top1": 54.0,
                                                 "final_eval_autoattack_subset_robust_top1": 60.0})  # fmt: skip
    runs, _ = collect_runs(root)
    doc = layout_table(compare_table("P4a", runs, paper), paper)
    cell = doc.cells.set_index(["block", "optimizer", "metric"]).loc[
        ("linf eps=4/255", "AdamP", "attacked_acc")
    ]
    assert cell["pgd_minus_autoattack"] == pytest.approx(6.0)
    assert "AutoAttack robust accuracy 54.00 is 6.00 points below PGD-10" in render_markdown(doc)


def test_runs_join_the_paper_rows_by_id_never_by_label(tmp_path: Path, paper: pd.DataFrame) -> None:
    """A run lands in the row whose catalogue labels it carries exactly; a near miss lands in none and is noted."""
    p1_run(tmp_path, "sgd", 0, 70.0)
    p1_run(tmp_path, "sgdp", 0, 70.5, model="resnet18")  # not the catalogue's label of any P1 row
    runs, _ = collect_runs(tmp_path)
    assert dict(zip(runs["table_model"], runs["row_id"].fillna("none"))) == {
        "ResNet18": "resnet18",
        "resnet18": "none",
    }
    comparison = compare_table("P1", runs, paper)
    placed = comparison.cells[comparison.cells["n_seeds"] > 0]
    assert placed[["row_id", "optimizer"]].values.tolist() == [["resnet18", "SGD"]]
    assert any("not shown" in n and "resnet18-sgdp-s0" in n for n in comparison.notes)


def test_a_printed_row_without_an_id_is_refused(tmp_path: Path) -> None:
    text = PAPER_REFERENCE.read_text().replace("P1,resnet18,", "P1,,", 1)
    (tmp_path / "reference.csv").write_text(text)
    with pytest.raises(ValueError, match=r"a printed row has no row_id: P1 / imagenet / ResNet18 / ImageNet"):
        read_reference_csv(tmp_path / "reference.csv")


def test_records_carry_a_schema_version_and_older_ones_read_as_version_1(tmp_path):
    import json

    from adamp_repro.tracking.schema import SCHEMA_VERSION

    root = tmp_path / "runs"
    current = p1_run(root, "sgdp", 0, top1=70.0)
    older = p1_run(root, "sgd", 0, top1=69.0)
    newer = p1_run(root, "adamp", 0, top1=71.0)
    for run_dir, version in ((older, None), (newer, SCHEMA_VERSION + 1)):
        path = run_dir / "summary.json"
        summary = json.loads(path.read_text())
        if version is None:
            del summary["schema_version"]  # a record written before versions existed
        else:
            summary["schema_version"] = version
        atomic_write_text(path, json.dumps(summary))
    assert json.loads((current / "summary.json").read_text())["schema_version"] == SCHEMA_VERSION
    runs, problems = collect_runs(root)
    versions = dict(zip(runs["optimizer"], runs["schema_version"]))
    assert versions == {"sgdp": SCHEMA_VERSION, "sgd": 1}
    assert [(p.kind, "schema_version" in p.detail) for p in problems] == [("broken", True)]


def test_a_version_2_summary_reads_with_the_epoch1_names(tmp_path):
    """Version 3 renamed ``initial_mean_*_norm`` (taken after the first epoch) to ``epoch1_mean_*_norm``; a
    committed record of version 1 or 2 is not rewritten, the collector reads it with the new names."""
    import json

    from adamp_repro.results.collect import _wandb_run_to_row
    from adamp_repro.tracking.schema import SCHEMA_VERSION, upgrade_summary

    root = tmp_path / "runs"
    norms = {"final_eval_top1": 60.0, "final_mean_weight_norm": 3.9, "final_mean_filter_norm": 1.6}
    dirs = {}
    for optimizer, seed, version in (("sgd", 0, 2), ("sgd", 1, None), ("sgdp", 0, SCHEMA_VERSION)):
        epoch1 = {"epoch1_mean_weight_norm": 3.5 + seed, "epoch1_mean_filter_norm": 1.4}
        run_dir = dirs[version] = mini_run(root, optimizer, seed, norms | epoch1)
        if version == SCHEMA_VERSION:
            continue
        path = run_dir / "summary.json"
        summary = json.loads(path.read_text())
        old = {k.replace("epoch1_", "initial_"): v for k, v in summary.items()}
        if version is None:
            del old["schema_version"]  # a record written before versions existed: version 1
        else:
            old["schema_version"] = version
        atomic_write_text(path, json.dumps(old))
    runs, problems = collect_runs(root)
    assert problems == [] and "initial_mean_weight_norm" not in runs.columns
    assert "initial_mean_weight_norm" in json.loads((dirs[2] / "summary.json").read_text())  # not rewritten
    by_run = runs.set_index(["optimizer", "seed"])
    assert by_run["epoch1_mean_weight_norm"].to_dict() == {("sgd", 0): 3.5, ("sgd", 1): 4.5, ("sgdp", 0): 3.5}
    assert by_run["schema_version"].to_dict() == {("sgd", 0): 2, ("sgd", 1): 1, ("sgdp", 0): SCHEMA_VERSION}
    # The W&B mirror of an old run goes through the same reader.
    fake = type("FakeRun", (), {"path": ["me", "proj", "a"], "state": "finished", "config": {}})()
    fake.summary_metrics = json.loads((dirs[2] / "summary.json").read_text())
    row, problem = _wandb_run_to_row(fake)
    assert problem is None and row["epoch1_mean_weight_norm"] == 3.5
    # The reader keeps the key order and the version as written; a key already named anew is not overwritten.
    old = {"schema_version": 2, "initial_mean_weight_norm": 1.0, "epochs": 3}
    assert list(upgrade_summary(old).items()) == [("schema_version", 2), ("epoch1_mean_weight_norm", 1.0),
                                                  ("epochs", 3)]  # fmt: skip
    both = {"schema_version": 2, "initial_mean_weight_norm": 1.0, "epoch1_mean_weight_norm": 2.0}
    assert upgrade_summary(both) == both
    current = {"schema_version": SCHEMA_VERSION, "initial_mean_weight_norm": 1.0}
    assert upgrade_summary(current) == current  # a version-3 summary has no old names to read
    unreadable = {"schema_version": "x", "initial_mean_weight_norm": 1.0}
    assert upgrade_summary(unreadable) == unreadable  # left as it is, for the collector to report


def test_a_tuning_studys_records_fill_no_cell_and_are_named_once(tmp_path: Path) -> None:
    """A study's trials and confirmation runs share the table's experiment, cells and seeds: the table counts
    its own two records per arm, names the study's in one note, and the index says it once per study."""
    root = tmp_path / "runs"
    for optimizer, values in (("adamw", (47.0, 48.0)), ("adamp", (47.5, 48.5))):
        for seed, top1 in enumerate(values):
            mini_run(root, optimizer, seed, {"final_eval_top1": top1})
            for role in ("default", "tuned"):
                write_run(root, table_id="mini", block="embedded", model="CIFAR ResNet-20", optimizer=optimizer,
                          seed=seed, scale="mini", name=f"{optimizer}-{role}-s{seed}",
                          dataset_label="CIFAR-10 mini subset (JPEG copy)",
                          metrics={"final_eval_top1": 10.0, "study": "s1", "study_role": role})  # fmt: skip
    out = tmp_path / "tables"
    result = build_tables(root, out, PAPER_DIR)
    cells = pd.read_csv(out / "mini.csv")
    adamw = cells[cells["our_optimizer"] == "adamw"].iloc[0]
    assert adamw["n_seeds"] == 2 and adamw["ours_mean"] == pytest.approx(47.5)  # no study run averaged in
    md = (out / "mini.md").read_text()
    assert "8 record(s) of tuning study `s1`" in md and "no record (no duplicate seed" in md
    assert [str(p) for p in result.problems if p.kind == "study"] == [
        "study s1: 8 run(s) of the tuning study, on its own page"
    ]
    assert "Not table cells, study s1: 8 run(s)" in (out / "README.md").read_text()
