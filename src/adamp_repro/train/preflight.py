"""Pre-flight of a Hydra multirun: each of its runs composed as the sweep would compose it, and every refusal a
run makes before any work (``runner.check_before_work``: the config schema, the task's checks, the data source)
collected, so that a batch of runs is refused as a whole before the first one starts.

``compose_sweep(overrides)`` expands a multirun's overrides the way Hydra's basic sweeper does (the cartesian
product of each ``a,b,c`` value, in its order) and composes each run with the Hydra compose API. The launcher
overrides (``hydra/launcher=...``, ``hydra.launcher.*``) are left out of the composition: they say where a run
goes, not what it is, and a cluster launcher's plugin need not be installed where the runs are planned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from adamp_repro.data import DataSourceMissing
from adamp_repro.errors import ConfigError, UsageError
from adamp_repro.train.runner import check_before_work, run_dir_for, run_tag

# Launchers that run the jobs on this machine, where the data the runs read must be visible; any other (a
# cluster's: submitit_slurm, slurm, ...) runs them on machines whose files this one may not see.
LOCAL_LAUNCHERS = ("basic", "local_parallel", "joblib")
LAUNCHER_GROUP = "hydra/launcher="


def launcher_of(overrides: Sequence[str]) -> str:
    """The launcher a multirun with these overrides uses: the last ``hydra/launcher=...``, else Hydra's
    ``basic``."""
    chosen = [o.split("=", 1)[1] for o in overrides if o.startswith(LAUNCHER_GROUP)]
    return chosen[-1] if chosen else "basic"


def is_local(launcher: str) -> bool:
    return launcher in LOCAL_LAUNCHERS


def expand_sweep(overrides: Sequence[str]) -> list[list[str]]:
    """The overrides of each job of a multirun, in the sweep's order (the last swept key varies fastest),
    launcher overrides left out; a malformed override is a ConfigError."""
    kept = [o for o in overrides if o != "-m" and not o.startswith((LAUNCHER_GROUP, "hydra.launcher."))]
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    try:
        parsed = OverridesParser.create().parse_overrides(kept)
        return BasicSweeper.split_arguments(parsed, None)[0]
    except HydraException as exc:
        raise ConfigError(_first_line(exc)) from None


def compose_sweep(overrides: Sequence[str], config_dir: Path) -> list[DictConfig]:
    """Each run of a multirun with ``overrides``, composed from ``config_dir``'s ``train.yaml``; Hydra's own
    refusal (an unknown group option, a key that is not in the config) is a ConfigError."""
    jobs = expand_sweep(overrides)
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            return [compose(config_name="train", overrides=job) for job in jobs]
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(_first_line(exc)) from None


def refusals(cfgs: Sequence[DictConfig], *, data: bool, base: Path | None = None) -> list[UsageError]:
    """The distinct refusals of the runs (one per message, in the runs' order): what each run would refuse
    before any work; ``data=False`` leaves the data sources alone (a cluster launcher's runs)."""
    found: dict[str, UsageError] = {}
    for cfg in cfgs:
        try:
            check_before_work(cfg, data=data, base=base)
        except UsageError as exc:
            found.setdefault(str(exc), exc)
    return list(found.values())


@dataclass
class Flight:
    """What the pre-flight of a batch of multiruns found. ``problems``: each distinct refusal's message -> the
    labels of the multiruns that have it; ``missing_data``: those messages that are a DataSourceMissing;
    ``runs``: each composed run's name (``runner.run_tag``) -> its folder; ``notes``: what was not checked."""

    problems: dict[str, list[str]] = field(default_factory=dict)
    missing_data: set[str] = field(default_factory=set)
    runs: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def lines(self, what: str, data_hint: str = "") -> list[str]:
        """One line per distinct problem: ``<what> (<labels>): <message>``, ``data_hint`` after a missing
        data source (how to pass another root)."""
        return [
            f"{what} ({', '.join(labels)}): {text}{data_hint if text in self.missing_data else ''}"
            for text, labels in self.problems.items()
        ]


def check_multiruns(
    multiruns: Sequence[tuple[str, Sequence[str]]],
    config_dir: Path,
    *,
    check: bool = True,
    base: Path | None = None,
) -> Flight:
    """Compose every run of ``multiruns`` ((label, overrides) each) and, with ``check``, collect the refusals
    each would make before any work; the data sources only of the runs a local launcher starts (a cluster's
    compute nodes may see data this machine does not: a note says so). ``base``: the folder the runs start in
    (relative run folders and data roots are taken from it)."""
    flight = Flight()
    for label, overrides in multiruns:
        launcher = launcher_of(overrides)
        data = is_local(launcher)
        note = (
            f"pre-flight: launcher {launcher} runs the jobs on other machines, so the data sources are not "
            "checked here (each run checks its own before any work)"
        )
        if check and not data and note not in flight.notes:
            flight.notes.append(note)
        try:
            cfgs = compose_sweep(overrides, config_dir)
        except ConfigError as exc:
            flight.problems.setdefault(str(exc), []).append(label)
            continue
        for cfg in cfgs:
            folder = run_dir_for(cfg) if base is None else Path(base) / run_dir_for(cfg)
            name = run_tag(cfg)
            flight.runs[name if name not in flight.runs else f"{name} {folder.name}"] = folder
        for problem in refusals(cfgs, data=data, base=base) if check else []:
            flight.problems.setdefault(str(problem), []).append(label)
            if isinstance(problem, DataSourceMissing):
                flight.missing_data.add(str(problem))
    return flight


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
