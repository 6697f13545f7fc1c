"""Run the runs a table needs (Hydra multiruns; complete runs are skipped, interrupted ones resume), then
rebuild every table from the run records; the logic is adamp_repro.reproduce.

    adamp-reproduce                       # the default table at scale=mini
    adamp-reproduce --table P4a --scale paper --seeds 3 -- hydra/launcher=submitit_slurm

(= python -m adamp_repro.cli.reproduce, or python scripts/reproduce_table.py in a checkout.)
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from adamp_repro import reproduce


def main(argv: Sequence[str] | None = None) -> int:
    return reproduce.main(list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
