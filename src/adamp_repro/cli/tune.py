"""Run an equal-budget tuning study of a table's optimizers (trials on a held-out validation split, then the
default and the chosen setting on shared seeds), then write the study's page; the logic is adamp_repro.tune.

    python -m adamp_repro.cli.tune --table mini --scale mini             # configs/studies/mini.yaml
    python -m adamp_repro.cli.tune --table mini --studies 1 --trials 2 --seeds 2 --scale smoke
    python -m adamp_repro.cli.tune --table mini -- hydra/launcher=slurm_cifar hydra.launcher.partition=<p>

A rerun runs only what is missing (finished and diverged runs are kept, interrupted ones resume).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from adamp_repro import tune


def main(argv: Sequence[str] | None = None) -> int:
    return tune.main(list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
