"""The record schema: the version and key names of a run record, and the pure helpers that make and read them.

The writer (``tracking.records.RunRecord``, fed by ``train.life.RunLife``), the collector
(``results.collect``), the figures and the dashboards all import their key names from here.

``SCHEMA_VERSION`` is written into every ``summary.json`` (``schema_version``); a summary without the key was
written before versions existed and reads as version 1 (``schema_version_of``). Version 2 adds the key alone:
every other key of a version-1 summary means what it meant. Version 3 renames ``initial_mean_weight_norm`` and
``initial_mean_filter_norm`` to ``epoch1_mean_weight_norm`` and ``epoch1_mean_filter_norm``: they were always
taken from the first epoch row, i.e. after the first epoch (the norms before the first step are
``at_init_<key>``). Committed summaries are not rewritten: every reader goes through ``upgrade_summary``,
which gives a summary of an older version this version's key names (``RENAMED_KEYS``). Keys added within a
version mean nothing new for the others and are simply absent from older summaries and rows (the angular
updates ``mean_filter_angle``, ``rms_filter_angle`` and ``rms_filter_grad_norm``, added in version 3): a reader
takes a missing key as not recorded.

The code that ran (written by ``train.life.RunLife`` when the training ends, since the optimizer's forms are
known only after its steps): each provenance segment gets ``optimizer_forms`` (what the optimizer stepped
with: ``optim.forms.describe_optimizer``) and ``fused_cpu_build`` (``optim.fused_cpu.build_info``), and the
summary gets both as lists, one entry per segment, oldest first (``null`` for a segment written before the
keys existed), with ``optimizer_forms_mixed`` (``forms_mixed``). These keys were added without a version
change: no key changed meaning. A summary without them reads as "forms not recorded", never as mixed.

``summary_metrics`` turns a run's epoch rows (the rows of ``metrics.csv``) into the metric keys of its
summary: ``epochs``, ``final_train_loss``, ``final_eval_<metric>`` (the last evaluation, counts left out),
``best_eval_<primary metric>`` (best by ``metric_direction``: the smallest perplexity, the largest top-1), the median ``images_per_s``, ``final_<key>`` and ``epoch1_<key>`` of the
weight diagnostics.

The epoch rows of ``metrics.csv`` carry ``epoch``, ``train_<metric>`` (the task's training metrics,
``train_loss`` among them), ``eval_<metric>`` on the epochs that evaluate (the task's metric names: ``TOP1``,
``ROBUST_TOP1``, ...), ``lr``, ``images_per_s`` and the diagnostics ``SUMMARY_KEYS``; W&B also gets
``step/<key>`` against ``train/step``. ``TITLES`` says in words what each key the figures and dashboards show
is: one ``Title`` per key, its ``title`` (a dashboard panel's) and ``axis`` (a figure axis's, short, with its
unit).

``ROW_KEYS`` are the columns of ``diagnostics.csv`` (one row per weight tensor and epoch, written by
``train.diagnostics.WeightDiagnostics``); ``SUMMARY_KEYS`` are the per-epoch summary keys of ``metrics.csv``
(and ``final_<key>`` in ``summary.json``). ``summarise_rows`` turns one epoch's rows into its summary: the
trainer calls it as it measures, and the results pipeline calls it on recorded rows, so both read a record the
same way. Only the standard library is used, so the W&B mirror and the results pipeline can import it without
the trainer.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

SCHEMA_VERSION = 3
SCHEMA_VERSION_KEY = "schema_version"
UNVERSIONED = 1  # the version of a summary written before the key existed

# Keys renamed by a schema version: {version: {old name: new name}}; ``upgrade_summary`` reads an older
# summary with the new names.
RENAMED_KEYS = {
    3: {
        "initial_mean_weight_norm": "epoch1_mean_weight_norm",
        "initial_mean_filter_norm": "epoch1_mean_filter_norm",
    },
}

# The task metric names (``train/tasks/``): ``train_<name>`` and ``eval_<name>`` in an epoch row.
LOSS, TOP1, TOP5 = "loss", "top1", "top5"
CLEAN_TOP1, ROBUST_TOP1, ROBUST_LOSS = "clean_top1", "robust_top1", "robust_loss"
# The language-modelling task's metrics (``train/tasks/language_model.py``): the loss is the mean next-token
# cross-entropy in nats per token, its exponential the perplexity, and at character level the loss in bits.
PERPLEXITY, BITS_PER_CHAR = "perplexity", "bits_per_char"
# The adversarial task's AutoAttack metrics: top-1 under AutoAttack, and the PGD top-1 on the same samples.
AUTOATTACK_TOP1, AUTOATTACK_SUBSET_ROBUST_TOP1 = "autoattack_top1", "autoattack_subset_robust_top1"
# The other keys of an epoch row, and the x axis of the per-step rows W&B gets (``step/<key>``).
EPOCH, LR, IMAGES_PER_S = "epoch", "lr", "images_per_s"
STEP = "train/step"


# Which way is better: every metric is higher-is-better (accuracies) except these, whose best value is the
# smallest (a loss, a perplexity). One owner: the trainer's and the summary's best-of, and the results' gains,
# read it through ``metric_direction``.
LOWER_IS_BETTER = frozenset({LOSS, ROBUST_LOSS, PERPLEXITY, BITS_PER_CHAR})
# What a key may carry before its metric name (``final_eval_perplexity`` is the metric ``perplexity``).
METRIC_PREFIXES = ("final_", "best_", "epoch1_", "at_init_", "eval_", "train_", "ema_")


def strip_prefixes(text: str, prefixes: tuple[str, ...]) -> str:
    """``text`` with any of ``prefixes`` taken off its front, again and again, in any order."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in prefixes:
            if text.startswith(prefix):
                text, stripped = text[len(prefix) :], True
    return text


