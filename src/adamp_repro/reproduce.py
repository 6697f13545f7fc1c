"""``make reproduce-table``: one Hydra multirun per experiment of a table, then the tables and figures.

Which experiments, optimizers and seeds a table needs lives in ``configs/tables.yaml``. The runs go through
``python -m adamp_repro.cli.train -m`` (``adamp-train``; so ``hydra/launcher=...`` can send them to a cluster),
the tables and figures through ``adamp_repro.cli.tables`` and ``adamp_repro.cli.figures``: the package, not a
checkout's ``scripts/``, so an installed package runs them too. A run whose record is complete returns at once,
an interrupted one resumes from its checkpoint.

Where things go: ``--out`` (default ``results/local``, not tracked by git) holds ``runs/``, ``tables/`` and
``figures/``, so a user's own runs never mix with the committed records under ``results/runs``. After the runs,
each fresh record is compared with the committed one of the same config (the same folder under
``results/runs``), seed by seed: bit-identical on the same CPU type; on any type, whether the conclusions are
the same (per-seed targets, the table's verdicts) and how far the numbers moved (results/conclusions.py). The
exit status says whether the runs completed and met the table's own stated targets; the comparison is a
report, never a failure by itself. ``--out results`` writes the committed layout itself (how the committed
records are made); ``make tables`` rebuilds ``results/tables`` from ``results/runs`` alone.

First a pre-flight (``train.preflight``; ``--no-preflight`` skips it) checks every run as it would check itself
before any work: a problem is one line, exit 2, nothing written. While the runs train, the table's progress is
read from their folders (``tracking.progress``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

from adamp_repro import catalogue, paths
from adamp_repro.config import SCALES
from adamp_repro.errors import ConfigError, UsageError
from adamp_repro.tracking.progress import watching

PROJECT_ROOT = paths.project_root()
# The commands the runs, tables and figures go through (``python -m <module>``, adamp_repro.cli).
TRAIN_MODULE = "adamp_repro.cli.train"
TABLES_MODULE = "adamp_repro.cli.tables"
FIGURES_MODULE = "adamp_repro.cli.figures"
TABLES_FILE = catalogue.TABLES_FILE
EXPERIMENTS_DIR = paths.config_dir() / "experiment"
OPTIMIZERS_DIR = paths.config_dir() / "optimizer"
DEFAULT_OUT = paths.results_dir() / "local"
REFERENCE_RUNS = paths.results_dir() / "runs"
DATA_HINT = '; data elsewhere: pass ARGS="dataset.root=<folder>" (make) or -- dataset.root=<folder>'


def load_tables(path: Path = TABLES_FILE, experiments_dir: Path = EXPERIMENTS_DIR) -> dict:
    """The tables that run (``catalogue.load(path).runnable()``: entry name -> what it runs), checked against the
    experiment files they name before anything runs."""
    tables = catalogue.load(path).runnable()
    for name, spec in tables.items():
        unknown = sorted(set(spec.get("optimizers_for", {})) - set(spec["experiments"]))
        if unknown:
            raise ConfigError(
                f"{path}: table {name!r} sets optimizers_for {unknown}, which are not among its "
                f"experiments {spec['experiments']}"
            )
        for optimizer, n in spec.get("seeds_for", {}).items():
            if optimizer not in spec["optimizers"] or isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ConfigError(
                    f"{path}: table {name!r} sets seeds_for {optimizer}: {n!r}; expected a positive integer "
                    f"for one of its optimizers {spec['optimizers']}"
                )
        for experiment in spec["experiments"]:
            _check_recipe(path, name, experiment, optimizers_of(spec, experiment), experiments_dir)
    return tables


def _check_recipe(
    path: Path, table: str, experiment: str, optimizers: list[str], experiments_dir: Path
) -> None:
    """An experiment file with a ``recipe`` block gives each optimizer it supports its settings: a table may
    run only those (any other would silently fall back to the optimizer file's defaults)."""
    file = experiments_dir / f"{experiment}.yaml"
    if not file.is_file():
        known = sorted(p.stem for p in experiments_dir.glob("*.yaml"))
        raise ConfigError(
            f"{path}: table {table!r} names experiment {experiment!r}; known: {', '.join(known)}"
        )
    recipe = OmegaConf.load(file).get("recipe")
    if recipe is None:
        return
    missing = [o for o in optimizers if o not in recipe]
    if missing:
        raise ConfigError(
            f"{path}: table {table!r} runs {missing} in experiment {experiment!r}, whose recipe covers only "
            f"{sorted(recipe)}"
        )


def optimizers_of(spec: dict, experiment: str) -> list[str]:
    """The optimizers a table runs for one of its experiments: ``optimizers_for`` if set, else ``optimizers``."""
    return list(spec.get("optimizers_for", {}).get(experiment, spec["optimizers"]))


def seed_groups(spec: dict, experiment: str, seeds: int | None = None) -> list[tuple[list[str], int]]:
    """The experiment's optimizers grouped by how many seeds each runs (``seeds_for``, else the table's
    ``seeds``; ``seeds`` given by the user replaces the table's for every optimizer without its own count),
    in the catalogue's order: one multirun per group."""
    default = seeds or int(spec["seeds"])
    groups: dict[int, list[str]] = {}
    for optimizer in optimizers_of(spec, experiment):
        groups.setdefault(int(spec.get("seeds_for", {}).get(optimizer, default)), []).append(optimizer)
    return [(optimizers, n) for n, optimizers in groups.items()]


def multirun_command(
    experiment: str,
    optimizers: list[str],
    seeds: int,
    scale: str,
    extra: list[str],
    output_root: str | None = None,
    overrides: list[str] = (),
) -> list[str]:
    """The Hydra multirun of one experiment; ``overrides``: the table's own (``overrides:`` in the catalogue,
    e.g. its launcher and threads), before the user's ``extra`` so that a user's value wins."""
    cmd = [
        sys.executable,
        "-m",
        TRAIN_MODULE,
        "-m",
        *overrides,
        f"experiment={experiment}",
        # seed before optimizer: Hydra's sweep varies the last key fastest, so the runs go seed by seed and
        # an interrupted table holds whole seeds of every optimizer
        f"seed={','.join(str(s) for s in range(seeds))}",
        f"optimizer={','.join(optimizers)}",
        f"scale={scale}",
    ]
    if output_root:
        cmd.append(f"output_root={output_root}")
    return cmd + list(extra)


def shown(cmd: list[str]) -> str:
    """A command as printed: ``python -m adamp_repro.cli.train -m ...`` (the interpreter's path left out)."""
    return " ".join(["python", *cmd[1:]])


def parse_args(argv: list[str]) -> argparse.Namespace:
    tables = load_tables()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--table", default="default", help=f"one of {sorted(tables)}")
    parser.add_argument("--scale", default="mini", help=f"one of {list(SCALES)}")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per optimizer (default: the table's)")
    parser.add_argument(
        "--out",
        default=str(DEFAULT_OUT),
        help="folder of runs/, tables/ and figures/ (default: results/local; `results` = the committed layout)",
    )
    parser.add_argument("--output-root", default=None, help="where run records go (default: <out>/runs)")
    parser.add_argument("--tables-out", default=None, help="default: <out>/tables")
    parser.add_argument("--figures-out", default=None, help="default: <out>/figures")
    parser.add_argument(
        "--reference",
        default=str(REFERENCE_RUNS),
        help="committed records to compare the fresh runs with (default: results/runs)",
    )
    parser.add_argument("--no-figures", action="store_true", help="skip the figures")
    parser.add_argument(
        "--no-preflight",
        dest="preflight",
        action="store_false",
        help="start the runs without checking each first (config schema, data source)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument(
        "--fresh", action="store_true", help="train every run again (resume=never), even complete ones"
    )
    parser.add_argument(
        "--optimizers",
        default=None,
        help="comma-separated optimizer configs that replace the table's `optimizers` (an experiment with its "
        "own `optimizers_for` keeps it), e.g. adamp,lion; one its experiment has no recipe entry for runs with "
        "its optimizer file's own values, and its summary.json says so (optimizer_values)",
    )
    parser.add_argument("extra", nargs="*", help="extra Hydra overrides passed to every run (after --)")
    args = parser.parse_args(argv)
    if args.table not in tables:
        parser.error(f"unknown table {args.table!r}; valid tables: {', '.join(sorted(tables))}")
    if args.scale not in SCALES:
        parser.error(f"unknown scale {args.scale!r}; valid scales: {', '.join(SCALES)}")
    if args.seeds is not None and args.seeds < 1:
        parser.error(f"invalid --seeds {args.seeds}; expected a positive integer")
    args.spec = tables[args.table]
    if args.optimizers is not None:
        args.spec = {**args.spec, "optimizers": _chosen_optimizers(parser, args.optimizers, args.extra)}
        for experiment in args.spec["experiments"]:
            recipe = OmegaConf.load(EXPERIMENTS_DIR / f"{experiment}.yaml").get("recipe") or {}
            for name in optimizers_of(args.spec, experiment):
                if name not in recipe:
                    print(
                        f"[reproduce-table] note: experiment {experiment} has no recipe.{name}: {name} runs with "
                        "its optimizer file's own values"
                    )
    out = Path(args.out)
    args.output_root = args.output_root or str(out / "runs")
    args.tables_out = args.tables_out or str(out / "tables")
    args.figures_out = args.figures_out or str(out / "figures")
    return args


def _chosen_optimizers(parser: argparse.ArgumentParser, text: str, extra: list[str]) -> list[str]:
    """``--optimizers a,b``: distinct names of optimizer configs, from configs/optimizer or, when the extra
    overrides set ``hydra.searchpath``, from the user's folders too (Hydra refuses a name found in neither)."""
    names = [name.strip() for name in text.split(",")]
    if not all(names) or len(set(names)) != len(names):
        parser.error(
            f"invalid --optimizers {text!r}; expected distinct comma-separated names, e.g. adamp,lion"
        )
    known = sorted(path.stem for path in OPTIMIZERS_DIR.glob("*.yaml"))
    unknown = [name for name in names if name not in known]
    if unknown and not any(arg.startswith("hydra.searchpath=") for arg in extra):
        parser.error(
            f"unknown optimizer(s) {unknown} in --optimizers; valid: {', '.join(known)}, or a config of your own "
            "in <folder>/optimizer/ after -- hydra.searchpath=[file:///abs/path/to/folder]"
        )
    return names


def main(argv: list[str]) -> int:
    try:
        args = parse_args(argv)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_status
    spec = args.spec
    experiments = spec["experiments"]
    print(f"[reproduce-table] table {args.table}: {spec['description']}")
    plan = [(e, optimizers, n) for e in experiments for optimizers, n in seed_groups(spec, e, args.seeds)]
    runs = sum(len(optimizers) * n for _, optimizers, n in plan)
    seed_counts = sorted({n for _, _, n in plan})
    print(
        f"[reproduce-table] scale {args.scale}, {len(experiments)} experiment(s), {runs} run(s) "
        f"({'/'.join(map(str, seed_counts))} seed(s) each); complete runs are skipped, interrupted ones resume"
    )
    extra = [*args.extra, "resume=never"] if args.fresh else args.extra
    overrides = spec.get("overrides", [])
    commands = [
        (e, multirun_command(e, o, n, args.scale, extra, args.output_root, overrides)) for e, o, n in plan
    ]
    watched: dict[str, Path] = {}
    if not args.dry_run:
        problems, watched = preflight(args, commands)
        for line in problems:
            print(f"error: {line}", file=sys.stderr)
        if problems:
            return UsageError.exit_status
    with watching(watched, fresh=args.fresh):
        failed = _run_commands(commands, args.dry_run)
    if args.dry_run:
        return 0
    runs_root = args.output_root
    # The figures of the table's records; the toys are no table's (make figures draws them).
    steps = [("building tables", TABLES_MODULE, args.tables_out, [])]
    if not args.no_figures:
        steps.append(("drawing figures", FIGURES_MODULE, args.figures_out, ["--no-toys"]))
    for what, module, out, options in steps:
        print(f"[reproduce-table] {what}", flush=True)
        cmd = [sys.executable, "-m", module, "--runs", runs_root, "--out", out, *options]
        failed = subprocess.run(cmd, cwd=PROJECT_ROOT).returncode != 0 or failed
    claims = Path(args.tables_out).parent / "CLAIMS.md"
    print("[reproduce-table] claims ledger", flush=True)
    cmd = [sys.executable, "-m", TABLES_MODULE, "--claims-only", "--runs", runs_root,
           "--out", args.tables_out, "--figures", args.figures_out, "--claims", str(claims),
           "--claims-tables", ",".join(_table_ids(experiments))]  # fmt: skip
    failed = subprocess.run(cmd, cwd=PROJECT_ROOT).returncode != 0 or failed
    report = reference_report(runs_root, args.reference, experiments, args.scale)
    for line in report.lines:
        print(f"[reproduce-table] {line}")
    for line in findings_lines(runs_root, experiments):
        print(f"[reproduce-table] {line}")
    print(
        f"[reproduce-table] done: tables in {args.tables_out} (index: README.md), figures in {args.figures_out}, "
        f"claims ledger {claims}"
    )
    for line in report.summary:  # the last lines: what the reproduction concludes
        print(f"[reproduce-table] {line}")
    return report.exit_status(failed)


def _run_commands(commands: list[tuple[str, list[str]]], dry_run: bool) -> bool:
    """Run each multirun in turn (print it only, ``dry_run``); True when any failed (the others still run)."""
    failed = False
    for index, (experiment, cmd) in enumerate(commands, 1):
        print(f"[reproduce-table] ({index}/{len(commands)}) {shown(cmd)}", flush=True)
        if dry_run:
            continue
        result = subprocess.run(cmd, cwd=PROJECT_ROOT)
        if result.returncode != 0:
            failed = True
            print(
                f"[reproduce-table] experiment {experiment} failed (exit {result.returncode}); "
                "building the tables from what exists",
                file=sys.stderr,
            )
    return failed


def preflight(args: argparse.Namespace, commands: list[tuple[str, list[str]]]) -> tuple[list[str], dict]:
    """Every run of the table composed as its multirun will be (``train.preflight``): one line per distinct
    problem, naming the table and the experiments that have it, and the runs to watch (name -> folder)."""
    from adamp_repro.train.preflight import check_multiruns  # imports torch: only when runs are to start

    multiruns = [(e, cmd[cmd.index(TRAIN_MODULE) + 1 :]) for e, cmd in commands]  # its "-m" is dropped
    flight = check_multiruns(multiruns, paths.config_dir(), check=args.preflight, base=PROJECT_ROOT)
    for note in flight.notes:
        print(f"[reproduce-table] {note}")
    return flight.lines(f"table {args.table}", DATA_HINT), flight.runs


def _table_ids(experiments: list[str]) -> list[str]:
    ids = []
    for experiment in experiments:
        table = OmegaConf.load(EXPERIMENTS_DIR / f"{experiment}.yaml").get("table") or {}
        if table.get("id") and table["id"] not in ids:
            ids.append(str(table["id"]))
    return ids


def findings_lines(runs_root: str, experiments: list[str]) -> list[str]:
    """The table's findings in a few lines: the mechanism per seed, then each table's headlines (each gain and
    whether it is noise; for a table with a trained bar, per metric the gain beside the paper's and the bar)."""
    from adamp_repro.results.build import build_table_docs
    from adamp_repro.results.collect import read_records
    from adamp_repro.results.mechanism import MECHANISM_CHECKS, mechanism_findings, seed_rows
    from adamp_repro.results.reference import load_paper_numbers

    found = read_records(runs_root)
    if found.runs.empty:
        return ["findings: no completed run to read"]
    ids = _table_ids(experiments)
    lines = []
    for table_id in ids:
        if table_id in MECHANISM_CHECKS:
            check = MECHANISM_CHECKS[table_id]
            lines += mechanism_findings(seed_rows(found.runs, table_id, check), check)
    paper = load_paper_numbers(paths.paper_dir())
    for doc in build_table_docs(found.runs, paper, found.left_out):
        if doc.table_id in ids:
            for section in doc.sections:
                lines += section.headlines
    return ["findings:", *[f"  {line}" for line in lines]]


def reference_report(runs_root: str, reference_root: str, experiments: list[str], scale: str):
    """The fresh records of the table beside the committed records of the same configs: bit-identity, then the
    conclusions (``results.conclusions.reproduction_report``); its ``missed`` sets the exit status."""
    from adamp_repro.results.conclusions import reproduction_report

    return reproduction_report(runs_root, reference_root, experiments, scale, _table_ids(experiments))
