"""``make tune``: an equal-budget tuning study of a table's optimizers, then a confirmation on shared seeds.

A study is one file, ``configs/studies/<name>.yaml`` (the name of a table by default: ``make tune TABLE=mini``):
the table and the experiment it tunes, the optimizers, each optimizer's search space (``adamp_repro.search``),
the budget (``studies`` x ``trials`` per optimizer, ``seeds`` confirmation seeds), the validation split held
out from the training data, and how the points were drawn. The drawn points themselves are committed beside it
(``<name>.points.yaml``): read back on every run, appended to (never redrawn) when a budget or an optimizer
grows, so a library upgrade cannot move a study's run folders. The design follows AlgoPerf's external-tuning
ruleset (mlcommons/algorithmic-efficiency, docs/DOCUMENTATION.md: quasi-random search, 3 studies of 5 trials,
the median over studies of each study's best); the confirmation on shared seeds follows DeepOBS
(fsschneider/DeepOBS), the expected best score against the number of trials Sivaprasad et al. (ICML 2020).

The phases, each a plain Hydra multirun of ``adamp_repro.cli.train`` (``reproduce.multirun_command``; so
``hydra/launcher=...`` sends them to SLURM unchanged):

1. **trials**: every drawn point of every optimizer on seed 0, trained on the training split minus the held-out
   images and evaluated on those (``dataset.validation``); the runs sweep ``study.trial`` and look their values
   up in ``study.points`` (Hydra 1.3 cannot sweep paired values, hydra#1918);
2. **selection**: per study (a block of ``trials`` consecutive points) the best validation top-1; the chosen
   setting is the best trial of the study whose best is the median over studies (the score AlgoPerf reports);
   a diverged trial is a finished trial that scores nothing;
3. **confirmation**: each optimizer's default recipe (the experiment's, as the table runs it) and its chosen
   setting on seeds ``0..seeds-1`` (shared by all optimizers), on the full training split, evaluated on the
   test split as the table reports;
4. **report**: ``results.study`` writes the study's page and figure from the records.

A run is planned by composing its config (the same overrides as its multirun) and taking its folder
(``train.runner.run_dir_for``): a run whose record is ``completed`` or ``diverged`` is finished and not
launched again, anything else (missing, interrupted, failed) is launched, and the runner resumes it. So a killed
study, rerun, runs only what is missing. Every run carries ``study`` (name, role, trial) in its config and
summary: its own folder, never a table cell (``results.collect`` leaves study records out of the tables).
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from adamp_repro import paths, search
from adamp_repro.config import SCALES
from adamp_repro.errors import ConfigError, UsageError
from adamp_repro.reproduce import (
    DEFAULT_OUT,
    OPTIMIZERS_DIR,
    PROJECT_ROOT,
    load_tables,
    multirun_command,
    shown,
)
from adamp_repro.tracking.records import atomic_write_text, read_summary

STUDIES_DIR = paths.config_dir() / "studies"
# The report's minimum: fewer trials cannot choose, fewer seeds cannot pair a difference with an interval.
MIN_TRIALS, MIN_SEEDS = 2, 2
FINISHED = ("completed", "diverged")
STUDY_KEYS = {
    "name", "table", "experiment", "optimizers", "pairs", "validation", "budget", "draw", "spaces",
    "protocol", "overrides",
}  # fmt: skip


@dataclass
class Study:
    """A study file, checked: what runs, on which split, with which budget and spaces."""

    name: str
    file: Path
    table: str
    experiment: str
    optimizers: list[str]
    pairs: list[tuple[str, str]]
    validation: dict[str, int]
    studies: int
    trials: int
    seeds: int
    draw_method: str
    draw_seed: int
    spaces: dict[str, search.Space]
    overrides: list[str] = field(default_factory=list)
    points: dict[str, list[dict[str, float]]] = field(default_factory=dict)

    @property
    def points_file(self) -> Path:
        return self.file.with_name(f"{self.file.stem}.points.yaml")

    @property
    def n_points(self) -> int:
        return self.studies * self.trials


def _int(where: str, key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where}: {key}={value!r}; expected an integer >= {minimum}")
    return value


def study_file(table: str | None, path: str | None) -> Path:
    """The study file: ``path`` when given, else ``configs/studies/<table>.yaml``."""
    if path:
        return Path(path)
    file = STUDIES_DIR / f"{table}.yaml"
    if not file.is_file():
        known = sorted(p.stem for p in STUDIES_DIR.glob("*.yaml") if not p.stem.endswith(".points"))
        raise UsageError(
            f"table {table!r} has no study file {file}; studies: {', '.join(known) or 'none'} "
            "(write configs/studies/<table>.yaml, see docs/tuning.md)"
        )
    return file


def load_study(file: Path, *, studies: int | None = None, trials: int | None = None, seeds: int | None = None,
               tables: Mapping[str, Any] | None = None) -> Study:  # fmt: skip
    """Read and check a study file (the budget ``studies``/``trials``/``seeds`` replaced where given); a
    ConfigError (one line) at the first thing that is wrong, before anything is written."""
    where = str(file)
    if not file.is_file():
        raise ConfigError(f"{where}: no such study file")
    try:
        raw = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not readable YAML ({str(exc).splitlines()[0]})") from None
    unknown = sorted(set(raw) - STUDY_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {', '.join(sorted(STUDY_KEYS))}")
    tables = load_tables() if tables is None else tables
    table = raw.get("table")
    if table not in tables:
        raise ConfigError(f"{where}: table={table!r}; expected one of {', '.join(sorted(tables))}")
    spec = tables[table]
    experiment = raw.get("experiment", spec["experiments"][0])
    if experiment not in spec["experiments"]:
        raise ConfigError(f"{where}: experiment={experiment!r}; table {table} runs {spec['experiments']}")
    validation = raw.get("validation")
    if not isinstance(validation, Mapping) or "size" not in validation:
        raise ConfigError(
            f"{where}: table {table} has no validation split for its study: set validation: {{size: <images "
            "held out of the training data>, seed: <int>}} (selection must never see the test images)"
        )
    validation = {
        "size": _int(where, "validation.size", validation.get("size"), 1),
        "seed": _int(where, "validation.seed", validation.get("seed", 0), 0),
    }
    optimizers = raw.get("optimizers") or []
    if not isinstance(optimizers, list) or len(optimizers) < 1 or len(set(optimizers)) != len(optimizers):
        raise ConfigError(f"{where}: optimizers={optimizers!r}; expected a list of distinct optimizer names")
    budget = dict(raw.get("budget") or {})
    for key, value in (("studies", studies), ("trials", trials), ("seeds", seeds)):
        if value is not None:
            budget[key] = value
    n_studies = _int(where, "budget.studies", budget.get("studies", 3), 1)
    n_trials = budget.get("trials", 5)
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < MIN_TRIALS:
        raise ConfigError(
            f"{where}: budget trials={n_trials!r} per study; the report needs at least {MIN_TRIALS} trials"
        )
    n_seeds = budget.get("seeds", 5)
    if isinstance(n_seeds, bool) or not isinstance(n_seeds, int) or n_seeds < MIN_SEEDS:
        raise ConfigError(
            f"{where}: budget seeds={n_seeds!r} confirmation seeds; the report needs at least {MIN_SEEDS} "
            "(a paired difference needs an interval)"
        )
    draw = raw.get("draw") or {}
    method = draw.get("method", "halton")
    if method not in search.METHODS:
        raise ConfigError(f"{where}: draw.method={method!r}; expected one of {', '.join(search.METHODS)}")
    spaces_raw = raw.get("spaces") or {}
    missing = [o for o in optimizers if o not in spaces_raw]
    if missing or set(spaces_raw) - set(optimizers):
        raise ConfigError(
            f"{where}: spaces must give each of the optimizers {optimizers} a search space; missing "
            f"{missing}, extra {sorted(set(spaces_raw) - set(optimizers))}"
        )
    spaces = {o: search.parse_space(where, o, spaces_raw[o], _config_keys(o)) for o in optimizers}
    pairs = [tuple(p) for p in raw.get("pairs") or []]
    for pair in pairs:
        if len(pair) != 2 or not set(pair) <= set(optimizers):
            raise ConfigError(
                f"{where}: pairs entry {list(pair)}; expected [baseline, proposed] of {optimizers}"
            )
    overrides = [str(o) for o in raw.get("overrides") or []]
    return Study(
        name=str(raw.get("name") or file.stem),
        file=file,
        table=table,
        experiment=experiment,
        optimizers=list(optimizers),
        pairs=pairs,  # type: ignore[arg-type]
        validation=validation,
        studies=n_studies,
        trials=n_trials,
        seeds=n_seeds,
        draw_method=method,
        draw_seed=_int(where, "draw.seed", draw.get("seed", 0), 0),
        spaces=spaces,
        overrides=overrides,
    )


def _config_keys(optimizer: str) -> list[str]:
    """The numeric keys an optimizer file of the suite sets (for an optimizer given by ``_target_``/``timm``)."""
    file = OPTIMIZERS_DIR / f"{optimizer}.yaml"
    if not file.is_file():
        return []
    cfg = OmegaConf.to_container(OmegaConf.load(file), resolve=False)
    return [k for k, v in cfg.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]


# ------------------------------------------------------------------------------------------------ points


def points_for(study: Study) -> tuple[dict[str, list[dict[str, float]]], bool, list[str]]:
    """The study's points (per optimizer, ``n_points`` each) from its committed points file, drawing only
    what the file lacks (an optimizer it does not hold, or points beyond those it holds: the sequence's next
    points); returns the points, whether the file must be written, and notes to print. A committed point
    outside its optimizer's space (the space was narrowed) is a ConfigError: a study's points never move."""
    file, notes = study.points_file, []
    held: dict[str, list[dict[str, float]]] = {}
    drawn_with = {"method": study.draw_method, "seed": study.draw_seed}
    if file.is_file():
        data = yaml.safe_load(file.read_text()) or {}
        held = {k: list(v) for k, v in (data.get("points") or {}).items()}
        if data.get("drawn_with") and data["drawn_with"] != drawn_with:
            notes.append(
                f"note: {file.name} was drawn with {data['drawn_with']}, the study file says {drawn_with}; the "
                "committed points are used (delete the points file to draw again: it moves the run folders)"
            )
        drawn_with = data.get("drawn_with") or drawn_with
    changed = False
    out = {}
    for optimizer in study.optimizers:
        space = study.spaces[optimizer]
        have = held.get(optimizer, [])
        for i, point in enumerate(have):
            if not space.contains(point):
                raise ConfigError(
                    f"{file}: point {i} of {optimizer} {point} is outside the study's space "
                    f"{ {r.key: r.describe() for r in space.ranges} }; committed points are never redrawn: "
                    "widen the space back, or start a new study under another name"
                )
        if len(have) < study.n_points:
            unit = search.draw_unit(
                len(space.ranges), study.n_points, drawn_with["seed"], drawn_with["method"]
            )
            have = have + [space.to_point(u) for u in unit[len(have) :]]
            notes.append(f"drew {study.n_points - len(held.get(optimizer, []))} point(s) for {optimizer}")
            changed = True
        out[optimizer] = have
    for optimizer, extra in held.items():  # keep what the file holds for optimizers not in this run
        out.setdefault(optimizer, extra)
    return out, changed, notes


def write_points(study: Study, points: Mapping[str, list[dict[str, float]]]) -> None:
    header = (
        f"# The drawn points of study {study.name} ({study.file.name}): committed, read back by every run of the\n"
        "# study and never redrawn (a newer scipy cannot move its run folders). Written by adamp_repro.tune.\n"
    )
    body = {"drawn_with": {"method": study.draw_method, "seed": study.draw_seed}, "points": dict(points)}
    atomic_write_text(study.points_file, header + yaml.safe_dump(body, sort_keys=False))


# ------------------------------------------------------------------------------------------------ runs


@dataclass(frozen=True)
class Planned:
    """One run of the study: its role, optimizer, trial (None for a default run) and seed."""

    role: str
    optimizer: str
    trial: int | None
    seed: int


def _hydra_dict(mapping: Any) -> str:
    """A value in Hydra's override grammar: {a:[{lr:0.001},...]}."""
    if isinstance(mapping, Mapping):
        return "{" + ",".join(f"{k}:{_hydra_dict(v)}" for k, v in mapping.items()) + "}"
    if isinstance(mapping, (list, tuple)):
        return "[" + ",".join(_hydra_dict(v) for v in mapping) + "]"
    return repr(mapping) if isinstance(mapping, float) else str(mapping)