def metric_name(key: str) -> str:
    """The metric a record key or a paper metric id names: its prefixes (``METRIC_PREFIXES``) taken off."""
    return strip_prefixes(key, METRIC_PREFIXES)


def metric_direction(key: str) -> int:
    """+1 where a larger value of the metric ``key`` names is better, -1 where a smaller one is
    (``LOWER_IS_BETTER``); ``key`` may be a record key (``final_eval_perplexity``) or a bare metric name."""
    return -1 if metric_name(key) in LOWER_IS_BETTER else 1


def best_of(values: Iterable[float], key: str) -> float:
    """The best of ``values`` of the metric ``key`` (its largest, or its smallest when lower is better)."""
    return (min if metric_direction(key) < 0 else max)(values)


class KeyPrefix(str):
    """A prefix of record keys; called with a key it names the prefixed key (``eval_key(TOP1)`` is ``eval_top1``)."""

    __slots__ = ()

    def __call__(self, key: str) -> str:
        return f"{self}{key}"


# Epoch-row keys: a training or evaluation metric of the task (``train_loss``, ``eval_top1``); the W&B key of a
# per-step value (``step/loss``), logged against ``STEP``.
train_key, eval_key, step_key = KeyPrefix("train_"), KeyPrefix("eval_"), KeyPrefix("step/")

# Summary keys of an epoch-row key: its last value (``final_eval_top1``, ``final_mean_weight_norm``), its best over
# the evaluations (``best_eval_top1``); of a diagnostic: at the end of the first epoch (``epoch1_mean_weight_norm``),
# before the first step (``at_init_mean_weight_norm``).
final_key, best_key = KeyPrefix("final_"), KeyPrefix("best_")
epoch1_key, at_init_key = KeyPrefix("epoch1_"), KeyPrefix("at_init_")

TRAIN_LOSS = train_key(LOSS)

