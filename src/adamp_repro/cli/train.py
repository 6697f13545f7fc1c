"""Train one configuration (or a Hydra multirun sweep with -m). All logic lives in adamp_repro.train.run.

adamp-train optimizer=adamp model=resnet18 dataset=cifar10        # = python -m adamp_repro.cli.train ...
adamp-train -m optimizer=sgd,sgdp,adam,adamp seed=0,1,2           # = python scripts/train.py ... in a checkout

A value the user can fix (adamp_repro.errors.UsageError: a refused config value, a run folder held by another
process, a refused resume) is printed as one line, ``error: ...``, and the command exits with status 2; in a
sweep the refused job prints its line, the other jobs still run, and the sweep exits non-zero.
``HYDRA_FULL_ERROR=1`` shows the traceback instead, as it does for Hydra's own errors.
"""

import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from omegaconf import DictConfig

from adamp_repro import paths
from adamp_repro.errors import UsageError
from adamp_repro.train import run


class JobRefused(CompactHydraException):
    """A sweep job refused with a UsageError. Hydra reports a failed sweep job by re-raising its exception
    after the batch; a compact exception is printed as its message alone, without a traceback."""


# The configs: $ADAMP_REPRO_CONFIG_DIR when set, else the package's (adamp_repro.paths.config_dir).
@hydra.main(version_base="1.3", config_path=str(paths.config_dir()), config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        summary = run(cfg)
    except UsageError as exc:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        line = f"error: {exc}"
        print(line, file=sys.stderr, flush=True)
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            raise JobRefused(line) from None
        sys.exit(exc.exit_status)
    return summary.get("final_eval_top1")


if __name__ == "__main__":
    main()
