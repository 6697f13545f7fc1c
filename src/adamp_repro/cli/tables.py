"""Rebuild every table in results/tables from the run records alone (no network needed).

adamp-tables                       # results/runs -> results/tables and results/CLAIMS.md
adamp-tables --claims-only         # only the claims ledger (after the figures are drawn)
adamp-tables --claims-only --claims-tables mechanism   # only the claims of table mechanism
adamp-tables --wandb               # also log the tables to W&B (job_type "tables")
ADAMP_REPRO_TABLES_WANDB=1 adamp-tables   # same, from the environment

(= python -m adamp_repro.cli.tables, or python scripts/build_tables.py in a checkout.) results/ is
adamp_repro.paths.results_dir(): the checkout's, else that of $ADAMP_REPRO_ROOT or of the working directory;
the paper's numbers are adamp_repro.paths.paper_dir() (the package holds a copy).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from adamp_repro import paths
from adamp_repro.results.build import build_tables, log_tables_to_wandb
from adamp_repro.results.claims import write_claims


def main(argv: list[str] | None = None) -> int:
    results = paths.results_dir()
    env_wandb = os.environ.get("ADAMP_REPRO_TABLES_WANDB", "").lower() in ("1", "true", "yes")
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=Path, default=results / "runs", help="run records root")
    parser.add_argument("--out", type=Path, default=results / "tables", help="where tables are written")
    parser.add_argument("--paper", type=Path, default=paths.paper_dir(), help="the paper's numbers")
    parser.add_argument(
        "--figures",
        type=Path,
        default=results / "figures",
        help="figures (their CSVs feed the claims ledger; PNGs logged with --wandb)",
    )
    parser.add_argument(
        "--claims", type=Path, default=None, help="the claims ledger (default: CLAIMS.md beside --out)"
    )
    parser.add_argument(
        "--claims-only", action="store_true", help="write only the claims ledger from the built tables"
    )
    parser.add_argument(
        "--claims-tables",
        default=None,
        metavar="ID[,ID]",
        help="keep only the claims judged on these tables' records (table ids, e.g. mechanism; "
        "`make reproduce-table` scopes its ledger to the table it ran)",
    )
    parser.add_argument(
        "--wandb",
        action=argparse.BooleanOptionalAction,
        default=env_wandb,
        help="log the tables to W&B (default: $ADAMP_REPRO_TABLES_WANDB)",
    )
    parser.add_argument("--wandb-project", default=os.environ.get("WANDB_PROJECT", "adamp-repro"))
    parser.add_argument("--wandb-entity", default=os.environ.get("WANDB_ENTITY"))
    parser.add_argument(
        "--read-wandb",
        metavar="ENTITY/PROJECT",
        default=None,
        help="also read completed runs mirrored in this W&B project but missing on disk",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    claims = args.claims or args.out.parent / "CLAIMS.md"
    scope = None if args.claims_tables is None else [t for t in args.claims_tables.split(",") if t]
    if args.claims_only:
        rows = write_claims(args.runs, args.out, args.figures, claims, scope)
        print(f"{len(rows)} claims -> {claims}")
        return 0
    result = build_tables(args.runs, args.out, args.paper, wandb_project=args.read_wandb)
    print(f"{len(result.runs)} completed runs -> {len(result.written)} files in {args.out}")
    for problem in result.problems:
        print(f"  not counted: {problem}")
    rows = write_claims(args.runs, args.out, args.figures, claims, scope)
    print(f"{len(rows)} claims -> {claims}")
    if args.wandb:
        where = log_tables_to_wandb(
            result.docs, project=args.wandb_project, entity=args.wandb_entity, figures_dir=args.figures
        )
        print(f"logged {len(result.docs)} tables to W&B ({where})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