# The weight diagnostics of an epoch (``summarise_rows``).
MEAN_WEIGHT_NORM, EFFECTIVE_STEP_SIZE = "mean_weight_norm", "effective_step_size"
MEAN_FILTER_NORM, FILTER_EFFECTIVE_STEP_SIZE = "mean_filter_norm", "filter_effective_step_size"
DETECTED_SHARE, MEAN_ABS_COS = "detected_share", "mean_abs_cos"
# The angular update per step of the filters and their gradient norm (radians; loss units per weight unit).
MEAN_FILTER_ANGLE, RMS_FILTER_ANGLE = "mean_filter_angle", "rms_filter_angle"
RMS_FILTER_GRAD_NORM = "rms_filter_grad_norm"
SUMMARY_KEYS = (
    MEAN_WEIGHT_NORM,
    EFFECTIVE_STEP_SIZE,
    MEAN_FILTER_NORM,
    FILTER_EFFECTIVE_STEP_SIZE,
    DETECTED_SHARE,
    MEAN_ABS_COS,
    MEAN_FILTER_ANGLE,
    RMS_FILTER_ANGLE,
    RMS_FILTER_GRAD_NORM,
)
ROW_KEYS = (
    "epoch",
    "step",
    "param",
    "numel",
    "weight_norm",
    "effective_step_size",
    "filter_norm",
    "filter_effective_step_size",
    "abs_cos_max",
    "detected",
    "followed_by_norm",
    "filter_angle",
    "filter_angle_rms",
    "filter_grad_norm_rms",
    "row_length",  # elements per output-channel row (a filter's dimension d, for the equilibrium predictions)
)


class Title(NamedTuple):
    """What a key is, in words: ``title`` heads a dashboard panel, ``axis`` labels a figure axis (short, with
    the unit; the title where none is given)."""

    title: str
    axis: str = ""

    @property
    def axis_label(self) -> str:
        return self.axis or self.title


# What each key the figures and dashboards show is (epoch-row keys of metrics.csv, then W&B's per-step keys).
TITLES = {
    eval_key(TOP1): Title("Test top-1 (%)", "eval top-1 (%)"),
    eval_key(TOP5): Title("Test top-5 (%)"),
    eval_key(CLEAN_TOP1): Title("Standard Acc: clean test top-1 (%)"),
    eval_key(ROBUST_TOP1): Title("Attacked Acc: test top-1 under PGD (%)"),
    train_key(TOP1): Title("Train top-1 (%)"),
    TRAIN_LOSS: Title("Train loss (epoch mean)"),
    eval_key(LOSS): Title("Test loss (clean)"),
    eval_key(PERPLEXITY): Title("Test perplexity (lower is better)", "perplexity"),
    eval_key(BITS_PER_CHAR): Title("Test bits per character (lower is better)", "bits per character"),
    train_key(PERPLEXITY): Title("Train perplexity (epoch mean loss, exponentiated)", "train perplexity"),
    eval_key(ROBUST_LOSS): Title("Test loss under PGD"),
    LR: Title("Learning rate (last step of the epoch)"),
    IMAGES_PER_S: Title("Training images per second (epoch)", "images/s"),
    MEAN_WEIGHT_NORM: Title(
        "Mean norm of scale-invariant weights", "mean ||w|| (weights before a norm layer)"
    ),
    EFFECTIVE_STEP_SIZE: Title("Effective step size lr / norm(w)^2", "effective step size lr / ||w||^2"),
    MEAN_FILTER_NORM: Title("Mean norm per filter (output channel)", "mean ||w_c|| per filter"),
    FILTER_EFFECTIVE_STEP_SIZE: Title(
        "Effective step per filter, lr / norm(w_c)^2", "effective step per filter lr / ||w_c||^2"
    ),
    DETECTED_SHARE: Title("Share of weights detected scale-invariant", "share detected scale-invariant"),
    MEAN_ABS_COS: Title("Mean max-channel abs cos(grad, w)", "mean max |cos(grad, w)|"),
    MEAN_FILTER_ANGLE: Title("Mean angular update per step per filter (rad)", "mean angle per step (rad)"),
    RMS_FILTER_ANGLE: Title("RMS angular update per step per filter (rad)", "RMS angle per step (rad)"),
    RMS_FILTER_GRAD_NORM: Title("RMS gradient norm per filter", "RMS ||grad w_c||"),
    step_key(LOSS): Title("Train loss per logged step"),
    step_key(LR): Title("Learning rate per logged step"),
}


