"""Rebuild results/figures from the run records and the toy experiments.

adamp-figures --runs results/runs --out results/figures [--no-toys]

(= python -m adamp_repro.cli.figures, or python scripts/make_figures.py in a checkout.) The defaults are under
adamp_repro.paths.results_dir(): the checkout's results/, else that of $ADAMP_REPRO_ROOT or of the working
directory.
"""

from __future__ import annotations

import argparse

from adamp_repro import paths
from adamp_repro.results.figures import make_figures
from adamp_repro.results.robustness import robustness_figures


def main(argv: list[str] | None = None) -> int:
    results = paths.results_dir()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default=str(results / "runs"), help="root folder of the run records")
    parser.add_argument(
        "--out", default=str(results / "figures"), help="where figures and toy numbers are written"
    )
    parser.add_argument("--no-toys", action="store_true", help="only the figures read from run records")
    args = parser.parse_args(argv)
    written = make_figures(args.runs, args.out, toys=not args.no_toys) + robustness_figures(
        args.runs, args.out
    )
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
