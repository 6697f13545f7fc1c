"""Run the runs a table needs (Hydra multiruns; complete runs are skipped, interrupted ones resume), then
rebuild every table from the run records: ``adamp_repro.cli.reproduce`` (``adamp-reproduce``).

    python scripts/reproduce_table.py                       # the default table at scale=mini
    python scripts/reproduce_table.py --table P4a --scale paper --seeds 3 -- hydra/launcher=submitit_slurm
"""

from __future__ import annotations

import sys

from adamp_repro.cli.reproduce import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
