"""Rebuild every table in results/tables from the run records alone: ``adamp_repro.cli.tables``
(``adamp-tables``).

python scripts/build_tables.py                       # results/runs -> results/tables and results/CLAIMS.md
python scripts/build_tables.py --claims-only         # only the claims ledger (after the figures are drawn)
python scripts/build_tables.py --wandb               # also log the tables to W&B (job_type "tables")
ADAMP_REPRO_TABLES_WANDB=1 python scripts/build_tables.py   # same, from the environment
"""

from __future__ import annotations

from adamp_repro.cli.tables import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
