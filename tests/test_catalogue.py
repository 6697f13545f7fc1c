"""The table catalogue (configs/tables.yaml, read by adamp_repro.catalogue): every table is one entry, the
printed-only ones included, the paper's numbers exist for every paper table, and the module stays on a low floor."""

from __future__ import annotations

import subprocess
import sys

import pytest

from adamp_repro import catalogue
from adamp_repro.errors import ConfigError
from adamp_repro.reproduce import load_tables
from adamp_repro.results.reference import load_paper_numbers

from .conftest import PROJECT_ROOT


def test_every_table_is_one_entry_and_every_paper_table_has_its_numbers() -> None:
    known = catalogue.load()
    assert list(known.paper_tables()) == ["P1", "P2", "P3", "P4a", "P4b", "P4c", "P5", "P6", "P7"]
    assert list(known.own_tables()) == [
        "mechanism",
        "mini",
        "equilibrium",
        "cifar",
        "imagenette",
        "imagenette_analysis",
        "P4a_mini",
        "P7_mini",
    ]
    printed_only = [t.table_id for t in known.tables if not t.runs]
    assert printed_only == ["P3", "P4b", "P4c", "P5", "P6", "P7"]
    assert set(load_tables()) == {
        t.name for t in known.tables if t.runs
    }  # make reproduce-table runs the rest
    paper = load_paper_numbers(PROJECT_ROOT / "results" / "paper")
    assert set(paper["table"]) == set(known.paper_tables())
    for t in known.paper_tables().values():
        assert "arXiv 2006.08217" in t.source and (t.test_set_size is not None) == t.runs


def test_p4a_and_its_proxy_pair_torch_adam_with_adamp() -> None:
    p4a, mini, p1 = (catalogue.table(i) for i in ("P4a", "P4a_mini", "P1"))
    assert p4a.optimizers_for_column("Adam") == ("adam",) and p1.optimizers_for_column("Adam") == (
        "adamw",
        "adam",
    )
    assert mini.kind == "proxy" and mini.pairs[0] == ("Adam", "AdamP")
    assert (mini.proxy.table, mini.proxy.row) == ("P4a", "wrn_linf")
    assert catalogue.row_labels("P4a", "wrn_linf") == ("linf eps=4/255", "Wide-ResNet")
    assert mini.row_of("linf eps=4/255", "WRN-10-2") == "wrn_linf" and mini.row_of("linf", "WRN-10-2") is None
    assert mini.proxy.as_paper == {} and catalogue.table("imagenette").proxy.as_paper == {"AdamW": "Adam"}
    assert mini.pair_labels == {
        ("Adam", "AdamW"): "the decoupled decay",
        ("AdamW", "AdamP"): "the projection",
    }
    assert mini.metrics == {"standard_acc": "final_eval_clean_top1", "attacked_acc": "final_eval_robust_top1"}
    assert mini.trained_bar == {"standard_acc": 45.0, "attacked_acc": 25.0}
    assert catalogue.table("mechanism").name == "default" and catalogue.table("nothing") is None


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            "kind: paper\n  title: x\n  runs: false\n  pairs: [[SGD]]",
            r"pair \['SGD'\]; expected \[baseline, proposed\]",
        ),
        ("kind: table\n  title: x\n  runs: false", r"kind 'table'; allowed: paper, proxy, own"),
        (
            "kind: own\n  title: x",
            r"a table that runs needs \['experiments', 'optimizers', 'seeds'\]",
        ),
        (  # a paper or proxy table lists its rows: their ids join the paper's numbers
            "kind: paper\n  title: x\n  experiments: [a]\n  optimizers: [sgd]\n  seeds: 1",
            r"a table that runs needs \['rows'\]",
        ),
        (
            "kind: own\n  title: x\n  runs: false\n  reference_gain: {table: P1, block: imagenet}",
            r"\{.table.: .P1., .block.: .imagenet.\}; expected \{table, row\}",
        ),
        (
            "kind: own\n  title: x\n  runs: false\n  reference_gain: {table: Q9, row: resnet18}",
            r"names row 'resnet18' of table 'Q9'; its rows: no such table",
        ),
        ("kind: proxy\n  title: x\n  runs: false", r"`proxy_of` goes with kind proxy, and a proxy needs it"),
        (
            "kind: own\n  title: x\n  runs: false\n  colour: red",
            r"unknown key\(s\) \['colour'\]; allowed: id, kind",
        ),
    ],
)
def test_a_bad_entry_is_one_line_naming_it(tmp_path, entry: str, message: str) -> None:
    bad = tmp_path / "tables.yaml"
    bad.write_text(f"t:\n  {entry}\n")
    with pytest.raises(ConfigError, match=rf"table 't': {message}"):
        catalogue.load(bad)


def test_catalogue_and_dashboard_stay_off_the_results_and_training_code() -> None:
    code = (
        "import sys, adamp_repro.catalogue, adamp_repro.tracking.dashboard; "
        "print(sorted(m for m in sys.modules if m.startswith(('adamp_repro.results', 'adamp_repro.train'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]"


def test_every_experiment_lands_in_a_row_checked_at_load(tmp_path) -> None:
    """An experiment whose table.block/table.model no `rows` entry names is one line naming it, at load."""
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "e1.yaml").write_text("table: {id: t, block: b, model: CIFAR ResNet-20}\n")
    entry = "t:\n  kind: own\n  title: x\n  experiments: [e1]\n  optimizers: [sgd]\n  seeds: 1\n  rows:\n"
    good = tmp_path / "tables.yaml"
    good.write_text(entry + "    r1: {block: b, model: CIFAR ResNet-20}\n")
    assert catalogue.load(good).get("t").row_of("b", "CIFAR ResNet-20") == "r1"
    bad = tmp_path / "bad.yaml"
    bad.write_text(entry + "    r1: {block: b, model: CIFAR ResNet-56}\n")
    with pytest.raises(
        ConfigError, match=r"table 't': runs experiment 'e1', whose .*'b'/'CIFAR ResNet-20' no "
    ):
        catalogue.load(bad)
    twice = tmp_path / "twice.yaml"
    twice.write_text(entry + "    r1: {block: b, model: m}\n    r2: {block: b, model: m}\n")
    with pytest.raises(ConfigError, match=r"rows 'r1' and 'r2' name the same block/model"):
        catalogue.load(twice)
