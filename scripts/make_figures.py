"""Rebuild results/figures from the run records and the toy experiments.

python scripts/make_figures.py --runs results/runs --out results/figures [--no-toys]
"""

from __future__ import annotations

import argparse

from adamp_repro.results.figures import make_figures
from adamp_repro.results.robustness import robustness_figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="results/runs", help="root folder of the run records")
    parser.add_argument("--out", default="results/figures", help="where figures and toy numbers are written")
    parser.add_argument("--no-toys", action="store_true", help="only the figures read from run records")
    args = parser.parse_args(argv)
    paths = make_figures(args.runs, args.out, toys=not args.no_toys) + robustness_figures(args.runs, args.out)
    for path in paths:
        print(path)


if __name__ == "__main__":
    main()
