"""W&B dashboards as code: one workspace view per table and one report (the paper's numbers beside ours).

adamp-dashboard                          # offline: results/dashboards/*.json, no key needed
WANDB_API_KEY=... adamp-dashboard --publish [--entity ENTITY]   # save to W&B, print URLs

(= python -m adamp_repro.cli.dashboard, or python scripts/wandb_dashboard.py in a checkout; results/ is
adamp_repro.paths.results_dir().) The sections follow configs/tables.yaml and the experiment files' table ids;
see adamp_repro.tracking.dashboard.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

from adamp_repro import paths
from adamp_repro.tracking.dashboard import PublishError, publish, require_api_key, write_specs


def default_project() -> str:
    """$WANDB_PROJECT, else the project the trainer logs to (configs/logger/wandb.yaml)."""
    logger = yaml.safe_load((paths.config_dir() / "logger" / "wandb.yaml").read_text())
    return os.environ.get("WANDB_PROJECT") or logger["project"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--project", default=default_project(), help="W&B project (default: %(default)s)")
    parser.add_argument(
        "--entity",
        default=os.environ.get("WANDB_ENTITY"),
        help="W&B entity (default: $WANDB_ENTITY; offline a placeholder, with --publish your default entity)",
    )
    parser.add_argument("--out", type=Path, default=paths.results_dir() / "dashboards", help="where specs go")
    parser.add_argument("--publish", action="store_true", help="also save them to W&B (needs WANDB_API_KEY)")
    args = parser.parse_args(argv)
    try:
        if args.publish:
            require_api_key()  # fail before writing or sending anything
        written = write_specs(args.out, project=args.project, entity=args.entity)
        print(f"{len(written)} dashboard specs in {args.out}: {', '.join(p.name for p in written)}")
        if args.publish:
            for url in publish(project=args.project, entity=args.entity):
                print(url)
    except PublishError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