def _lookup(key: str, table: str) -> str:
    """``optimizer.<key>`` looked up in the study's ``table`` (points) by optimizer and trial."""
    return f"""optimizer.{key}='${{oc.select:"study.{table}.${{optimizer.name}}.${{study.trial}}.{key}"}}'"""


def role_overrides(study: Study, role: str, optimizers: Sequence[str], chosen: Mapping[str, int] | None = None) -> list[str]:  # fmt: skip
    """The study overrides of a multirun of ``role`` over ``optimizers`` (the trial / seed sweep comes apart)."""
    out = [f"+study.name={study.name}", f"+study.role={role}"]
    if role == "default":
        return out
    points = {o: study.points[o] for o in optimizers}
    out.append(f"+study.points={_hydra_dict(points)}")
    if role == "trial":
        v = study.validation
        out.append(f"+dataset.validation={{size:{v['size']},seed:{v['seed']}}}")
    else:
        out.append(f"+study.chosen={_hydra_dict({o: chosen[o] for o in optimizers})}")  # type: ignore[index]
        out.append("""+study.trial='${oc.select:"study.chosen.${optimizer.name}"}'""")
    keys = study.spaces[optimizers[0]].keys
    return out + [_lookup(k, "points") for k in keys]


def launches(study: Study, role: str, todo: Sequence[Planned], chosen=None) -> list[list[str]]:
    """The multiruns that run ``todo`` (runs of one role): optimizers grouped by the keys of their spaces and by
    which trials/seeds they miss, so that no finished run is in a sweep (a diverged run would train again)."""
    groups: dict[tuple, list[str]] = {}
    missing: dict[str, tuple[tuple, tuple]] = {}
    for optimizer in dict.fromkeys(p.optimizer for p in todo):
        mine = [p for p in todo if p.optimizer == optimizer]
        trials = tuple(sorted({p.trial for p in mine if p.trial is not None})) if role == "trial" else ()
        seeds = tuple(sorted({p.seed for p in mine}))
        missing[optimizer] = (trials, seeds)
        # a run missing only some seeds of some trials would need a cartesian sweep of what is missing: one
        # multirun per (trial set, seed set) keeps finished runs out of every sweep
        key = (study.spaces[optimizer].keys if role != "default" else (), trials, seeds)
        groups.setdefault(key, []).append(optimizer)
    cmds = []
    for (_, trials, seeds), optimizers in groups.items():
        sweep = [f"+study.trial={','.join(map(str, trials))}"] if role == "trial" else []
        extra = [*role_overrides(study, role, optimizers, chosen), *sweep]
        cmds.append(_with_seeds(seeds, optimizers, study, extra))
    return cmds