# A tuning study's run (``adamp_repro.tune``): the summary says which study, which of its roles (``trial``, or a
# confirmation run of the ``default`` recipe or the ``tuned`` setting) and which drawn point (``study_trial``,
# None for a default run). Every run also says which split its evaluation metrics are on (``eval_split``: ``test``,
# or ``validation`` held out from the training data, ``dataset.validation``). Added without a version change: a
# summary without them is a table run evaluated on the test split.
STUDY, STUDY_ROLE, STUDY_TRIAL, EVAL_SPLIT = "study", "study_role", "study_trial", "eval_split"
STUDY_ROLES = ("trial", "default", "tuned")
TEST_SPLIT, VALIDATION_SPLIT = "test", "validation"


# The code that ran (module docstring): summary keys, and per-segment keys of provenance.json.
OPTIMIZER_FORMS, OPTIMIZER_FORMS_MIXED, FUSED_CPU_BUILD = (
    "optimizer_forms",
    "optimizer_forms_mixed",
    "fused_cpu_build",
)


def forms_signature(described: Mapping[str, Any] | None) -> str | None:
    """The forms one segment ran, as one comparable string: the form names joined by ``+`` in sorted order
    (``fast+fused_cpu``), the class path where no form is known (an external optimizer), None for a segment that
    did not record them."""
    if not isinstance(described, Mapping):
        return None
    forms = described.get("forms")
    if isinstance(forms, Mapping) and forms:
        return "+".join(sorted(str(form) for form in forms))
    name = described.get("class")
    return str(name) if name else None


def forms_mixed(segments: Sequence[Mapping[str, Any] | None]) -> bool | None:
    """Whether the segments of a run (``optimizer_forms`` entries, oldest first) ran different forms: None when
    one of them did not record its forms (unknown, not mixed), else whether their signatures differ."""
    signatures = [forms_signature(segment) for segment in segments]
    if not signatures or any(signature is None for signature in signatures):
        return None
    return len(set(signatures)) > 1


def run_forms_signature(segments: Sequence[Mapping[str, Any] | None]) -> str | None:
    """The forms of a whole run: the recorded segments' signatures, distinct, joined by ``; `` in first-seen
    order; None when no segment recorded them."""
    signatures = [s for s in (forms_signature(segment) for segment in segments) if s is not None]
    return "; ".join(dict.fromkeys(signatures)) or None


def summarise_rows(rows: Iterable[dict[str, Any]]) -> dict[str, float]:
    """Epoch summary (keys ``SUMMARY_KEYS``) from one epoch's per-layer rows (keys ``ROW_KEYS``); NaN-tolerant.

    Norms and effective step sizes are means over the weights followed by a normalisation layer;
    ``detected_share`` is weighted by number of elements over the tested weights, ``mean_abs_cos`` their mean.
    Over the same weights, each counted once as the norms are: ``mean_filter_angle`` is the mean of their
    ``filter_angle``, ``rms_filter_angle`` and ``rms_filter_grad_norm`` the root of the mean of their squared
    RMS values (the RMS over weights of equal share).
    """
    rows = list(rows)
    invariant = [r for r in rows if r["followed_by_norm"]]
    tested = [r for r in rows if not math.isnan(r["detected"])]
    tested_numel = sum(r["numel"] for r in tested)
    return {
        MEAN_WEIGHT_NORM: _mean(r["weight_norm"] for r in invariant),
        EFFECTIVE_STEP_SIZE: _mean(r["effective_step_size"] for r in invariant),
        # Rows written before the per-filter columns existed read as NaN.
        MEAN_FILTER_NORM: _mean(r.get("filter_norm", math.nan) for r in invariant),
        FILTER_EFFECTIVE_STEP_SIZE: _mean(r.get("filter_effective_step_size", math.nan) for r in invariant),
        DETECTED_SHARE: sum(r["numel"] * r["detected"] for r in tested) / tested_numel
        if tested_numel
        else math.nan,
        MEAN_ABS_COS: _mean(r["abs_cos_max"] for r in tested),
        # Rows written before the angle columns existed read as NaN.
        MEAN_FILTER_ANGLE: _mean(r.get("filter_angle", math.nan) for r in invariant),
        RMS_FILTER_ANGLE: _rms(r.get("filter_angle_rms", math.nan) for r in invariant),
        RMS_FILTER_GRAD_NORM: _rms(r.get("filter_grad_norm_rms", math.nan) for r in invariant),
    }


