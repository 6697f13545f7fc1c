"""Where the project's files are: the configs, the paper's numbers, the project root and its results.

- ``config_dir()``: the Hydra configs (``train.yaml`` and its groups, ``tables.yaml``). ``$ADAMP_REPRO_CONFIG_DIR``
  when set, else the ``configs`` folder inside the package: in a checkout ``src/adamp_repro/configs`` is a link
  to the top-level ``configs/``, and a built wheel holds a copy, so an installed package finds its configs too.
- ``project_root()``: ``$ADAMP_REPRO_ROOT`` when set, else the checkout the package is imported from (the folder
  two levels above the package that holds ``pyproject.toml``), else the working directory.
- ``results_dir()``: ``project_root() / "results"``: the committed run records (``runs/``), the built tables
  and figures; where the commands write by default.
- ``paper_dir()``: the paper's printed numbers (``P*.csv``, ``reference.csv``, ``analysis_resnet18.csv``):
  ``results/paper`` under ``$ADAMP_REPRO_ROOT`` or the checkout when that folder is there, else the copy in
  the package (``src/adamp_repro/paper`` is a link to ``results/paper``, copied into a built wheel like the
  configs), so an installed package holds the paper's numbers while it writes its outputs under ``results/``
  of the working directory.

Each is read at call time, so a setting made after import counts.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
CONFIG_DIR_VAR = "ADAMP_REPRO_CONFIG_DIR"
ROOT_VAR = "ADAMP_REPRO_ROOT"
PAPER_SUBDIR = Path("results") / "paper"


def config_dir() -> Path:
    """The configs folder: ``$ADAMP_REPRO_CONFIG_DIR``, else the one shipped with the package."""
    chosen = os.environ.get(CONFIG_DIR_VAR)
    return Path(chosen).expanduser().resolve() if chosen else PACKAGE_DIR / "configs"


def _chosen_root() -> Path | None:
    chosen = os.environ.get(ROOT_VAR)
    return Path(chosen).expanduser().resolve() if chosen else None


def _checkout() -> Path | None:
    """The source checkout the package is imported from, if it is imported from one."""
    checkout = PACKAGE_DIR.parents[1]
    if (checkout / "pyproject.toml").is_file() and (checkout / "src" / PACKAGE_DIR.name).is_dir():
        return checkout
    return None


def project_root() -> Path:
    """``$ADAMP_REPRO_ROOT``, else the source checkout holding the package, else the working directory."""
    return _chosen_root() or _checkout() or Path.cwd()


def results_dir() -> Path:
    return project_root() / "results"


def paper_dir() -> Path:
    """``results/paper`` of ``$ADAMP_REPRO_ROOT``, else of the checkout, whichever holds that folder first; else
    the copy shipped with the package."""
    for root in (_chosen_root(), _checkout()):
        if root is not None and (root / PAPER_SUBDIR).is_dir():
            return root / PAPER_SUBDIR
    return PACKAGE_DIR / "paper"