def _with_seeds(seeds: Sequence[int], optimizers: list[str], study: Study, extra: list[str]) -> list[str]:
    cmd = multirun_command(study.experiment, optimizers, 1, SCALE[0], extra, OUTPUT_ROOT[0], OVERRIDES[0])
    return [f"seed={','.join(map(str, seeds))}" if a.startswith("seed=") else a for a in cmd]


# The scale, output root and table overrides of this invocation (set by ``main``; module state keeps the
# launch helpers' signatures short).
SCALE: list[str] = ["mini"]
OUTPUT_ROOT: list[str | None] = [None]
OVERRIDES: list[list[str]] = [[]]


def planned(study: Study, role: str) -> list[Planned]:
    if role == "trial":
        return [Planned("trial", o, t, 0) for o in study.optimizers for t in range(study.n_points)]
    return [
        Planned(role, o, None if role == "default" else -1, s)
        for o in study.optimizers
        for s in range(study.seeds)
    ]


def status_of(study: Study, run: Planned, chosen: Mapping[str, int] | None, extra: Sequence[str]) -> tuple[Path, str]:  # fmt: skip
    """The run folder of ``run`` (its config composed as its multirun composes it) and its record's status
    (``missing`` without one)."""
    from hydra import compose, initialize_config_dir

    from adamp_repro.train.runner import run_dir_for

    overrides = [
        o
        for o in [
            *OVERRIDES[0],
            f"experiment={study.experiment}",
            f"seed={run.seed}",
            f"optimizer={run.optimizer}",
            f"scale={SCALE[0]}",
            *([f"output_root={OUTPUT_ROOT[0]}"] if OUTPUT_ROOT[0] else []),
            *extra,
            *role_overrides(study, run.role, [run.optimizer], chosen),
            *([f"+study.trial={run.trial}"] if run.role == "trial" else []),
        ]
        if not o.startswith("hydra")  # the launcher changes where a run executes, never its folder
    ]
    with initialize_config_dir(config_dir=str(paths.config_dir()), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    run_dir = run_dir_for(cfg)
    try:
        return run_dir, str(read_summary(run_dir).get("status", "missing"))
    except (OSError, ValueError):
        return run_dir, "missing"


def check_split(study: Study, extra: Sequence[str]) -> None:
    """A ConfigError unless the study's experiment can hold out a validation split (its data set is of the
    ``in_memory`` family, the only one with ``dataset.validation``)."""
    from hydra import compose, initialize_config_dir

    overrides = [
        o for o in [*OVERRIDES[0], f"experiment={study.experiment}", *extra] if not o.startswith("hydra")
    ]
    with initialize_config_dir(config_dir=str(paths.config_dir()), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    family = str(cfg.dataset.get("family"))
    if family not in ("in_memory", "cifar"):
        raise ConfigError(
            f"{study.file}: table {study.table} has no validation split: experiment {study.experiment} reads "
            f"dataset {cfg.dataset.name} (family {family}); only the in_memory family holds out "
            "dataset.validation from its training data"
        )


def run_role(
    study: Study, role: str, args: argparse.Namespace, chosen=None
) -> tuple[dict[Planned, Path], bool]:
    """Launch what is missing of ``role``; returns every planned run's folder and whether all finished."""
    runs = planned(study, role)
    folders, todo = {}, []
    for run in runs:
        if role == "tuned":
            run = dataclasses.replace(run, trial=chosen[run.optimizer])
        folder, status = status_of(study, run, chosen, args.extra)
        folders[run] = folder
        if status not in FINISHED:
            todo.append(run)
    done = len(runs) - len(todo)
    print(f"[tune] {role}: {len(runs)} run(s), {done} finished, {len(todo)} to run", flush=True)
    ok = True
    for cmd in launches(study, role, todo, chosen) if todo else []:
        cmd = cmd + list(args.extra)
        print(f"[tune] {shown(cmd)}", flush=True)
        if args.dry_run:
            continue
        result = subprocess.run(cmd, cwd=PROJECT_ROOT)
        ok = ok and result.returncode == 0
    if todo and not args.dry_run:
        unfinished = [f for r, f in folders.items() if _status(f) not in FINISHED]
        ok = not unfinished
        for folder in unfinished:
            print(f"[tune] not finished ({_status(folder)}): {folder}", file=sys.stderr)
    return folders, ok and not (todo and args.dry_run)


def _status(folder: Path) -> str:
    try:
        return str(read_summary(folder).get("status", "missing"))
    except (OSError, ValueError):
        return "missing"


# ------------------------------------------------------------------------------------------------ command


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--table", default="mini", help="the table whose study file configs/studies/<table>.yaml runs"
    )
    parser.add_argument("--study", default=None, help="a study file of your own (replaces --table's)")
    parser.add_argument("--scale", default="mini", help=f"one of {list(SCALES)}")
    parser.add_argument(
        "--studies", type=int, default=None, help="studies per optimizer (default: the file's)"
    )
    parser.add_argument("--trials", type=int, default=None, help="trials per study (default: the file's)")
    parser.add_argument("--seeds", type=int, default=None, help="confirmation seeds (default: the file's)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="folder of runs/, tables/, figures/")
    parser.add_argument("--output-root", default=None, help="where run records go (default: <out>/runs)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and commands, run nothing")
    parser.add_argument(
        "--report-only", action="store_true", help="build the page from the records, run nothing"
    )
    parser.add_argument(
        "--pilot",
        action="store_true",
        help="run only the default recipes on the confirmation seeds (they do not depend on the trials) and "
        "print each pair's spread and the smallest paired gain the seeds detect: the study's sizing, to "
        "write into its protocol before the trials run; the runs count as the confirmation's default arm",
    )
    parser.add_argument("extra", nargs="*", help="Hydra overrides passed to every run (after --)")
    args = parser.parse_args(list(argv))
    if args.scale not in SCALES:
        raise UsageError(f"unknown scale {args.scale!r}; valid scales: {', '.join(SCALES)}")
    for key in ("studies", "trials", "seeds"):
        if getattr(args, key) is not None and getattr(args, key) < 0:
            raise UsageError(f"--{key} {getattr(args, key)}; expected a positive integer")
    out = Path(args.out)
    args.output_root = args.output_root or str(out / "runs")
    args.tables_out, args.figures_out = out / "tables", out / "figures"
    return args


def main(argv: Sequence[str]) -> int:
    try:
        args = parse_args(argv)
        tables = load_tables()
        file = study_file(args.table, args.study)
        study = load_study(file, studies=args.studies, trials=args.trials, seeds=args.seeds, tables=tables)
        SCALE[0], OUTPUT_ROOT[0] = args.scale, args.output_root
        OVERRIDES[0] = [*tables[study.table].get("overrides", []), *study.overrides]
        check_split(study, args.extra)
        points, changed, notes = points_for(study)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_status
    study.points = points
    print(
        f"[tune] study {study.name}: table {study.table}, experiment {study.experiment}, scale {args.scale}; "
        f"{len(study.optimizers)} optimizer(s) x {study.studies} study(ies) x {study.trials} trials, "
        f"{study.seeds} confirmation seeds; validation: {study.validation['size']} training images held out",
        flush=True,
    )
    for note in notes:
        print(f"[tune] {note}")
    if changed and not args.dry_run:
        write_points(study, points)
        print(f"[tune] wrote {study.points_file} (commit it: the study's points)")
    from adamp_repro.results.study import StudyPlan, pilot_lines, read_study, write_study_page

    plan = StudyPlan(
        name=study.name,
        optimizers=study.optimizers,
        pairs=study.pairs,
        studies=study.studies,
        trials=study.trials,
        seeds=study.seeds,
        spaces={o: {r.key: (r.low, r.high, r.log) for r in s.ranges} for o, s in study.spaces.items()},
        validation=study.validation,
    )
    ok = True
    if args.pilot:
        default_dirs, ok = run_role(study, "default", args)
        if not args.dry_run:
            records = read_study(plan, default_dirs.values())
            for line in pilot_lines(records):
                print(f"[tune] {line}", flush=True)
        return 0 if ok else 1
    if not args.report_only:
        trial_dirs, ok = run_role(study, "trial", args)
        if args.dry_run:
            print(
                "[tune] dry run: the confirmation runs follow from the trials' records (default and chosen)"
            )
            return 0
        if not ok:
            print("[tune] trials unfinished: rerun the same command to continue (finished runs are kept)")
            return 1
        records = read_study(plan, trial_dirs.values())
        chosen = records.chosen()
        print(f"[tune] chosen trials: {chosen}", flush=True)
        default_dirs, ok_default = run_role(study, "default", args)
        tuned_dirs, ok_tuned = run_role(study, "tuned", args, chosen)
        ok = ok_default and ok_tuned
    folders = _all_records(args.output_root, study)
    records = read_study(plan, folders)
    written = write_study_page(records, args.tables_out, args.figures_out)
    for path in written:
        print(f"[tune] wrote {path}")
    return 0 if ok else 1


def _all_records(output_root: str, study: Study) -> list[Path]:
    """Every run folder under the output root whose summary names the study."""
    root = Path(output_root)
    return sorted(p.parent for p in root.glob("*/*/*/summary.json"))