def _mean(values: Iterable[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def _rms(values: Iterable[float]) -> float:
    mean_sq = _mean(v * v for v in values)
    return math.sqrt(mean_sq) if not math.isnan(mean_sq) else math.nan


def schema_version_of(summary: Mapping[str, Any]) -> int:
    """The schema version of a summary: its ``schema_version``, or 1 for one written before the key existed.
    Raises ValueError on a value that is not an integer."""
    version = summary.get(SCHEMA_VERSION_KEY, UNVERSIONED)
    if isinstance(version, bool) or not isinstance(version, int):
        raise ValueError(f"schema_version must be an integer, got {version!r}")
    return version


def upgrade_summary(summary: Mapping[str, Any]) -> dict[str, Any]:
    """A summary read from a record, with this version's key names: the keys ``RENAMED_KEYS`` renames in a
    later version than the summary's are renamed (in place in the key order; ``schema_version`` is kept as
    written).

    A summary of this version, a newer one or one whose version does not read is returned as it is (a copy),
    for the collector to judge."""
    try:
        version = schema_version_of(summary)
    except ValueError:
        return dict(summary)
    renames = {
        old: new for since, names in RENAMED_KEYS.items() if version < since for old, new in names.items()
    }
    upgraded = {}
    for key, value in summary.items():
        new = renames.get(key)
        upgraded[key if new is None or new in summary else new] = value  # never over a key written as new
    return upgraded


# The diagnostics whose value at the end of the first epoch is also summarised, as epoch1_<key> (the value
# before the first step is at_init_<key>, written by the trainer, for the norms).
EPOCH1_KEYS = (MEAN_WEIGHT_NORM, MEAN_FILTER_NORM, MEAN_FILTER_ANGLE, RMS_FILTER_ANGLE, RMS_FILTER_GRAD_NORM)


def summary_metrics(history: Sequence[Mapping[str, Any]], primary_metric: str) -> dict[str, Any]:
    """The metric keys of a summary from the run's epoch rows (module docstring); ``{"epochs": 0}`` without rows."""
    if not history:
        return {"epochs": 0}
    last = history[-1]
    primary = eval_key(primary_metric)
    evaluated = [row for row in history if primary in row]
    out: dict[str, Any] = {"epochs": int(last[EPOCH]) + 1, final_key(TRAIN_LOSS): last.get(TRAIN_LOSS)}
    if evaluated:
        final = evaluated[-1]
        out.update(
            {final_key(k): v for k, v in final.items() if k.startswith(eval_key("")) and "count" not in k}
        )
        out[best_key(primary)] = best_of((row[primary] for row in evaluated), primary_metric)
    speeds = [row[IMAGES_PER_S] for row in history if IMAGES_PER_S in row]
    out[IMAGES_PER_S] = float(statistics.median(speeds)) if speeds else None
    for key in SUMMARY_KEYS:
        if key in last:
            out[final_key(key)] = last[key]
    for key in EPOCH1_KEYS:
        if key in history[0]:
            out[epoch1_key(key)] = history[0][key]
    return out
