"""The claims ledger (results/claims.py): each verdict from made evidence, `not run` where evidence is missing,
the committed results/CLAIMS.md rebuilt identical from the committed records, tables and figures."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pandas as pd

from adamp_repro.results.claims import VERDICTS, build_claims, gain_claim, mechanism_claims

from .conftest import PROJECT_ROOT
from .test_results import write_run

RESULTS = PROJECT_ROOT / "results"


def _mechanism_csv(path, sgd_growths, sgdp_growths):
    rows = []
    for seed, (g, p) in enumerate(zip(sgd_growths, sgdp_growths)):
        rows.append({"scale": "mini", "pair": "SGDP vs momentum SGD", "seed": seed, "baseline": "momentum SGD",
                     "baseline_growth": g, "projected": "SGDP", "projected_growth": p, "baseline_step": 0.09,
                     "projected_step": 0.12, "baseline_grows": g >= 0.10, "projection_holds": p <= g / 3,
                     "baseline_step_smaller": True, "vanilla SGD_growth": 0.01})  # fmt: skip
        rows.append({"scale": "mini", "pair": "AdamP vs Adam", "seed": seed, "baseline": "Adam",
                     "baseline_growth": 0.2, "projected": "AdamP", "projected_growth": 0.01, "baseline_step": 0.002,
                     "projected_step": None, "baseline_grows": True, "projection_holds": True,
                     "baseline_step_smaller": None, "vanilla SGD_growth": None})  # fmt: skip
    pd.DataFrame(rows).to_csv(path / "mechanism_mechanism.csv", index=False)


def test_mechanism_rows_hold_only_when_every_seed_meets_the_target(tmp_path):
    _mechanism_csv(tmp_path, [0.16, 0.21, 0.14], [0.01, 0.02, 0.01])
    verdicts = {c.id: c.verdict for c in mechanism_claims(tmp_path, tmp_path)}
    assert verdicts == {"M1": "supported", "M2": "supported", "M3": "supported"}
    _mechanism_csv(tmp_path, [0.16, 0.08, 0.14], [0.01, 0.02, 0.06])  # seed 1 grows < 10%, seed 2 not held
    rows = {c.id: c for c in mechanism_claims(tmp_path, tmp_path)}
    assert rows["M1"].verdict == "not supported" and "+8.0%" in rows["M1"].ours
    assert rows["M2"].verdict == "not supported"


def _gains(path, **cells):
    row = {"table": "t", "model": "ResNet18", "metric": "top1_acc", "baseline": "SGD", "proposed": "SGDP",
           "paper_gain": 0.45, "ours_gain": 1.0, "n_baseline": 3, "n_proposed": 3, "sign_agrees": True,
           "p_value": 0.01, "beyond_noise": True, "ci_low": 0.2, "ci_high": 1.8, "target_gain": 0.45,
           "seeds_needed": 4}  # fmt: skip
    row.update(cells)
    pd.DataFrame([row]).to_csv(path / "t_gains.csv", index=False)
    return gain_claim("G", "claim", "paper", path / "t_gains.csv", "here", path)


def test_gain_verdicts_follow_the_noise_test_and_the_papers_sign(tmp_path):
    assert _gains(tmp_path).verdict == "supported"
    assert _gains(tmp_path, ours_gain=-1.0, sign_agrees=False).verdict == "not supported"
    inside = _gains(tmp_path, beyond_noise=False, p_value=0.3, ci_low=-1.0)
    assert inside.verdict == "inside noise" and "4 seeds/arm would detect +0.45" in inside.ours
    assert "[-1.00, +1.80]" in inside.ours and inside.seeds == "3 vs 3"
    assert _gains(tmp_path, ours_gain=float("nan")).verdict == "not run"


def test_missing_evidence_reads_not_run_and_every_verdict_is_known(tmp_path):
    rows = build_claims(tmp_path / "runs", tmp_path / "tables", tmp_path / "figures", tmp_path)
    assert rows and all(c.verdict == "not run" for c in rows)
    assert {c.id for c in rows} >= {"M1", "M2", "M3", "T1", "G1", "G2", "G3", "G4", "G5", "C1"}
    assert all(c.verdict in VERDICTS for c in rows)


def test_overhead_row_reads_the_records_throughput(tmp_path):
    tables = tmp_path / "tables"
    tables.mkdir()
    for optimizer, speeds in {"adam": [100, 102, 98], "adamp": [80, 81, 79]}.items():
        for seed, speed in enumerate(speeds):
            run = write_run(tmp_path / "runs", table_id="mechanism", block="momentum", model="CIFAR ResNet-20",
                            optimizer=optimizer, seed=seed, scale="mini", metrics={"images_per_s": speed})  # fmt: skip
            assert (run / "summary.json").is_file()
    rows = {c.id: c for c in build_claims(tmp_path / "runs", tables, tmp_path / "figures", tmp_path)}
    c1 = rows["C1"]
    assert c1.verdict == "not supported" and "adamp vs adam: +25.0% time per image" in c1.ours, c1.ours


def test_committed_ledger_rebuilds_identical(tmp_path):
    # On a copy of the committed tables and figures (the build writes claims.csv beside the tables), laid out as
    # results/ is, so that the ledger's relative links come out the same.
    copy = tmp_path / "results"
    for folder in ("tables", "figures", "bench"):
        shutil.copytree(RESULTS / folder, copy / folder)
    cmd = [sys.executable, str(PROJECT_ROOT / "scripts" / "build_tables.py"), "--claims-only", "--runs",
           str(RESULTS / "runs"), "--out", str(copy / "tables"), "--figures", str(copy / "figures")]  # fmt: skip
    result = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (copy / "CLAIMS.md").read_text() == (RESULTS / "CLAIMS.md").read_text()
    assert (copy / "tables" / "claims.csv").read_text() == (RESULTS / "tables" / "claims.csv").read_text()
    assert "](tables/" in (RESULTS / "CLAIMS.md").read_text()  # links relative to results/


def test_a_gain_below_the_tables_trained_bar_is_inconclusive(tmp_path):
    pd.DataFrame(
        [
            {"metric": "standard_acc", "optimizer": "Adam", "ours_mean": 40.9},
            {"metric": "standard_acc", "optimizer": "AdamP", "ours_mean": 40.4},
        ]
    ).to_csv(tmp_path / "t.csv", index=False)
    row = {"table": "t", "model": "WRN", "metric": "standard_acc", "baseline": "Adam", "proposed": "AdamP",
           "paper_gain": 9.73, "ours_gain": -0.5, "n_baseline": 3, "n_proposed": 3, "sign_agrees": False,
           "p_value": 0.2, "beyond_noise": False, "ci_low": -1.5, "ci_high": 0.5}  # fmt: skip
    pd.DataFrame([row]).to_csv(tmp_path / "t_gains.csv", index=False)
    below = gain_claim(
        "G", "c", "p", tmp_path / "t_gains.csv", "here", tmp_path, trained_bar={"standard_acc": 45}
    )
    assert below.verdict == "inconclusive" and "standard_acc best 40.90 < 45" in below.ours
    assert "the interval excludes the paper's +9.73" in below.ours
    above = gain_claim(
        "G", "c", "p", tmp_path / "t_gains.csv", "here", tmp_path, trained_bar={"standard_acc": 40}
    )
    assert above.verdict == "inside noise"


def test_each_claim_names_its_table_and_a_reproduced_tables_ledger_holds_its_own_claims(tmp_path):
    from adamp_repro.cli.tables import main as tables_main

    rows = {
        c.id: c for c in build_claims(tmp_path / "runs", tmp_path / "tables", tmp_path / "figures", tmp_path)
    }
    assert {i: rows[i].table for i in ("M1", "M4", "T1", "G2", "G5", "C1")} == {
        "M1": "mechanism", "M4": "imagenette_analysis", "T1": None, "G2": "imagenette", "G5": "P4a_mini",
        "C1": "mechanism",
    }  # fmt: skip
    assert [c.id for c in rows.values() if c.wall_time] == ["C1"]  # the one claim judged on wall time
    ledger = tmp_path / "CLAIMS.md"
    argv = ["--claims-only", "--runs", str(RESULTS / "runs"), "--out", str(tmp_path / "tables"),
            "--figures", str(RESULTS / "figures"), "--claims", str(ledger), "--claims-tables", "mechanism"]  # fmt: skip
    shutil.copytree(RESULTS / "tables", tmp_path / "tables")
    assert tables_main(argv) == 0
    text = ledger.read_text()
    assert "Scoped to table(s) `mechanism`" in text
    ids = [line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| ")]
    assert ids == ["#", "M1", "M2", "M3", "C1"]  # no other table's claim, so no `not run` row
    assert list(pd.read_csv(tmp_path / "tables" / "claims.csv")["id"]) == ["M1", "M2", "M3", "C1"]


def _study_csv(path, rows):
    from adamp_repro.results.study import PAIR_COLUMNS

    base = {"study": "mini", "baseline": "adamw", "proposed": "adamp", "seeds": 5, "baseline_mean": 47.0,
            "proposed_mean": 48.0, "p": 0.04, "sd": 0.8, "detectable": 1.4, "trials_finished": 30,
            "trials_planned": 30, "seeds_planned": 5}  # fmt: skip
    frame = pd.DataFrame([{**base, **r} for r in rows], columns=PAIR_COLUMNS)
    frame.to_csv(path / "study_mini.csv", index=False)


def test_study_rows_judge_each_role_by_its_paired_interval(tmp_path):
    from adamp_repro.results.claims import study_claims

    _study_csv(tmp_path, [{"role": "tuned", "mean": 1.0, "low": 0.1, "high": 1.9},
                          {"role": "default", "mean": 0.2, "low": -0.9, "high": 1.3}])  # fmt: skip
    rows = {c.id: c for c in study_claims(tmp_path, tmp_path)}
    assert rows["S1"].verdict == "supported" and rows["S2"].verdict == "inside noise"
    assert "adamp − adamw +1.00 [+0.10, +1.90]" in rows["S1"].ours and "detect 1.40 points" in rows["S1"].ours
    assert rows["S3"].verdict == "not run" and "sgd/sgdp not in study mini" in rows["S3"].ours
    assert {rows[i].table for i in rows} == {"mini"}
    # a study still running is never judged, whatever its interval says so far
    _study_csv(tmp_path, [{"role": "tuned", "mean": -1.0, "low": -1.9, "high": -0.1, "trials_finished": 20},
                          {"role": "default", "mean": -1.0, "low": -1.9, "high": -0.1, "trials_finished": 20}])  # fmt: skip
    rows = {c.id: c for c in study_claims(tmp_path, tmp_path)}
    assert rows["S1"].verdict == "inconclusive" and "study incomplete (20/30 trials" in rows["S1"].ours
    assert rows["S2"].verdict == "not supported"
