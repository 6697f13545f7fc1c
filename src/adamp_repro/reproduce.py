"""``make reproduce-table``: one Hydra multirun per experiment of a table, then the tables and figures.

Which experiments, optimizers and seeds a table needs lives in ``configs/tables.yaml``. The runs go through
``scripts/train.py -m`` (so ``hydra/launcher=...`` can send them to a cluster); a run whose record is complete
returns at once, an interrupted one resumes from its checkpoint.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

from adamp_repro.config import SCALES
from adamp_repro.errors import ConfigError, UsageError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
TABLES_FILE = PROJECT_ROOT / "configs" / "tables.yaml"
EXPERIMENTS_DIR = PROJECT_ROOT / "configs" / "experiment"


def load_tables(path: Path = TABLES_FILE, experiments_dir: Path = EXPERIMENTS_DIR) -> dict:
    """The catalogue, checked against the experiment files it names before anything runs."""
    tables = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    for name, spec in tables.items():
        unknown = sorted(set(spec.get("optimizers_for", {})) - set(spec["experiments"]))
        if unknown:
            raise ConfigError(
                f"{path}: table {name!r} sets optimizers_for {unknown}, which are not among its "
                f"experiments {spec['experiments']}"
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


def multirun_command(
    experiment: str,
    optimizers: list[str],
    seeds: int,
    scale: str,
    extra: list[str],
    output_root: str | None = None,
) -> list[str]:
    cmd = [
        sys.executable,
        str(PROJECT_ROOT / "scripts" / "train.py"),
        "-m",
        f"experiment={experiment}",
        f"optimizer={','.join(optimizers)}",
        f"seed={','.join(str(s) for s in range(seeds))}",
        f"scale={scale}",
    ]
    if output_root:
        cmd.append(f"output_root={output_root}")
    return cmd + list(extra)


def parse_args(argv: list[str]) -> argparse.Namespace:
    tables = load_tables()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--table", default="default", help=f"one of {sorted(tables)}")
    parser.add_argument("--scale", default="mini", help=f"one of {list(SCALES)}")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per optimizer (default: the table's)")
    parser.add_argument("--output-root", default=None, help="where run records go (default: results/runs)")
    parser.add_argument("--tables-out", default=str(PROJECT_ROOT / "results" / "tables"))
    parser.add_argument("--figures-out", default=str(PROJECT_ROOT / "results" / "figures"))
    parser.add_argument("--no-figures", action="store_true", help="skip the figures")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument(
        "--fresh", action="store_true", help="train every run again (resume=never), even complete ones"
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
    return args


def main(argv: list[str]) -> int:
    try:
        args = parse_args(argv)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_status
    spec = args.spec
    seeds = args.seeds or int(spec["seeds"])
    experiments = spec["experiments"]
    print(f"[reproduce-table] table {args.table}: {spec['description']}")
    runs = sum(len(optimizers_of(spec, e)) for e in experiments) * seeds
    print(
        f"[reproduce-table] scale {args.scale}, {len(experiments)} experiment(s), {runs} run(s) "
        f"({seeds} seed(s) each); complete runs are skipped, interrupted ones resume"
    )
    failed = False
    for index, experiment in enumerate(experiments, 1):
        extra = [*args.extra, "resume=never"] if args.fresh else args.extra
        optimizers = optimizers_of(spec, experiment)
        cmd = multirun_command(experiment, optimizers, seeds, args.scale, extra, args.output_root)
        print(f"[reproduce-table] ({index}/{len(experiments)}) {' '.join(cmd[1:])}", flush=True)
        if args.dry_run:
            continue
        result = subprocess.run(cmd, cwd=PROJECT_ROOT)
        if result.returncode != 0:
            failed = True
            print(
                f"[reproduce-table] experiment {experiment} failed (exit {result.returncode}); "
                "building the tables from what exists",
                file=sys.stderr,
            )
    if args.dry_run:
        return 0
    runs_root = args.output_root or str(PROJECT_ROOT / "results" / "runs")
    steps = [("building tables", "build_tables.py", args.tables_out)]
    if not args.no_figures:
        steps.append(("drawing figures", "make_figures.py", args.figures_out))
    for what, script, out in steps:
        print(f"[reproduce-table] {what}", flush=True)
        cmd = [sys.executable, str(PROJECT_ROOT / "scripts" / script), "--runs", runs_root, "--out", out]
        failed = subprocess.run(cmd, cwd=PROJECT_ROOT).returncode != 0 or failed
    print(f"[reproduce-table] done: see {args.tables_out}/README.md")
    return 1 if failed else 0
