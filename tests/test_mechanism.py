"""The default table's mechanism check, seed by seed, and the comparison of fresh runs with committed records.

Records are written through the real ``RunRecord`` writer (``test_results.write_run``) into a temporary folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from adamp_repro.reproduce import findings_lines
from adamp_repro.results.build import build_tables
from adamp_repro.results.collect import read_records
from adamp_repro.results.conclusions import cpu_line, cpu_types, identity_rows, reproduction_report
from adamp_repro.results.mechanism import MECHANISM_CHECKS, mechanism_findings, seed_rows

from .test_results import PAPER_DIR, write_run

CHECK = MECHANISM_CHECKS["mechanism"]
# (block, optimizer) -> per seed (initial per-filter norm, final per-filter norm, final effective step)
ARMS = {
    ("momentum", "sgd"): [(1.30, 1.56, 0.080), (1.30, 1.60, 0.078), (1.30, 1.58, 0.081)],  # +20%, +23%, +22%
    ("momentum", "sgdp"): [(1.30, 1.33, 0.110), (1.30, 1.32, 0.112), (1.30, 1.45, 0.100)],  # +2%, +2%, +12%
    ("momentum", "adam"): [(1.30, 1.69, 2.0e-3)] * 3,  # +30%
    ("momentum", "adamp"): [(1.30, 1.31, 3.0e-3)] * 3,  # +1%
    ("vanilla", "sgd"): [(1.30, 1.35, 0.110)] * 3,  # +4%
}


def mechanism_runs(root: Path) -> Path:
    for (block, optimizer), per_seed in ARMS.items():
        for seed, (init, final, step) in enumerate(per_seed):
            write_run(
                root, table_id="mechanism", block=block, model="CIFAR ResNet-20", optimizer=optimizer,
                seed=seed, scale="mini", name=f"{block}-{optimizer}-s{seed}",
                metrics={"final_eval_top1": 50.0 + seed, "at_init_mean_filter_norm": init,
                         "final_mean_filter_norm": final, "final_filter_effective_step_size": step},
            )  # fmt: skip
    return root


def test_each_seed_is_judged_on_its_own(tmp_path):
    runs = read_records(mechanism_runs(tmp_path / "runs")).runs
    rows = seed_rows(runs, "mechanism", CHECK)
    sgd = [r for r in rows if r["baseline"] == "momentum SGD"]
    adam = [r for r in rows if r["baseline"] == "Adam"]
    assert [r["seed"] for r in sgd] == [0, 1, 2] and len(adam) == 3
    assert sgd[0]["baseline_growth"] == pytest.approx(0.20) and sgd[0]["projected_growth"] == pytest.approx(
        0.3 / 13
    )
    # Seed 2: SGDP grew +11.5%, more than a third of SGD's +21.5%: that seed fails, the others pass.
    assert [r["projection_holds"] for r in sgd] == [True, True, False]
    assert [r["all_met"] for r in sgd] == [True, True, False]
    assert all(r["baseline_step_smaller"] for r in sgd)
    assert all(r["all_met"] and r["baseline_step_smaller"] is None for r in adam)  # no step check for Adam
    assert sgd[0]["vanilla SGD_growth"] == pytest.approx(0.05 / 1.3)
    lines = mechanism_findings(rows, CHECK)
    assert "SGDP vs momentum SGD" in lines[0] and "met in 2 of 3 seeds" in lines[0]
    assert "seed 2: momentum SGD +21.5% vs SGDP +11.5%" in lines[0]
    assert "AdamP vs Adam" in lines[1] and "met in every seed" in lines[1]


def test_a_seed_missing_one_arm_is_not_judged(tmp_path):
    root = mechanism_runs(tmp_path / "runs")
    summary = root / "mechanism_cifar_resnet-20" / "mini" / "momentum-sgdp-s1" / "summary.json"
    data = json.loads(summary.read_text())
    summary.write_text(json.dumps({**data, "status": "failed"}))
    rows = seed_rows(read_records(root).runs, "mechanism", CHECK)
    assert [r["seed"] for r in rows if r["baseline"] == "momentum SGD"] == [0, 2]


def test_build_writes_the_per_seed_page(tmp_path):
    root = mechanism_runs(tmp_path / "runs")
    build_tables(root, tmp_path / "tables", PAPER_DIR)
    text = (tmp_path / "tables" / "mechanism_mechanism.md").read_text()
    assert "| 2 | +21.5% | +11.5% |" in text and "**no**" in text
    assert "at least 10%" in text and "met in 2 of 3 seeds" in text
    assert (tmp_path / "tables" / "mechanism_mechanism.csv").read_text().startswith("scale,pair,seed")
    assert "mechanism" in (tmp_path / "tables" / "README.md").read_text()
    lines = findings_lines(str(root), ["mini_mechanism", "mini_mechanism_vanilla"])
    assert any("met in 2 of 3 seeds" in line for line in lines)


COMPARED_EXPERIMENT = "mechanism_cifar_resnet-20"


def fresh_and_reference(tmp_path, changed_run: str, change) -> tuple:
    """Two equal sets of mechanism records (fresh, reference); ``change`` maps the fresh ``changed_run``'s
    summary to what it is written as."""
    fresh, reference = tmp_path / "fresh", tmp_path / "reference"
    for root in (fresh, reference):
        mechanism_runs(root)
    changed = fresh / COMPARED_EXPERIMENT / "mini" / changed_run / "summary.json"
    changed.write_text(json.dumps(change(json.loads(changed.read_text()))))
    return fresh, reference


def test_fresh_runs_are_compared_with_the_committed_ones_seed_by_seed(tmp_path):
    fresh, reference = fresh_and_reference(
        tmp_path,
        "momentum-sgd-s1",
        lambda data: {**data, "final_eval_top1": data["final_eval_top1"] + 0.25, "wall_time_s": 9.0},
    )
    experiment = COMPARED_EXPERIMENT
    timed = fresh / experiment / "mini" / "momentum-sgd-s0" / "summary.json"
    timed.write_text(json.dumps({**json.loads(timed.read_text()), "wall_time_s": 123.0, "images_per_s": 5.0}))
    rows = identity_rows(fresh, reference, [experiment], "mini")
    assert len(rows) == 15
    differing = [r for r in rows if not r["identical"]]
    assert [r["run"] for r in differing] == [f"{experiment}/mini/momentum-sgd-s1"]
    assert "final_eval_top1 0.25" in differing[0]["detail"]
    lines = reproduction_report(fresh, reference, [experiment], "mini", ["mechanism"]).lines
    assert "14 of 15 run(s) bit-identical" in lines[0]
    assert (
        reproduction_report(fresh, fresh, [experiment], "mini", ["mechanism"])
        .lines[0]
        .startswith("records written to the")
    )


def test_a_reference_of_an_older_schema_compares_under_the_current_names(tmp_path):
    """A committed record of schema version 2 names the first epoch's norm ``initial_mean_weight_norm``: it
    is compared with the fresh run's ``epoch1_mean_weight_norm``, and the version itself is no number of the
    run."""
    fresh, reference = tmp_path / "fresh", tmp_path / "reference"
    for root in (fresh, reference):
        mechanism_runs(root)
    experiment = "mechanism_cifar_resnet-20"
    for rel, norm in (("momentum-sgd-s0", 1.4), ("momentum-sgd-s1", 1.5)):
        path = fresh / experiment / "mini" / rel / "summary.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "epoch1_mean_weight_norm": 1.4}))
        ref = reference / experiment / "mini" / rel / "summary.json"
        old = {**json.loads(ref.read_text()), "schema_version": 2, "initial_mean_weight_norm": norm}
        ref.write_text(json.dumps(old))
    rows = {r["run"]: r for r in identity_rows(fresh, reference, [experiment], "mini")}
    assert rows[f"{experiment}/mini/momentum-sgd-s0"]["identical"]
    moved = rows[f"{experiment}/mini/momentum-sgd-s1"]
    assert not moved["identical"] and "epoch1_mean_weight_norm 0.1" in moved["detail"]
    assert sum(not r["identical"] for r in rows.values()) == 1


def _set_cpu(run_dir, cpu):
    segment = {"seed": 0} if cpu is None else {"seed": 0, "cpu": cpu}
    (run_dir / "provenance.json").write_text(json.dumps({"segments": [segment]}))


def test_a_comparison_that_differs_says_which_cpus_made_the_records(tmp_path):
    fresh, reference = fresh_and_reference(
        tmp_path, "momentum-sgd-s1", lambda data: {**data, "final_eval_top1": 1.0}
    )
    experiment = COMPARED_EXPERIMENT
    here = {"model": "Xeon", "capability": "AVX512", "isa": ["avx2", "avx512f"]}
    runs = sorted((fresh / experiment / "mini").iterdir())
    for run in runs:
        _set_cpu(run, here)
        _set_cpu(reference / run.relative_to(fresh), None)

    lines = reproduction_report(fresh, reference, [experiment], "mini", ["mechanism"]).lines
    assert lines[1].startswith("  CPU:")  # said right under the count of bit-identical runs

    def last_line() -> str:
        rel = [str(run.relative_to(fresh)) for run in runs]
        return cpu_line(cpu_types(fresh, rel), cpu_types(reference, rel))

    assert "the committed records do not say which CPU made them" in last_line()
    assert "Xeon (AVX512)" in last_line()
    for run in runs:
        _set_cpu(reference / run.relative_to(fresh), {**here, "model": "EPYC", "capability": "AVX2"})
    assert last_line() == (
        "  CPU: these runs ran on Xeon (AVX512), the committed records on EPYC (AVX2): bit-identity is expected "
        "on the same CPU type only"
    )
    for run in runs:
        _set_cpu(reference / run.relative_to(fresh), here)
    assert "the same type made both" in last_line()


def test_provenance_names_the_cpu_type(tmp_path):
    from adamp_repro.tracking.provenance import ISA_FLAGS, collect_provenance, cpu_description

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu avx2 fma avx512f\n\n"
        "processor\t: 1\nmodel name\t: Other\nflags\t\t: fpu\n"
    )
    cpu = cpu_description(cpuinfo)
    assert cpu["model"] == "Test CPU 9000" and cpu["isa"] == ["avx2", "fma", "avx512f"]
    assert set(cpu["isa"]) <= set(ISA_FLAGS) and isinstance(cpu["capability"], str)
    assert collect_provenance(torch.device("cpu"), 0, 1)["cpu"] == cpu_description()


# ------------------------------------------------------------------------------------------ the conclusions
XEON = {"model": "Xeon", "capability": "AVX512", "isa": ["avx2", "avx512f"]}
EPYC = {"model": "EPYC", "capability": "AVX2", "isa": ["avx2"]}


def _edit(root: Path, run: str, **values) -> None:
    path = root / COMPARED_EXPERIMENT / "mini" / run / "summary.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **values}))


def passing_records(tmp_path, fresh_cpu=XEON, committed_cpu=XEON) -> tuple[Path, Path]:
    """Fresh and committed records equal to each other, every per-seed target met (SGDP's seed 2 grows +2.3%
    instead of the fixture's +11.5%), each set made on the given CPU type."""
    fresh, reference = fresh_and_reference(tmp_path, "momentum-sgdp-s2", lambda data: data)
    for root, cpu in ((fresh, fresh_cpu), (reference, committed_cpu)):
        _edit(root, "momentum-sgdp-s2", final_mean_filter_norm=1.33)
        for run in (root / COMPARED_EXPERIMENT / "mini").iterdir():
            _set_cpu(run, cpu)
    return fresh, reference


def _report(fresh, reference):
    return reproduction_report(fresh, reference, [COMPARED_EXPERIMENT], "mini", ["mechanism"])


def test_on_the_same_cpu_type_the_runs_are_bit_identical(tmp_path):
    report = _report(*passing_records(tmp_path))
    assert report.summary[0] == (
        "conclusions: the same as the committed records: all 15 run(s) bit-identical (the same CPU type made both)"
    )
    assert report.summary[-1].startswith("targets: the runs completed and met the table's per-seed targets")
    assert report.missed == [] and report.exit_status() == 0
    assert report.exit_status(runs_failed=True) == 1


def test_on_another_cpu_moved_numbers_with_the_same_targets_and_verdicts_are_the_same_conclusions(tmp_path):
    fresh, reference = passing_records(tmp_path, fresh_cpu=EPYC)
    _edit(fresh, "momentum-sgdp-s1", final_eval_top1=51.5)  # committed 51.0; std over seeds of SGDP: 1.0
    _edit(
        fresh, "momentum-adam-s0", final_mean_filter_norm=1.70
    )  # growth +30.0% -> +30.8%: targets still met
    report = _report(fresh, reference)
    text = "\n".join(report.lines)
    assert "13 of 15 run(s) bit-identical" in report.lines[0]
    assert "momentum-sgdp-s1:" not in text  # on another CPU type the moved keys are not listed run by run
    assert "these runs ran on EPYC (AVX2), the committed records on Xeon (AVX512)" in text
    assert "12 of 12 judged run(s) meet the same per-seed targets" in text
    assert "3 run(s) shown beside them, not judged per seed" in text  # vanilla SGD
    assert report.summary[0] == (
        "conclusions: the same as the committed records: 12 of 12 judged run(s) meet the same per-seed "
        "targets; the verdicts of M1, M2, M3 and the 2 accuracy verdicts are the same"
    )
    assert report.summary[1].startswith(
        "  numbers moved (another CPU type made the committed records): top-1 by up to 0.50 points "
        "(0.5x the seed spread), norm growth by up to 0.77 points"
    )
    assert report.missed == [] and report.exit_status() == 0


def test_a_verdict_that_changed_is_named_with_both_numbers(tmp_path):
    fresh, reference = passing_records(tmp_path, fresh_cpu=EPYC)
    for seed in range(3):  # SGDP 10 points above SGD in every seed: beyond noise here, 0 in the committed
        _edit(fresh, f"momentum-sgdp-s{seed}", final_eval_top1=60.0 + seed)
    report = _report(fresh, reference)
    line = next(line for line in report.lines if "accuracy verdict SGDP − SGD" in line)
    assert "beyond noise, SGDP ahead here (+10.00 [+" in line
    assert "inside noise in the committed records (+0.00 [-" in line
    assert report.summary[0] == (
        "conclusions: differ from the committed records: SGDP − SGD top-1 (mechanism, row momentum, mini) "
        "inside noise -> beyond noise, SGDP ahead"
    )
    assert "AdamP − Adam" not in report.summary[0] and "the accuracy verdict" in report.summary[1]
    assert report.exit_status() == 0  # a changed verdict is reported, never a failure by itself


def test_a_missed_target_fails_the_reproduction(tmp_path):
    fresh, reference = passing_records(tmp_path, fresh_cpu=EPYC)
    _edit(fresh, "momentum-sgdp-s2", final_mean_filter_norm=1.45)  # SGDP +11.5% against SGD's +21.5%
    report = _report(fresh, reference)
    assert report.summary[0].startswith(
        "conclusions: differ from the committed records: per-seed target [mini] SGDP vs momentum SGD seed 2: "
        "SGDP grows by at most 0.33 of momentum SGD's growth: not met here"
    )
    assert "M2 supported -> not supported" in report.summary[0]
    assert report.missed == [
        "[mini] SGDP vs momentum SGD seed 2: SGDP grows by at most 0.33 of momentum SGD's growth: not met "
        "(momentum SGD +21.5%, SGDP +11.5%)"
    ]
    assert report.summary[-1].startswith("targets: missed (1): [mini] SGDP vs momentum SGD seed 2")
    assert report.exit_status() == 1
    _edit(fresh, "momentum-adamp-s0", status="failed")
    assert any("momentum-adamp-s0 is 'failed', not completed" in m for m in _report(fresh, reference).missed)


def test_a_wall_time_claim_is_reported_not_compared(tmp_path):
    fresh, reference = passing_records(tmp_path)
    speeds = {"adam": [100.0, 101.0, 99.0], "adamp": [99.0, 100.0, 98.0]}  # AdamP about 1% slower per image
    for optimizer, per_seed in speeds.items():
        for seed, speed in enumerate(per_seed):
            _edit(reference, f"momentum-{optimizer}-s{seed}", images_per_s=speed)
            # a busy machine: AdamP's runs here were 30% slower, which says nothing about the code
            _edit(
                fresh,
                f"momentum-{optimizer}-s{seed}",
                images_per_s=speed * (0.7 if optimizer == "adamp" else 1),
            )
    report = _report(fresh, reference)
    line = next(line for line in report.lines if line.startswith("  C1 is judged on wall time"))
    assert "here not supported (adamp vs adam: +4" in line and "the committed records: supported" in line
    assert "C1" not in report.summary[0] and report.summary[0].startswith(
        "conclusions: the same as the committed"
    )
    assert "  not compared: C1 (judged on wall time, which depends on the machine)" in report.summary
    assert report.exit_status() == 0
