"""P4a_mini, the CPU-scale proxy of P4a's l-inf block: laid out as P4a (clean and PGD-10 per optimizer, our
AutoAttack beside PGD-10), the paper's AdamP − Adam set beside ours, the AdamW control arm's two steps with no
paper counterpart, and the table's 45% clean / 25% PGD-10 bar stated both ways.

Records are written through the real ``RunRecord`` writer (``test_results.write_run``)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pandas as pd
import pytest

from adamp_repro.reproduce import findings_lines
from adamp_repro.results import stats
from adamp_repro.results.collect import collect_runs
from adamp_repro.results.compare import compare_table
from adamp_repro.results.reference import load_paper_numbers
from adamp_repro.results.tables import layout_table, render_markdown

from .test_results import PAPER_DIR, write_run

# One worker builds this module's fixtures (make test runs pytest-xdist).
pytestmark = pytest.mark.xdist_group("p4a_mini")

BLOCK = "linf eps=4/255"
LABEL = "CIFAR-10 (JPEG copy): 5k-image train subset, full 10k test set"
# optimizer -> per seed (clean, PGD-10, AutoAttack, AutoAttack's PGD-10 subset); norms per optimizer.
TRAINED = {
    "adam": [(44.0, 24.0, 22.0, 24.0), (45.0, 25.0, 23.0, 25.0), (46.0, 23.0, 21.0, 23.0)],
    "adamp": [(50.0, 28.0, 20.0, 28.0), (51.0, 29.0, 21.0, 29.5), (49.0, 27.0, 20.0, 27.0)],
    "adamw": [(47.0, 26.0, 24.0, 26.0)],
}
NORMS = {"adam": (8.0, 9.0, 2.0e-4), "adamp": (8.0, 8.1, 2.5e-4), "adamw": (8.0, 8.6, 2.2e-4)}


def _write(root: Path, values: dict) -> None:
    for optimizer, seeds in values.items():
        w0, w1, step = NORMS[optimizer]
        for seed, (clean, pgd, aa, aa_pgd) in enumerate(seeds):
            metrics = {
                "final_eval_clean_top1": clean,
                "final_eval_robust_top1": pgd,
                "final_eval_autoattack_top1": aa,
                "final_eval_autoattack_subset_robust_top1": aa_pgd,
                "epoch1_mean_weight_norm": w0,
                "final_mean_weight_norm": w1,
                "final_effective_step_size": step,
            }
            write_run(root, table_id="P4a_mini", block=BLOCK, model="WRN-10-2", optimizer=optimizer, seed=seed,
                      scale="mini", dataset_label=LABEL, metrics=metrics)  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("p4a_mini") / "runs"
    _write(root, TRAINED)
    return root


@pytest.fixture(scope="module")
def paper() -> pd.DataFrame:
    return load_paper_numbers(PAPER_DIR)


def _doc(root: Path, paper: pd.DataFrame):
    runs, _ = collect_runs(root)
    return layout_table(compare_table("P4a_mini", runs, paper), paper)


def test_cells_are_laid_out_as_p4a_with_autoattack_and_norms(trained: Path, paper: pd.DataFrame) -> None:
    doc = _doc(trained, paper)
    assert list(zip(doc.cells["optimizer"], doc.cells["metric"])) == [
        (o, m) for o in ("Adam", "AdamW", "AdamP") for m in ("standard_acc", "attacked_acc")
    ]
    cells = doc.cells.set_index(["optimizer", "metric"])
    adam = cells.loc[("Adam", "standard_acc")]
    assert (adam["our_optimizer"], adam["n_seeds"], adam["summary_key"]) == (
        "adam",
        3,
        "final_eval_clean_top1",
    )
    assert adam["ours_mean"] == pytest.approx(45.0) and math.isnan(adam["paper"])  # no paper accuracy here
    pgd = cells.loc[("AdamP", "attacked_acc")]
    assert pgd["summary_key"] == "final_eval_robust_top1" and pgd["ours_mean"] == pytest.approx(28.0)
    assert pgd["autoattack_mean"] == pytest.approx(61 / 3)
    assert pgd["pgd_minus_autoattack"] == pytest.approx((28.0 + 29.5 + 27.0 - 61.0) / 3)
    assert cells.loc[("AdamP", "standard_acc"), "autoattack_n"] == 0
    md = render_markdown(doc)
    assert md.startswith("# P4a_mini: CPU-scale proxy of P4a (linf eps=4/255)")
    assert "standing in for P4a (linf eps=4/255)" in md and "P4a's Wide-ResNet row" in md
    header = "| Model | Metric | Optimizer | Ours (mean ± std) | n | ‖w‖ after epoch 1 → final | Eff. step (final) |"
    assert header + " AutoAttack (ours; not in the paper) |" in md
    assert (
        "| WRN-10-2 | attacked acc, PGD-10 (%) | AdamP | 28.00 ± 1.00 | 3 | 8.000 → 8.100 | 2.50e-04 | 20.33"
        in md
    )
    assert "| WRN-10-2 | standard acc (%) | AdamW | 47.00 | 1 | 8.000 → 8.600 | 2.20e-04 |  |" in md
    assert "AdamP's norm grew less than Adam's (+1.2% vs +12.5%)" in md


def test_pairs_set_the_papers_adamp_minus_adam_beside_ours(trained: Path, paper: pd.DataFrame) -> None:
    doc = _doc(trained, paper)
    gains = doc.gains.set_index(["metric", "baseline", "proposed"])
    assert list(zip(doc.gains["baseline"], doc.gains["proposed"])) == 2 * [
        ("Adam", "AdamP"),
        ("Adam", "AdamW"),
        ("AdamW", "AdamP"),
    ]
    for metric, printed, ours_a, ours_b in (
        ("standard_acc", 9.73, [44.0, 45.0, 46.0], [50.0, 51.0, 49.0]),
        ("attacked_acc", 9.70, [24.0, 25.0, 23.0], [28.0, 29.0, 27.0]),
    ):
        g = gains.loc[(metric, "Adam", "AdamP")]
        expected = stats.welch_test(ours_a, ours_b)
        assert (g["our_baseline"], g["our_proposed"]) == ("adam", "adamp")  # the paper's Adam is torch Adam
        assert g["paper_gain"] == pytest.approx(printed) and g["target_gain"] == pytest.approx(printed)
        assert g["ours_gain"] == pytest.approx(statistics.mean(ours_b) - statistics.mean(ours_a))
        assert (g["ci_low"], g["ci_high"]) == (
            pytest.approx(expected.ci_low),
            pytest.approx(expected.ci_high),
        )
        assert bool(g["sign_agrees"]) is True and bool(g["beyond_noise"]) is (expected.p < 0.05)
        assert g["seeds_needed"] == stats.seeds_needed(expected, printed)
        assert g["target_source"] == "P4a linf eps=4/255"
        for pair in (("Adam", "AdamW"), ("AdamW", "AdamP")):  # the control arm: no paper counterpart
            c = gains.loc[(metric, *pair)]
            assert (
                math.isnan(c["paper_gain"]) and math.isnan(c["expected_sign"]) and c["sign_agrees"] is pd.NA
            )
            assert c["test"] == "n/a (one seed)"
    md = render_markdown(doc)
    assert "| WRN-10-2 | standard acc (%) | AdamP − Adam | +9.73 | +5.00 |" in md
    assert "| AdamW − Adam (the decoupled decay) | none (not in P4a) | +2.00 |" in md
    assert "| AdamP − AdamW (the projection) | none (not in P4a) | +3.00 |" in md
    assert "(the projection; no paper counterpart: P4a prints no such pair)" in md
    assert "the paper's Adam there is torch Adam with coupled L2, our `adam`, not AdamW" in md


def test_findings_say_the_bar_was_reached_and_where_autoattack_is_far_below(
    trained: Path, paper: pd.DataFrame
) -> None:
    doc = _doc(trained, paper)
    md = render_markdown(doc)
    assert (
        "standard acc (%): AdamP − Adam +5.00 points (the paper's P4a linf eps=4/255: +9.73; sign agrees), "
        "beyond seed noise (Welch p = " in md
    )
    assert "the better arm, AdamP at 50.00%, reached the table's 45% clean bar." in md
    assert "the better arm, AdamP at 28.00%, reached the table's 25% PGD-10 bar." in md
    assert "Clearly trained by the table's bar (45% clean and 25% PGD-10" in md and "Not clearly" not in md
    assert (
        "AdamP (WRN-10-2 / linf eps=4/255): AutoAttack robust accuracy 20.33 is 7.83 points below PGD-10"
        in md
    )
    assert (
        "Adam (WRN-10-2" not in md.split("AutoAttack robust accuracy")[0][-40:]
    )  # Adam's gap is 2: not said
    lines = findings_lines(str(trained), ["cifar10_wrn_adv_linf_mini"])
    assert lines[0] == "findings:" and len(lines) == 5, lines
    assert lines[1].startswith("  standard acc (%): AdamP − Adam +5.00 points (the paper's P4a")
    assert lines[2].startswith("  attacked acc, PGD-10 (%): AdamP − Adam +4.00 points")
    assert lines[3].startswith("  Clearly trained") and "AutoAttack robust accuracy 20.33" in lines[4]


def test_findings_say_when_the_better_arm_is_below_the_bar(tmp_path: Path, paper: pd.DataFrame) -> None:
    below = {
        "adam": [(30.0, 20.0, 19.0, 20.0), (32.0, 21.0, 20.0, 21.0)],
        "adamp": [(44.9, 26.0, 25.0, 26.0), (44.0, 25.0, 24.0, 25.0)],  # PGD-10 reached, clean not
        "adamw": [(31.0, 20.0, 19.0, 20.0)],
    }
    _write(tmp_path / "runs", below)
    md = render_markdown(_doc(tmp_path / "runs", paper))
    assert "the better arm, AdamP at 44.45%, did not reach the table's 45% clean bar." in md
    assert "the better arm, AdamP at 25.50%, reached the table's 25% PGD-10 bar." in md
    assert "Not clearly trained: the better of Adam and AdamP falls short of the table's bar" in md
    assert "on clean, so these records do not test the paper's gain" in md and "Clearly trained" not in md
